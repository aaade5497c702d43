"""Request validation: deprecated aliases first, then the model's verbatim JSON schema.

Bodies are checked with ``jsonschema`` (Draft 2020-12, the dialect of OpenAPI 3.1) against the
``request_schema`` the catalog copied from Krea's document, so ``additionalProperties: false``,
enums, ranges, required fields and types are enforced exactly as written there. Formats are
checked too; ``uri`` means an absolute URI (a scheme, then no whitespace), which is what RFC 3986
requires and what Krea's validator accepts for public URLs, asset URLs and ``data:`` URIs.

Deprecated camelCase aliases (``x-krea-deprecated-field-aliases``) are rewritten to their
snake_case names strictly before their ``sunset_date`` (compared with the emulator's "today");
on and after that date an alias is an unknown field like any other. An alias given together with
its new name is rejected rather than silently dropping one of the two values.

The 400 message names every failing field with the rule that failed, one clause per error,
sorted by field, e.g. ``body.width: 4000 is greater than the maximum of 2368 (maximum); body.foo:
unknown field 'foo' (additionalProperties: false)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from krea_dagster.emulator.catalog import DeprecatedAlias, ModelSpec
from krea_dagster.emulator.errors import BadRequest

MAX_CLAUSE_CHARS = 300
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s]*")

FORMAT_CHECKER = FormatChecker()


@FORMAT_CHECKER.checks("uri")
def _is_uri(value: object) -> bool:
    return not isinstance(value, str) or bool(_ABSOLUTE_URI.fullmatch(value))


# Validators by spec (a document served by the ``openapi`` knob has specs of its own); the
# spec is kept with its validator so its id is never reused while cached.
_VALIDATORS: dict[int, tuple[ModelSpec, Draft202012Validator]] = {}


def _validator(spec: ModelSpec) -> Draft202012Validator:
    cached = _VALIDATORS.get(id(spec))
    if cached is None or cached[0] is not spec:
        cached = (spec, Draft202012Validator(spec.request_schema, format_checker=FORMAT_CHECKER))
        _VALIDATORS[id(spec)] = cached
    return cached[1]


def rewrite_aliases(spec: ModelSpec, body: dict[str, Any], today: date) -> dict[str, Any]:
    """A copy of ``body`` with the aliases that are still accepted renamed."""
    rewritten = dict(body)
    for alias in spec.aliases:
        if alias.old not in rewritten or today >= date.fromisoformat(alias.sunset_date):
            continue
        if alias.new in rewritten:
            raise BadRequest(
                f"body.{alias.old}: deprecated alias of '{alias.new}' given together with "
                f"'{alias.new}'; send only '{alias.new}'"
            )
        rewritten[alias.new] = rewritten.pop(alias.old)
    return rewritten


def validate_body(spec: ModelSpec, body: Any, today: date) -> dict[str, Any]:
    """The body with aliases rewritten, or BadRequest naming every failing field."""
    if isinstance(body, dict):
        body = rewrite_aliases(spec, body, today)
    sunset = {a.old: a for a in spec.aliases if today >= date.fromisoformat(a.sunset_date)}
    check_schema(_validator(spec), body, f"invalid request body for {spec.path}", sunset)
    assert isinstance(body, dict)  # the schema requires an object
    return body


def check_schema(
    validator: Draft202012Validator,
    body: Any,
    what: str,
    sunset: dict[str, DeprecatedAlias] | None = None,
) -> None:
    """BadRequest ``"<what>: <clause>; <clause>"`` naming every field that fails the schema."""
    clauses = sorted(set(_clauses(validator.iter_errors(body), sunset or {})))
    if clauses:
        raise BadRequest(f"{what}: " + "; ".join(clauses))


def _location(error: ValidationError) -> str:
    parts = ["body"]
    for step in error.absolute_path:
        parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    return "".join(parts)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CLAUSE_CHARS else text[: MAX_CLAUSE_CHARS - 3] + "..."


def _clauses(
    errors: Iterable[ValidationError], sunset: dict[str, DeprecatedAlias]
) -> Iterable[str]:
    for error in errors:
        where = _location(error)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            schema = error.schema if isinstance(error.schema, dict) else {}
            known = set(schema.get("properties", {}))
            for name in sorted(set(error.instance) - known):
                note = ""
                if where == "body" and name in sunset:
                    alias = sunset[name]
                    note = f"; deprecated alias of '{alias.new}' removed on {alias.sunset_date}"
                yield _clip(
                    f"{where}.{name}: unknown field '{name}' (additionalProperties: false{note})"
                )
        elif error.validator == "required" and isinstance(error.instance, dict):
            required: Any = error.validator_value
            for name in required if isinstance(required, list) else []:
                if name not in error.instance:
                    yield f"{where}.{name}: required field '{name}' is missing (required)"
        else:
            yield _clip(f"{where}: {error.message} ({error.validator})")
