"""The Krea model catalog and a request validator written over its facts.

A catalog is derived from Krea's OpenAPI document by ``catalog_source.derive_catalog``: the
bundled one (``krea_dagster/data/krea_models.json``, written by ``scripts/build_catalog.py``)
ships with the package, and a live one is derived from what a backend serves at
``GET /openapi.json`` (``krea_dagster.engine.catalogs`` chooses and caches it). Both are
``ModelCatalog`` objects; ``CatalogOrigin`` says which one a batch was validated with.

This module validates request bodies against those facts with its own small validator, not
with the jsonschema library: the emulator validates with jsonschema, so the two
implementations check each other.

``validate()`` reports every problem at once (a data platform wants the whole list for a batch,
not one error per run), each as ``Problem(field, rule, message)`` where ``rule`` is the JSON
Schema keyword that failed, or ``deprecated`` for the camelCase aliases Krea retired.
The module-level functions (``get_model``, ``validate``, ``estimate_cost``, ...) use the
bundled catalog.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from krea_dagster.api.catalog_source import schema_facts
from krea_dagster.api.config import DEFAULT_EXTERNAL_WAIT_TIMEOUT, DEFAULT_HOSTED_WAIT_TIMEOUT
from krea_dagster.api.errors import RequestValidationError, UnknownModelError
from krea_dagster.api.json_values import (
    is_finite_number,
    is_number,
    is_whole_number,
    number_problem,
    show_number,
)

__all__ = [
    "Alias",
    "CatalogOrigin",
    "FieldSpec",
    "ModelCatalog",
    "ModelSpec",
    "Price",
    "PricePoint",
    "Problem",
    "ValidationResult",
    "all_models",
    "bundled_catalog",
    "estimate_cost",
    "get_model",
    "image_models",
    "node_app_id",
    "node_app_spec",
    "register_model",
    "shorten",
    "validate",
]

_CATALOG_FILE = "krea_models.json"
#: The kind of a Krea node app (``POST /node-apps/{id}/execute``): its key is ``node-app/<id>``.
NODE_APP_KIND = "node-app"
_MISSING: Any = object()
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


@dataclass(frozen=True)
class Problem:
    """One broken rule: the field (``style_images[0].strength``), the JSON Schema keyword, a message."""

    field: str
    rule: str
    message: str


@dataclass(frozen=True)
class ValidationResult:
    """The body to send (aliases rewritten), every problem, and warnings (deprecations)."""

    params: Mapping[str, Any]
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    model: str = ""

    @property
    def ok(self) -> bool:
        """Whether the body may be sent."""
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise RequestValidationError listing every problem, if there is any."""
        if self.problems:
            raise RequestValidationError(self.model, self.problems)


@dataclass(frozen=True)
class FieldSpec:
    """The validation facts of one field (or array item, or nested property)."""

    name: str
    types: tuple[str, ...] = ()
    enum: tuple[Any, ...] | None = None
    const: Any = _MISSING
    default: Any = _MISSING
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    format: str | None = None
    items: FieldSpec | None = None
    properties: Mapping[str, FieldSpec] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    additional_properties: bool = True
    any_of: tuple[FieldSpec, ...] = ()

    @classmethod
    def from_catalog(cls, name: str, facts: Mapping[str, Any]) -> FieldSpec:
        """Build a field from its catalog facts (recursively for items and properties)."""
        kind = facts.get("type")
        types = (kind,) if isinstance(kind, str) else tuple(kind or ())
        items = facts.get("items")
        return cls(
            name=name,
            types=types,
            enum=tuple(facts["enum"]) if "enum" in facts else None,
            const=facts.get("const", _MISSING),
            default=facts.get("default", _MISSING),
            minimum=facts.get("minimum"),
            maximum=facts.get("maximum"),
            exclusive_minimum=facts.get("exclusiveMinimum"),
            exclusive_maximum=facts.get("exclusiveMaximum"),
            min_length=facts.get("minLength"),
            max_length=facts.get("maxLength"),
            min_items=facts.get("minItems"),
            max_items=facts.get("maxItems"),
            format=facts.get("format"),
            items=cls.from_catalog(f"{name}[]", items) if isinstance(items, Mapping) else None,
            properties={
                key: cls.from_catalog(key, sub) for key, sub in facts.get("properties", {}).items()
            },
            required=tuple(facts.get("required", ())),
            additional_properties=bool(facts.get("additionalProperties", True)),
            any_of=tuple(cls.from_catalog(name, sub) for sub in facts.get("anyOf", ())),
        )

    @property
    def has_default(self) -> bool:
        """Whether the schema declares a default."""
        return self.default is not _MISSING

    @property
    def has_const(self) -> bool:
        """Whether the schema pins the field to one value."""
        return self.const is not _MISSING


@dataclass(frozen=True)
class Alias:
    """A deprecated camelCase field name Krea accepts until ``sunset_date`` (exclusive)."""

    old: str
    new: str
    sunset_date: date


@dataclass(frozen=True)
class PricePoint:
    """A price that applies when every ``when`` condition holds (e.g. Resolution = 2K)."""

    when: Mapping[str, str]
    usd: float


@dataclass(frozen=True)
class Price:
    """USD per request: the lowest price and the conditional points; ``source`` says how known."""

    usd: float
    points: tuple[PricePoint, ...]
    #: ``openapi`` (the document's ``x-krea-pricing`` or price table), ``doc`` (Krea's docs),
    #: ``3p`` (third-party catalogs), ``compute-units`` (derived) or ``price_usd`` (the user's).
    source: str


@dataclass(frozen=True)
class ModelSpec:
    """One generation endpoint of the catalog."""

    kind: str
    model: str
    path: str
    name: str
    required: tuple[str, ...]
    additional_properties: bool
    fields: Mapping[str, FieldSpec]
    aliases: tuple[Alias, ...]
    compute_units: tuple[Mapping[str, Any], ...]
    avg_seconds: float | None
    hosted_by_krea: bool
    price: Price | None
    example: Mapping[str, Any]
    #: False for a model sent unvalidated (in no catalog; ``KreaResource.unvalidated_models``).
    validated: bool = True

    @classmethod
    def from_catalog(cls, entry: Mapping[str, Any]) -> ModelSpec:
        """Build a spec from one ``krea_models.json`` entry."""
        price = entry.get("price")
        return cls(
            kind=entry["kind"],
            model=entry["model"],
            path=entry["path"],
            name=entry["name"],
            required=tuple(entry["required"]),
            additional_properties=bool(entry["additional_properties"]),
            fields={
                name: FieldSpec.from_catalog(name, facts) for name, facts in entry["fields"].items()
            },
            aliases=tuple(
                Alias(a["from"], a["to"], date.fromisoformat(a["sunset_date"]))
                for a in entry["aliases"]
            ),
            compute_units=tuple(entry.get("compute_units", ())),
            avg_seconds=entry.get("avg_seconds"),
            hosted_by_krea=bool(entry["hosted_by_krea"]),
            price=(
                Price(
                    usd=float(price["usd"]),
                    points=tuple(
                        PricePoint(dict(p["when"]), float(p["usd"])) for p in price["points"]
                    ),
                    source=price["source"],
                )
                if price
                else None
            ),
            example=dict(example) if isinstance(example := entry.get("example"), Mapping) else {},
        )

    @property
    def key(self) -> str:
        """``"<kind>/<model>"``, the catalog key."""
        return f"{self.kind}/{self.model}"

    @property
    def default_wait_timeout(self) -> float:
        """A few minutes beyond Krea's automatic failure: 3 min hosted, 2 h external providers."""
        return DEFAULT_HOSTED_WAIT_TIMEOUT if self.hosted_by_krea else DEFAULT_EXTERNAL_WAIT_TIMEOUT


def node_app_spec(
    version_id: str,
    input_schema: Mapping[str, Any],
    *,
    name: str = "",
    price_usd: float | None = None,
) -> ModelSpec:
    """The spec of a Krea node app (its version id and ``input_openapi_schema``).

    A node app runs a saved workflow: its body is validated like a model's, and one execution
    creates several jobs. Krea publishes no price for one; ``price_usd`` is the caller's.
    """
    properties = input_schema.get("properties") or {}
    return ModelSpec.from_catalog(
        {
            "kind": NODE_APP_KIND,
            "model": version_id,
            "path": f"/node-apps/{version_id}/execute",
            "name": name or f"node app {version_id}",
            "required": list(input_schema.get("required", [])),
            "additional_properties": input_schema.get("additionalProperties", True),
            "fields": {field: schema_facts(sub) for field, sub in properties.items()},
            "aliases": [],
            "hosted_by_krea": False,
            "price": (
                {"usd": float(price_usd), "points": [], "source": "price_usd"}
                if price_usd is not None
                else None
            ),
        }
    )


def node_app_id(model: str) -> str | None:
    """The version id of a node-app key (``"node-app/<id>"``), None for a model."""
    prefix = f"{NODE_APP_KIND}/"
    return model.removeprefix(prefix) if model.startswith(prefix) else None


#: Node-app specs added at run time (``register_model``; their input schema is Krea's), by key.
_REGISTERED: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Make a node app's ``spec`` known to every catalog in this process (its key is its id)."""
    _REGISTERED[spec.key] = spec
    return spec


@dataclass(frozen=True)
class CatalogOrigin:
    """Which catalog validated a batch: the bundled one or a backend's live one, and why.

    ``fingerprint`` is the SHA-256 of the OpenAPI document the catalog was derived from;
    ``fallback`` says why the live catalog was wanted and could not be read (the cause: warn
    about it); ``live_off`` that the user turned the live catalog off.
    """

    source: str  # "bundled" | "live"
    fingerprint: str
    base_url: str | None = None
    fetched_at: datetime | None = None
    fallback: str | None = None
    live_off: bool = False

    @property
    def is_live(self) -> bool:
        """Derived from the backend's own ``/openapi.json``."""
        return self.source == "live"

    def describe(self) -> str:
        """One line: ``live catalog of URL (document 1a2b3c4d5e6f, fetched ...)``."""
        if self.is_live:
            fetched = f", fetched {self.fetched_at:%Y-%m-%d %H:%M UTC}" if self.fetched_at else ""
            return f"live catalog of {self.base_url} (document {self.fingerprint[:12]}{fetched})"
        return f"bundled catalog (document {self.fingerprint[:12]})"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready facts, for metadata."""
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "base_url": self.base_url,
            "fetched_at": self.fetched_at.isoformat() if self.fetched_at else None,
            "fallback": self.fallback,
            "live_catalog": not self.live_off,
        }


class ModelCatalog:
    """The models of one catalog (bundled or live), by key, with validation and prices.

    ``unvalidated`` names models the user chose to send unvalidated when this catalog lacks
    them (``KreaResource.unvalidated_models``): ``get`` answers an unvalidated spec for them
    (``ModelSpec.validated`` is False) instead of refusing them.
    """

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        origin: CatalogOrigin,
        *,
        unvalidated: Iterable[str] = (),
        source: Mapping[str, Any] | None = None,
    ) -> None:
        self.specs = dict(models)
        self.origin = origin
        self.unvalidated = frozenset(name.strip("/") for name in unvalidated)
        #: The derivation's ``source`` block (document title and version, USD per compute unit).
        self.source: Mapping[str, Any] = dict(source or {})

    @classmethod
    def from_data(
        cls, data: Mapping[str, Any], origin: CatalogOrigin, *, unvalidated: Iterable[str] = ()
    ) -> ModelCatalog:
        """A catalog from ``derive_catalog``'s output (``{"source": ..., "models": {...}}``)."""
        models = {key: ModelSpec.from_catalog(entry) for key, entry in data["models"].items()}
        return cls(models, origin, unvalidated=unvalidated, source=data.get("source"))

    def __repr__(self) -> str:
        return f"ModelCatalog({self.origin.describe()}, {len(self.specs)} models)"

    def with_unvalidated(self, models: Iterable[str]) -> ModelCatalog:
        """The same catalog, also answering these models unvalidated when it lacks them."""
        return ModelCatalog(self.specs, self.origin, unvalidated=models, source=self.source)

    def models(self, kind: str | None = None) -> tuple[ModelSpec, ...]:
        """Every model (of one ``kind`` when given), sorted by key."""
        return tuple(spec for key, spec in sorted(self.specs.items()) if kind in (None, spec.kind))

    def key_of(self, model: str, kind: str = "image") -> str:
        """The catalog key of ``model`` (the path after ``/generate/<kind>/``, or the key)."""
        return model if model in self.specs else f"{kind}/{model.strip('/')}"

    def has(self, model: str, kind: str = "image") -> bool:
        """Whether this catalog lists ``model`` (unvalidated ones and node apps do not count)."""
        return self.key_of(model, kind) in self.specs

    def get(self, model: str, kind: str = "image") -> ModelSpec:
        """The spec of ``model``; UnknownModelError says why it is missing and what to do."""
        key = self.key_of(model, kind)
        if key in self.specs:
            return self.specs[key]
        registered = _REGISTERED.get(model) or _REGISTERED.get(key)
        if registered is not None:
            return registered
        if model.startswith(f"{NODE_APP_KIND}/") or kind == NODE_APP_KIND:
            raise UnknownModelError(
                model,
                NODE_APP_KIND,
                (),
                reason=(
                    "node apps are not in the Krea catalog: their input schema is read from "
                    "GET /node-apps/{id} when a run starts (krea_dagster.engine.nodes.load_node_app)"
                ),
            )
        name = key.removeprefix(f"{kind}/") if key.startswith(f"{kind}/") else model
        if name in self.unvalidated or key in self.unvalidated:
            return _unvalidated_spec(kind, name, self.specs.values())
        names = [spec.model for spec in self.specs.values() if spec.kind == kind]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        raise UnknownModelError(model, kind, close, reason=self._missing_reason(name, key))

    def _missing_reason(self, name: str, key: str) -> str:
        origin = self.origin
        unvalidated = (
            f"or, to send it without validation at your own risk, list it in "
            f"KreaResource(unvalidated_models=[{name!r}])"
        )
        if origin.is_live and key in bundled_catalog().specs:
            return (
                f"Krea's document at {origin.base_url} no longer lists it ({origin.describe()}), "
                "although the bundled catalog does: Krea removed or renamed it, so a request "
                "would fail; nothing was sent. Choose another model, or run `krea-dagster "
                "catalog --refresh` if Krea lists it again"
            )
        if origin.is_live:
            return (
                f"not in Krea's document at {origin.base_url} ({origin.describe()}). Check the "
                "name; if Krea added it since, run `krea-dagster catalog --refresh`; " + unvalidated
            )
        if origin.live_off:
            return (
                "not in the bundled Krea catalog, and the live catalog is off "
                "(KreaResource(live_catalog=False)): turn it on to validate against the models "
                "the backend serves now (`krea-dagster catalog --refresh` lists them); "
                + unvalidated
            )
        if origin.fallback:
            return (
                f"not in the bundled Krea catalog, and {origin.fallback}. Fix that and run "
                "`krea-dagster catalog --refresh` (the live catalog knows the models Krea "
                "added since this release); " + unvalidated
            )
        return (
            "not in the bundled Krea catalog; a KreaResource with live_catalog=True (the "
            "default) validates against the models the backend serves now; " + unvalidated
        )

    def validate(
        self, model: str, params: object, *, kind: str = "image", today: date | None = None
    ) -> ValidationResult:
        """Check a request body against the model's facts; every problem is reported at once."""
        spec = self.get(model, kind)
        today = today or datetime.now(UTC).date()
        if not isinstance(params, Mapping):
            problem = Problem(
                "(body)", "type", f"(body): {_show(params)} is not of type object (type)"
            )
            return ValidationResult({}, (problem,), (), spec.key)
        if not spec.validated:
            return ValidationResult(dict(params), (), (), spec.key)
        body, problems, warnings = _rewrite_aliases(spec, params, today)
        for name in spec.required:
            if name not in body:
                problems.append(
                    Problem(name, "required", f"{name}: missing, the field is required (required)")
                )
        for name, value in body.items():
            field_spec = spec.fields.get(name)
            if field_spec is not None:
                problems.extend(_check(value, field_spec, name))
            elif not spec.additional_properties:
                problems.append(_unknown_field(name, value, spec.fields, spec.model))
        return ValidationResult(body, tuple(problems), tuple(warnings), spec.key)

    def estimate_cost(
        self, model: str, params: Mapping[str, Any], *, kind: str = "image"
    ) -> float | None:
        """USD for one request, or None when the catalog has no price for it (unknown, not $0).

        With conditional prices, the point whose ``when`` matches the request is used
        (Resolution, Mode, Quality, Reference Images, Character Reference, Duration, Audio read
        from the body or the field defaults); when several still match, the highest, so a
        budget guard errs on the safe side.
        """
        spec = self.get(model, kind)
        if spec.price is None:
            return None
        if not spec.price.points:
            return spec.price.usd
        facts = _pricing_facts(spec, params)
        matching = [
            point.usd
            for point in spec.price.points
            if all(
                value == "-" or name not in facts or facts[name] == value
                for name, value in point.when.items()
            )
        ]
        return max(matching) if matching else None


def _unvalidated_spec(kind: str, model: str, known: Iterable[ModelSpec]) -> ModelSpec:
    """A spec that checks nothing: the request is sent as written (the user opted in).

    Its fields are every request field name the catalog knows, with the union of their types
    and no constraint, so a prompt table's columns are read as request fields by type.
    """
    types: dict[str, list[str]] = {}
    for spec in known:
        if spec.kind != kind:
            continue
        for name, field_spec in spec.fields.items():
            merged = types.setdefault(name, [])
            merged.extend(t for t in field_spec.types if t not in merged)
    return ModelSpec(
        kind=kind,
        model=model,
        path=f"/generate/{kind}/{model}",
        name=f"{model} (unvalidated)",
        required=(),
        additional_properties=True,
        fields={name: FieldSpec(name, tuple(found)) for name, found in sorted(types.items())},
        aliases=(),
        compute_units=(),
        avg_seconds=None,
        hosted_by_krea=False,
        price=None,
        example={},
        validated=False,
    )


@lru_cache(maxsize=1)
def _bundled_data() -> dict[str, Any]:
    text = resources.files("krea_dagster").joinpath("data", _CATALOG_FILE).read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@lru_cache(maxsize=1)
def bundled_catalog() -> ModelCatalog:
    """The catalog that ships with this release (``krea_dagster/data/krea_models.json``)."""
    data = _bundled_data()
    origin = CatalogOrigin("bundled", str(data["source"].get("openapi_sha256", "")))
    return ModelCatalog.from_data(data, origin)


def all_models(kind: str | None = None) -> tuple[ModelSpec, ...]:
    """Every model of the bundled catalog (of one ``kind`` when given), sorted by key."""
    return bundled_catalog().models(kind)


def image_models() -> tuple[ModelSpec, ...]:
    """Every image model of the bundled catalog, sorted by model path."""
    return all_models("image")


def get_model(model: str, kind: str = "image") -> ModelSpec:
    """The spec of ``model`` in the bundled catalog (the path after ``/generate/<kind>/``)."""
    return bundled_catalog().get(model, kind)


def validate(
    model: str, params: object, *, kind: str = "image", today: date | None = None
) -> ValidationResult:
    """Check a request body against the bundled catalog (``ModelCatalog.validate``)."""
    return bundled_catalog().validate(model, params, kind=kind, today=today)


def estimate_cost(model: str, params: Mapping[str, Any], *, kind: str = "image") -> float | None:
    """USD for one request by the bundled catalog, or None when unpriced (``ModelCatalog``)."""
    return bundled_catalog().estimate_cost(model, params, kind=kind)


def _pricing_facts(spec: ModelSpec, params: Mapping[str, Any]) -> dict[str, str]:
    """The values of the price-table columns this request determines."""

    def value(name: str) -> Any:
        if name in params:
            return params[name]
        field_spec = spec.fields.get(name)
        return field_spec.default if field_spec is not None and field_spec.has_default else None

    facts: dict[str, str] = {}
    if (resolution := value("resolution")) is not None:
        facts["Resolution"] = str(resolution)
    if (mode := value("mode")) is not None:
        facts["Mode"] = str(mode)
    if (quality := value("quality")) is not None:
        facts["Quality"] = str(quality)
    if "style_images" in spec.fields:
        facts["Reference Images"] = str(len(params.get("style_images") or ()))
    if "character_reference_images" in spec.fields:
        has_reference = bool(params.get("character_reference_images"))
        facts["Character Reference"] = "Yes" if has_reference else "No"
    if (duration := value("duration")) is not None and is_number(duration):
        facts["Duration"] = f"{_number(duration)}s"
    if "generate_audio" in spec.fields:
        facts["Audio"] = "Yes" if value("generate_audio") else "No"
    return facts


def _rewrite_aliases(
    spec: ModelSpec, params: Mapping[str, Any], today: date
) -> tuple[dict[str, Any], list[Problem], list[Problem]]:
    """Map deprecated camelCase names to their new names before the sunset; reject them after."""
    body = dict(params)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for alias in spec.aliases:
        if alias.old not in body or alias.old in spec.fields:
            continue
        if today >= alias.sunset_date:
            # Dropped from the body so it is reported once, as deprecated, not also as unknown.
            old_value = body.pop(alias.old)
            problems.append(
                Problem(
                    alias.old,
                    "deprecated",
                    f"{alias.old}: {_show(old_value)} uses a name Krea retired on "
                    f"{alias.sunset_date.isoformat()}; send it as {alias.new} (deprecated)",
                )
            )
        elif alias.new in body:
            body.pop(alias.old)
            problems.append(
                Problem(
                    alias.old,
                    "deprecated",
                    f"{alias.old}: given together with {alias.new}, its new name; send only "
                    f"{alias.new} (deprecated)",
                )
            )
        else:
            body[alias.new] = body.pop(alias.old)
            warnings.append(
                Problem(
                    alias.old,
                    "deprecated",
                    f"{alias.old}: deprecated name, sent as {alias.new}; Krea stops accepting "
                    f"it on {alias.sunset_date.isoformat()} (deprecated)",
                )
            )
    return body, problems, warnings


def _unknown_field(
    name: str, value: Any, known: Iterable[str], model: str, where: str = ""
) -> Problem:
    path = f"{where}.{name}" if where else name
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return Problem(
        path,
        "additionalProperties",
        f"{path}: {_show(value)} is not a field of {model}{hint} (additionalProperties)",
    )


def _check(value: Any, spec: FieldSpec, path: str) -> list[Problem]:
    """Every problem of one value; nested items and properties report their own paths."""
    problems: list[Problem] = []

    def fail(rule: str, text: str) -> None:
        problems.append(Problem(path, rule, f"{path}: {text} ({rule})"))

    if spec.types and not any(_is_type(value, t) for t in spec.types):
        fail("type", f"{_show(value)} is not of type {' or '.join(spec.types)}")
        return problems  # the other rules only make sense for the right type
    if spec.const is not _MISSING and not _json_equal(value, spec.const):
        fail("const", f"{_show(value)} must be {_show(spec.const)}")
    if spec.enum is not None and not any(_json_equal(value, choice) for choice in spec.enum):
        choices = ", ".join(_show(choice) for choice in spec.enum)
        fail("enum", f"{_show(value)} is not one of {choices}")
    if spec.any_of and not any(not _check(value, alt, path) for alt in spec.any_of):
        fail("anyOf", f"{_show(value)} is not one of {_describe_any_of(spec.any_of)}")
    if is_number(value):
        _check_number(value, spec, fail)
    elif isinstance(value, str):
        _check_string(value, spec, fail)
    elif isinstance(value, list | tuple):
        problems.extend(_check_array(value, spec, path, fail))
    elif isinstance(value, Mapping) and (spec.properties or spec.required):
        problems.extend(_check_object(value, spec, path))
    return problems


def _check_number(value: float, spec: FieldSpec, fail: Any) -> None:
    if (problem := number_problem(value)) is not None:
        fail("number", problem)
        return
    if spec.minimum is not None and value < spec.minimum:
        fail("minimum", f"{_show(value)} is below the minimum {_number(spec.minimum)}")
    if spec.maximum is not None and value > spec.maximum:
        fail("maximum", f"{_show(value)} is above the maximum {_number(spec.maximum)}")
    if spec.exclusive_minimum is not None and value <= spec.exclusive_minimum:
        fail(
            "exclusiveMinimum",
            f"{_show(value)} must be greater than {_number(spec.exclusive_minimum)}",
        )
    if spec.exclusive_maximum is not None and value >= spec.exclusive_maximum:
        fail(
            "exclusiveMaximum",
            f"{_show(value)} must be less than {_number(spec.exclusive_maximum)}",
        )


def _check_string(value: str, spec: FieldSpec, fail: Any) -> None:
    length = len(value)  # JSON Schema counts code points, as len() does
    if spec.min_length is not None and length < spec.min_length:
        fail(
            "minLength",
            f"{_show(value)} has {length} characters, fewer than the minLength {spec.min_length}",
        )
    if spec.max_length is not None and length > spec.max_length:
        fail(
            "maxLength",
            f"{_show(value)} has {length} characters, more than the maxLength {spec.max_length}",
        )
    if spec.format == "uri" and not _is_uri(value):
        fail("format", f"{_show(value)} is not an absolute URI (format uri)")


def _check_array(
    value: list[Any] | tuple[Any, ...], spec: FieldSpec, path: str, fail: Any
) -> list[Problem]:
    count = len(value)
    if spec.min_items is not None and count < spec.min_items:
        fail("minItems", f"{count} items, fewer than the minItems {spec.min_items}")
    if spec.max_items is not None and count > spec.max_items:
        fail("maxItems", f"{count} items, more than the maxItems {spec.max_items}")
    nested: list[Problem] = []
    if spec.items is not None:
        for index, item in enumerate(value):
            nested.extend(_check(item, spec.items, f"{path}[{index}]"))
    return nested


def _check_object(value: Mapping[str, Any], spec: FieldSpec, path: str) -> list[Problem]:
    problems: list[Problem] = []
    for name in spec.required:
        if name not in value:
            sub = f"{path}.{name}"
            problems.append(
                Problem(sub, "required", f"{sub}: missing, the field is required (required)")
            )
    for name, sub_value in value.items():
        sub_spec = spec.properties.get(name)
        if sub_spec is not None:
            problems.extend(_check(sub_value, sub_spec, f"{path}.{name}"))
        elif not spec.additional_properties:
            problems.append(_unknown_field(name, sub_value, spec.properties, path, where=path))
    return problems


def _is_type(value: Any, kind: str) -> bool:
    if kind == "number":
        # NaN and infinities are not JSON: they would be sent as invalid tokens.
        return is_finite_number(value)
    if kind == "integer":
        return is_whole_number(value)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list | tuple)
    if kind == "object":
        return isinstance(value, Mapping)
    if kind == "null":
        return value is None
    return True  # a type this validator does not know is left to Krea


def _json_equal(left: Any, right: Any) -> bool:
    # JSON has no bool/number overlap: true is not 1, although True == 1 in Python.
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    return bool(left == right)


def _is_uri(value: str) -> bool:
    parts = urlsplit(value)
    if not parts.scheme or not _SCHEME.fullmatch(parts.scheme):
        return False
    if parts.scheme.lower() in ("http", "https"):
        return bool(parts.netloc)
    return bool(parts.path or parts.netloc)


def _describe_any_of(alternatives: tuple[FieldSpec, ...]) -> str:
    consts = [alt for alt in alternatives if alt.const is not _MISSING]
    if len(consts) == len(alternatives):
        return ", ".join(_show(alt.const) for alt in alternatives)
    flat: list[str] = []
    for alt in alternatives:
        if alt.any_of:
            flat.append(_describe_any_of(alt.any_of))
        elif alt.const is not _MISSING:
            flat.append(_show(alt.const))
        else:
            flat.append(" or ".join(alt.types) or "a value")
    return ", ".join(flat)


def _number(value: float) -> str:
    return show_number(value)


#: How many characters of an echoed value a message shows.
SHOWN_CHARS = 40


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks the cut, the full length is said).

    Every message that echoes something the user wrote (a cell, a column name, a batch name)
    goes through here, so no input, however large, makes a large message.
    """
    if len(text) <= limit:
        return text
    note = f"... ({len(text)} characters)"
    return text[: max(limit - len(note), 8)] + note


def _show(value: Any) -> str:
    """A short rendering of a value for messages (long strings and containers summarised)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        return show_number(value)
    if isinstance(value, str):
        return json.dumps(shorten(value))
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"
