"""The model catalog, the request validator and cost estimates.

Violations are generated from the catalog facts for every image model, so a model added to the
catalog is covered without editing this file. jsonschema (over the verbatim request schema) is
used here only as an independent oracle: the validator itself never uses it.
"""

from __future__ import annotations

import json
import math
from datetime import date
from importlib import resources
from typing import Any

import jsonschema
import pytest

from krea_dagster.api import ModelSpec, RequestValidationError, UnknownModelError
from krea_dagster.api.catalog import (
    FieldSpec,
    Problem,
    all_models,
    bundled_catalog,
    estimate_cost,
    get_model,
    image_models,
    validate,
)
from krea_dagster.api.config import DEFAULT_EXTERNAL_WAIT_TIMEOUT, DEFAULT_HOSTED_WAIT_TIMEOUT

BEFORE_SUNSET = date(2026, 6, 1)
AFTER_SUNSET = date(2026, 6, 19)

# The OpenAPI document's example for Runway Gen-4 omits its required reference_images; the
# catalog copies examples verbatim, so the test completes it and checks the omission is caught.
INCOMPLETE_EXAMPLES = {
    "runway/gen-4-image": {
        "reference_images": [{"url": "https://example.com/ref.png", "tag": "hero"}]
    }
}


def valid_value(spec: FieldSpec) -> Any:
    """A value that satisfies every rule of ``spec``."""
    if spec.enum is not None:
        return next(choice for choice in spec.enum if choice is not None)
    if spec.has_default and spec.default is not None and not spec.any_of:
        return spec.default
    if spec.has_const:
        return spec.const
    if spec.any_of:
        return valid_value(spec.any_of[0])
    types = [t for t in spec.types if t != "null"] or ["null"]
    kind = types[0]
    if kind == "string":
        if spec.format == "uri":
            return "https://example.com/input.png"
        return "a" * max(
            spec.min_length or 1, 4 if spec.max_length is None else min(4, spec.max_length)
        )
    if kind in ("number", "integer"):
        if spec.minimum is not None:
            return int(spec.minimum) if kind == "integer" else spec.minimum
        return 1 if spec.maximum is None or spec.maximum >= 1 else spec.maximum
    if kind == "boolean":
        return True
    if kind == "array":
        assert spec.items is not None
        return [valid_value(spec.items) for _ in range(max(spec.min_items or 0, 1))]
    if kind == "object":
        return {name: valid_value(spec.properties[name]) for name in spec.required}
    return None


def base_body(spec: ModelSpec) -> dict[str, Any]:
    return {**spec.example, **INCOMPLETE_EXAMPLES.get(spec.model, {})}


def wrong_type_value(spec: FieldSpec) -> Any:
    for candidate in ({"wrong": "type"}, 12345, "text", True, [1]):
        accepted = {
            "object": isinstance(candidate, dict),
            "number": isinstance(candidate, int) and not isinstance(candidate, bool),
            "integer": isinstance(candidate, int) and not isinstance(candidate, bool),
            "string": isinstance(candidate, str),
            "boolean": isinstance(candidate, bool),
            "array": isinstance(candidate, list),
        }
        if not any(accepted.get(t, False) for t in spec.types):
            return candidate
    raise AssertionError(f"no wrong type for {spec}")


def violations(spec: ModelSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """(field, rule, body) cases: each body breaks exactly one rule of one field."""
    base = base_body(spec)
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for name in spec.required:
        cases.append((name, "required", {k: v for k, v in base.items() if k != name}))
    cases.append(("not_a_field", "additionalProperties", {**base, "not_a_field": 1}))
    for name, field in spec.fields.items():
        if field.types:
            cases.append((name, "type", {**base, name: wrong_type_value(field)}))
        if field.enum is not None:
            bad = "not-a-choice" if "string" in field.types else 987654
            cases.append((name, "enum", {**base, name: bad}))
        if field.minimum is not None:
            cases.append((name, "minimum", {**base, name: field.minimum - 1}))
        if field.maximum is not None:
            cases.append((name, "maximum", {**base, name: field.maximum + 1}))
        if field.min_length:
            cases.append((name, "minLength", {**base, name: "a" * (field.min_length - 1)}))
        if field.max_length is not None:
            cases.append((name, "maxLength", {**base, name: "a" * (field.max_length + 1)}))
        if field.items is not None and field.max_items is not None:
            items = [valid_value(field.items) for _ in range(field.max_items + 1)]
            cases.append((name, "maxItems", {**base, name: items}))
        if field.items is not None and field.min_items:
            items = [valid_value(field.items) for _ in range(field.min_items - 1)]
            cases.append((name, "minItems", {**base, name: items}))
    return cases


IMAGE_MODELS = image_models()
RAW_CATALOG: dict[str, Any] = json.loads(
    resources.files("krea_dagster").joinpath("data", "krea_models.json").read_text("utf-8")
)["models"]
VIOLATIONS = [
    (spec, field, rule, body) for spec in IMAGE_MODELS for field, rule, body in violations(spec)
]


def test_catalog_has_the_image_models() -> None:
    """The bundled catalog lists every image model of the OpenAPI document."""
    assert len(IMAGE_MODELS) >= 22
    assert all(spec.kind == "image" for spec in IMAGE_MODELS)
    assert {"openai/gpt-image-2", "bfl/flux-1-dev", "z-image/z-image"} <= {
        spec.model for spec in IMAGE_MODELS
    }
    assert len(all_models()) == len(bundled_catalog().specs)


@pytest.mark.parametrize("spec", IMAGE_MODELS, ids=lambda spec: spec.model)
def test_example_passes(spec: ModelSpec) -> None:
    """Every image model's documented example validates (completed where the document omits a field)."""
    result = validate(spec.model, base_body(spec), today=BEFORE_SUNSET)
    assert result.problems == ()
    assert result.ok


def test_incomplete_document_example_is_caught() -> None:
    """The document's Runway example lacks reference_images, and the validator says so."""
    spec = get_model("runway/gen-4-image")
    result = validate(spec.model, spec.example, today=BEFORE_SUNSET)
    assert [(p.field, p.rule) for p in result.problems] == [("reference_images", "required")]


@pytest.mark.parametrize("spec", IMAGE_MODELS, ids=lambda spec: spec.model)
def test_a_body_using_every_field_passes(spec: ModelSpec) -> None:
    """A body that sets every field to a valid value passes (no false rejections)."""
    body = {name: valid_value(field) for name, field in spec.fields.items()}
    assert validate(spec.model, body, today=BEFORE_SUNSET).problems == ()


@pytest.mark.parametrize(
    ("spec", "field", "rule", "body"),
    VIOLATIONS,
    ids=[f"{spec.model}-{field}-{rule}" for spec, field, rule, _ in VIOLATIONS],
)
def test_each_rule_fails_with_its_message(
    spec: ModelSpec, field: str, rule: str, body: dict[str, Any]
) -> None:
    """Breaking one rule yields a Problem naming the field and the JSON Schema keyword."""
    result = validate(spec.model, body, today=BEFORE_SUNSET)
    matching = [p for p in result.problems if p.field == field and p.rule == rule]
    assert matching, result.problems
    message = matching[0].message
    assert message.startswith(f"{field}: ")
    assert message.endswith(f"({rule})")


@pytest.mark.parametrize(
    ("spec", "field", "rule", "body"),
    VIOLATIONS,
    ids=[f"{spec.model}-{field}-{rule}" for spec, field, rule, _ in VIOLATIONS],
)
def test_verdicts_agree_with_jsonschema(
    spec: ModelSpec, field: str, rule: str, body: dict[str, Any]
) -> None:
    """An independent JSON Schema validator over the verbatim request schema also rejects it."""
    request_schema = RAW_CATALOG[spec.key]["request_schema"]
    assert list(jsonschema.Draft202012Validator(request_schema).iter_errors(body)) != []


@pytest.mark.parametrize("spec", IMAGE_MODELS, ids=lambda spec: spec.model)
def test_valid_bodies_agree_with_jsonschema(spec: ModelSpec) -> None:
    """The bodies this validator accepts are accepted by jsonschema too."""
    request_schema = RAW_CATALOG[spec.key]["request_schema"]
    for body in (base_body(spec), {name: valid_value(f) for name, f in spec.fields.items()}):
        assert list(jsonschema.Draft202012Validator(request_schema).iter_errors(body)) == []


def test_message_names_field_value_and_rule() -> None:
    """Messages read like 'width: 4000 is above the maximum 2368 (maximum)'."""
    result = validate("bfl/flux-1-dev", {"prompt": "a cat", "width": 4000}, today=BEFORE_SUNSET)
    assert [p.message for p in result.problems] == [
        "width: 4000 is above the maximum 2368 (maximum)"
    ]


def test_every_problem_is_reported_at_once() -> None:
    """Several problems in one body are all reported, not just the first."""
    body = {
        "width": 100,
        "height": "tall",
        "steps": 500,
        "colour": "red",
        "guidance_scale_flux": -1,
    }
    result = validate("bfl/flux-1-dev", body, today=BEFORE_SUNSET)
    assert {(p.field, p.rule) for p in result.problems} == {
        ("prompt", "required"),
        ("width", "minimum"),
        ("height", "type"),
        ("steps", "maximum"),
        ("colour", "additionalProperties"),
        ("guidance_scale_flux", "minimum"),
    }
    with pytest.raises(RequestValidationError) as caught:
        result.raise_for_problems()
    assert len(caught.value.problems) == 6
    assert "6 problems" in str(caught.value)


def test_nested_item_rules_name_the_item_path() -> None:
    """Problems inside array items name the item and property (style_images[1].strength)."""
    body = {
        "prompt": "a cat",
        "style_images": [
            {"url": "https://example.com/a.png", "strength": 1},
            {"url": "not a url", "strength": 3},
            {"url": "https://example.com/c.png"},
        ],
    }
    result = validate("openai/gpt-image-2", body, today=BEFORE_SUNSET)
    assert {(p.field, p.rule) for p in result.problems} == {
        ("style_images[1].strength", "maximum"),
        ("style_images[1].url", "format"),
        ("style_images[2].strength", "required"),
    }


def test_alias_is_rewritten_before_its_sunset_with_a_warning() -> None:
    """A deprecated camelCase name is sent under its new name, with a warning, until the sunset."""
    result = validate(
        "openai/gpt-image-2",
        {"prompt": "a cat", "imageUrls": ["https://example.com/a.png"]},
        today=BEFORE_SUNSET,
    )
    assert result.ok
    assert result.params == {"prompt": "a cat", "image_urls": ["https://example.com/a.png"]}
    assert [(w.field, w.rule) for w in result.warnings] == [("imageUrls", "deprecated")]
    assert "image_urls" in result.warnings[0].message


def test_alias_is_rejected_after_its_sunset_naming_the_new_field() -> None:
    """From the sunset date on, the alias is a problem that names the field to use instead."""
    result = validate(
        "openai/gpt-image-2",
        {"prompt": "a cat", "imageUrls": ["https://example.com/a.png"]},
        today=AFTER_SUNSET,
    )
    assert [(p.field, p.rule) for p in result.problems] == [("imageUrls", "deprecated")]
    assert "send it as image_urls" in result.problems[0].message
    assert "2026-06-19" in result.problems[0].message


def test_alias_given_with_its_new_name_is_a_problem() -> None:
    """Sending both the old and the new name is ambiguous and rejected."""
    result = validate(
        "openai/gpt-image-2",
        {"prompt": "a", "imageUrls": [], "image_urls": []},
        today=BEFORE_SUNSET,
    )
    assert [(p.field, p.rule) for p in result.problems] == [("imageUrls", "deprecated")]


@pytest.mark.parametrize(
    ("params", "rule"),
    [
        ({"prompt": "a", "width": math.nan}, "type"),
        ({"prompt": "a", "width": math.inf}, "type"),
        ({"prompt": "a", "width": True}, "type"),
        ({"prompt": None}, "type"),
    ],
    ids=["nan", "infinity", "bool-is-not-a-number", "null-prompt"],
)
def test_json_edge_values(params: dict[str, Any], rule: str) -> None:
    """NaN, infinities, booleans-as-numbers and nulls are rejected as JSON would."""
    result = validate("bfl/flux-1-dev", params, today=BEFORE_SUNSET)
    assert rule in {p.rule for p in result.problems}


def test_integer_fields_accept_integral_floats() -> None:
    """JSON Schema counts 30.0 as an integer, so does the validator."""
    assert validate("bfl/flux-1-dev", {"prompt": "a", "steps": 30.0}).ok
    assert not validate("bfl/flux-1-dev", {"prompt": "a", "steps": 30.5}).ok


def test_nullable_enum_accepts_null() -> None:
    """A field typed string-or-null with null in its enum accepts null."""
    assert validate("luma/uni-1", {"prompt": "a", "output_format": None}).ok


def test_any_of_rule_for_video_duration() -> None:
    """A value matching no anyOf branch is reported with the allowed values."""
    result = validate("kling/kling-2.1", {"prompt": "a", "duration": 7}, kind="video")
    assert [(p.field, p.rule) for p in result.problems] == [("duration", "anyOf")]
    assert "5, 10" in result.problems[0].message
    assert validate("kling/kling-2.1", {"prompt": "a", "duration": 10}, kind="video").ok


def test_body_must_be_an_object() -> None:
    """A body that is not a mapping is one type problem."""
    result = validate("bfl/flux-1-dev", ["prompt"])
    assert [(p.field, p.rule) for p in result.problems] == [("(body)", "type")]


def test_unknown_model_lists_close_matches() -> None:
    """An unknown model raises an error suggesting the nearest catalog names."""
    with pytest.raises(UnknownModelError) as caught:
        get_model("openai/gpt-image-3")
    assert "openai/gpt-image-2" in caught.value.close_matches
    assert "openai/gpt-image-2" in str(caught.value)


def test_get_model_accepts_the_catalog_key() -> None:
    """Both 'bfl/flux-1-dev' and 'image/bfl/flux-1-dev' name the same model."""
    assert get_model("image/bfl/flux-1-dev") == get_model("bfl/flux-1-dev")


def test_model_spec_exposes_catalog_facts() -> None:
    """ModelSpec exposes fields, required, avg_seconds, hosting, price and wait timeout."""
    flux = get_model("bfl/flux-1-dev")
    assert flux.required == ("prompt",)
    assert flux.fields["width"].maximum == 2368
    assert flux.avg_seconds == 7.0
    assert flux.hosted_by_krea
    assert flux.default_wait_timeout == DEFAULT_HOSTED_WAIT_TIMEOUT == 300.0
    gpt = get_model("openai/gpt-image-2")
    assert not gpt.hosted_by_krea
    assert gpt.default_wait_timeout == DEFAULT_EXTERNAL_WAIT_TIMEOUT == 7800.0
    assert flux.price is not None and flux.price.source == "doc"


@pytest.mark.parametrize(
    ("model", "params", "kind", "expected"),
    [
        ("bfl/flux-1-dev", {"prompt": "a"}, "image", 0.007),
        ("google/nano-banana-pro", {"prompt": "a"}, "image", 0.15),
        ("google/nano-banana-pro", {"prompt": "a", "resolution": "4K"}, "image", 0.30),
        ("google/nano-banana-2", {"prompt": "a", "resolution": "2K"}, "image", 0.12),
        ("luma/uni-1", {"prompt": "a"}, "image", 0.0404),
        (
            "luma/uni-1",
            {
                "prompt": "a",
                "mode": "max",
                "style_images": [{"url": "https://e.com/a.png", "strength": 1}] * 2,
            },
            "image",
            0.1062,
        ),
        ("ideogram/ideogram-3", {"prompt": "a"}, "image", 0.063),
        (
            "ideogram/ideogram-3",
            {"prompt": "a", "character_reference_images": ["https://e.com/face.png"]},
            "image",
            0.1575,
        ),
        ("bytedance/seededit", {"prompt": "a", "image_url": "https://e.com/a.png"}, "image", None),
        ("google/veo-2", {"prompt": "a", "duration": 6}, "video", 3.1604),
    ],
    ids=[
        "plain",
        "resolution-default",
        "resolution-4k",
        "resolution-2k",
        "mode-and-refs-default",
        "mode-max-two-refs",
        "character-reference-no",
        "character-reference-yes",
        "unpriced",
        "video-duration",
    ],
)
def test_estimate_cost(
    model: str, params: dict[str, Any], kind: str, expected: float | None
) -> None:
    """The USD estimate uses the price point matching the request, or None when unpriced."""
    cost = estimate_cost(model, params, kind=kind)
    if expected is None:
        assert cost is None
    else:
        assert cost == pytest.approx(expected)


def test_problem_is_a_plain_record() -> None:
    """Problem has exactly field, rule and message."""
    problem = Problem("width", "maximum", "width: 4000 is above the maximum 2368 (maximum)")
    assert (problem.field, problem.rule) == ("width", "maximum")
