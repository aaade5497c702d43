"""Validate a prompt batch against the model catalog, before anything is paid for.

``prepare_batch`` turns the raw rows of a batch into the validated prompts table: one row per
prompt with the exact request that will be sent, a stable ``prompt_key`` and the estimated
cost. It reports **every** problem of the batch at once, each with its row number, column and
rule, so a user fixes the file in one go; a batch with any problem is never submitted.

Columns:

- ``prompt`` (required): the text prompt.
- any request field of the model (``width``, ``height``, ``aspect_ratio``, ``resolution``,
  ``quality``, ``seed``, ``negative_prompt``, ...): per-row request parameters; an empty cell
  means "not set" (the builder's defaults, then Krea's own, apply). Array and object fields
  (``image_urls``, ``style_images``) take JSON in the cell.
- ``variant`` (optional): makes otherwise identical rows distinct prompts on purpose.
- anything else is carried into the manifest untouched, except a column that is a request
  field of another Krea model or looks like a misspelt field of this one: that is almost
  always a mistake, so it is reported (list it in ``carry_columns`` to keep it as data).

``prompt_key`` is a hash of the model, the canonical request (parameters with the prompt) and
the variant: reordering or adding rows does not change other rows' keys; changing anything
that is sent does.
"""

import difflib
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from krea_dagster.api import catalog

__all__ = [
    "PROMPTS_TABLE_COLUMNS",
    "PROMPT_COLUMN",
    "VARIANT_COLUMN",
    "PreparedBatch",
    "PromptProblem",
    "PromptValidationError",
    "expected_size",
    "prepare_batch",
    "prompt_key",
    "request_hash",
]

PROMPT_COLUMN = "prompt"
VARIANT_COLUMN = "variant"
PROMPTS_TABLE_COLUMNS = (
    "prompt_key",
    "row",
    "prompt",
    "variant",
    "request_json",
    "estimated_usd",
)
MAX_LISTED_PROBLEMS = 200


@dataclass(frozen=True)
class PromptProblem:
    """One thing wrong with a batch: where (row and column) and which rule."""

    row: int | None
    column: str | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        location = ", ".join(where) or "table"
        rule = "" if self.message.endswith(f"({self.rule})") else f" ({self.rule})"
        return f"{location}: {self.message}{rule}"


class PromptValidationError(ValueError):
    """A prompt batch has problems; nothing of it was submitted."""

    def __init__(self, batch: str, problems: Sequence[PromptProblem], origin: str = "") -> None:
        self.batch = batch
        self.problems = list(problems)
        self.origin = origin
        listed = "\n".join(f"  - {problem}" for problem in self.problems[:MAX_LISTED_PROBLEMS])
        more = len(self.problems) - MAX_LISTED_PROBLEMS
        if more > 0:
            listed += f"\n  ... and {more} more"
        source = f" ({origin})" if origin else ""
        super().__init__(
            f"prompt batch {batch!r}{source} has {len(self.problems)} problem(s); nothing was "
            f"submitted. Rows are numbered from 1 after the header.\n{listed}"
        )


@dataclass
class PreparedBatch:
    """The validated prompts of a batch."""

    table: pd.DataFrame
    carried_columns: list[str]
    estimated_usd: float
    unpriced_rows: int
    problems: list[PromptProblem] = field(default_factory=list)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_key(model: str, request: Mapping[str, Any], variant: str) -> str:
    """Stable identity of one prompt: model, canonical request and variant."""
    payload = canonical_json({"model": model, "request": dict(request), "variant": variant})
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def request_hash(model: str, request: Mapping[str, Any]) -> str:
    """Identity of exactly what is sent (a regenerated prompt gets a new seed, so a new hash)."""
    return hashlib.sha256(
        canonical_json({"model": model, "request": dict(request)}).encode()
    ).hexdigest()


def prepare_batch(
    frame: pd.DataFrame,
    *,
    batch: str,
    model: str,
    defaults: Mapping[str, Any] | None = None,
    carry_columns: Sequence[str] = (),
    origin: str = "",
) -> PreparedBatch:
    """Validate every row of a batch; raise ``PromptValidationError`` listing all problems."""
    spec = catalog.get_model(model)
    fields = spec.fields
    prompt_required = PROMPT_COLUMN in spec.required
    problems: list[PromptProblem] = []

    if PROMPT_COLUMN not in frame.columns and not prompt_required:
        frame = frame.assign(**{PROMPT_COLUMN: ""})
    if PROMPT_COLUMN not in frame.columns:
        found = ", ".join(map(repr, frame.columns)) or "none"
        raise PromptValidationError(
            batch,
            [
                PromptProblem(
                    None,
                    PROMPT_COLUMN,
                    "required",
                    f"the table has no 'prompt' column (columns found: {found}); "
                    "add a header row whose prompt column is named 'prompt'",
                )
            ],
            origin,
        )
    if frame.empty:
        raise PromptValidationError(
            batch, [PromptProblem(None, None, "minItems", "the batch has no rows")], origin
        )

    parameter_columns, carried, column_problems = _classify_columns(
        list(frame.columns), model, set(fields), set(carry_columns)
    )
    problems.extend(column_problems)

    base = dict(defaults or {})
    default_problems = catalog.validate(model, {PROMPT_COLUMN: "x", **base}).problems
    # Only the defaults' own fields: required ones may come from the rows, checked per row.
    for problem in (p for p in default_problems if p.field.split(".")[0].split("[")[0] in base):
        problems.append(
            PromptProblem(None, problem.field, problem.rule, f"in the defaults: {problem.message}")
        )

    records: list[dict[str, Any]] = []
    first_row_of_key: dict[str, int] = {}
    total = 0.0
    unpriced = 0
    for index, row in enumerate(frame.to_dict(orient="records"), start=1):
        row_problems: list[PromptProblem] = []
        raw_prompt = row.get(PROMPT_COLUMN)
        if not prompt_required and (_is_missing(raw_prompt) or str(raw_prompt).strip() == ""):
            prompt: str | None = ""  # the model takes no prompt (enhance): not set
        else:
            prompt = _prompt_cell(raw_prompt, index, row_problems)
        params: dict[str, Any] = dict(base)
        for column in parameter_columns:
            value = _coerce(row.get(column), fields[column], index, column, row_problems)
            if value is not _UNSET:
                params[column] = value
        if prompt is not None:
            if prompt:
                params[PROMPT_COLUMN] = prompt
            result = catalog.validate(model, params)
            for problem in result.problems:
                if problem.field.split(".")[0].split("[")[0] in base and problem.field not in row:
                    continue  # already reported once for the defaults
                row_problems.append(
                    PromptProblem(index, problem.field, problem.rule, problem.message)
                )
            params = dict(result.params)
        variant = _variant_cell(row.get(VARIANT_COLUMN))
        problems.extend(row_problems)
        if row_problems or prompt is None:
            continue
        key = prompt_key(model, params, variant)
        if key in first_row_of_key:
            problems.append(
                PromptProblem(
                    index,
                    None,
                    "unique",
                    f"duplicate of row {first_row_of_key[key]} (same prompt and parameters); "
                    "remove it, or give the rows different 'variant' values to generate both",
                )
            )
            continue
        first_row_of_key[key] = index
        cost = catalog.estimate_cost(model, params)
        if cost is None:
            unpriced += 1
        else:
            total += cost
        record = {
            "prompt_key": key,
            "row": index,
            "prompt": prompt,
            "variant": variant,
            "request_json": canonical_json(params),
            "estimated_usd": cost,
        }
        for column in carried:
            record[column] = row.get(column)
        records.append(record)

    if problems:
        raise PromptValidationError(batch, problems, origin)
    table = pd.DataFrame.from_records(records, columns=[*PROMPTS_TABLE_COLUMNS, *carried])
    return PreparedBatch(
        table=table, carried_columns=carried, estimated_usd=round(total, 6), unpriced_rows=unpriced
    )


def expected_size(request: Mapping[str, Any]) -> tuple[int, int] | None:
    """Exact pixel size a request asks for, when it names one (width and height)."""
    width, height = request.get("width"), request.get("height")
    if isinstance(width, int | float) and isinstance(height, int | float):
        return round(width), round(height)
    return None


def expected_aspect_ratio(request: Mapping[str, Any]) -> float | None:
    ratio = request.get("aspect_ratio")
    if not isinstance(ratio, str) or ":" not in ratio:
        return None
    left, _, right = ratio.partition(":")
    try:
        return float(left) / float(right)
    except (ValueError, ZeroDivisionError):
        return None


# -- columns --------------------------------------------------------------------------------


def _all_request_fields() -> set[str]:
    names: set[str] = set()
    for spec in catalog.image_models():
        names.update(spec.fields)
    return names


def _classify_columns(
    columns: list[str], model: str, model_fields: set[str], carry: set[str]
) -> tuple[list[str], list[str], list[PromptProblem]]:
    parameters: list[str] = []
    carried: list[str] = []
    problems: list[PromptProblem] = []
    other_models = _all_request_fields() - model_fields
    for column in columns:
        if column in (PROMPT_COLUMN, VARIANT_COLUMN):
            continue
        if not isinstance(column, str) or not column.strip():
            problems.append(
                PromptProblem(
                    None, str(column), "header", "a column has no name; name it or delete it"
                )
            )
            continue
        if column in carry:
            carried.append(column)
        elif column in model_fields:
            parameters.append(column)
        elif column in other_models:
            problems.append(
                PromptProblem(
                    None,
                    column,
                    "additionalProperties",
                    f"{column!r} is a request field of other Krea models but not of {model}; "
                    "remove the column, or list it in carry_columns to keep it as data",
                )
            )
        elif close := difflib.get_close_matches(column, sorted(model_fields), n=1, cutoff=0.8):
            problems.append(
                PromptProblem(
                    None,
                    column,
                    "additionalProperties",
                    f"unknown column {column!r}: did you mean {close[0]!r}? (or list it in "
                    "carry_columns to keep it as data)",
                )
            )
        else:
            carried.append(column)
    return parameters, carried, problems


# -- cells ----------------------------------------------------------------------------------

_UNSET: Any = object()


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, list | dict | tuple) else False
    except (TypeError, ValueError):
        return False


def _prompt_cell(value: Any, row: int, problems: list[PromptProblem]) -> str | None:
    if _is_missing(value):
        problems.append(PromptProblem(row, PROMPT_COLUMN, "required", "the prompt is empty"))
        return None
    if not isinstance(value, str):
        problems.append(
            PromptProblem(
                row,
                PROMPT_COLUMN,
                "type",
                f"the prompt must be text, got {type(value).__name__} {value!r}",
            )
        )
        return None
    if not value.strip():
        problems.append(
            PromptProblem(row, PROMPT_COLUMN, "minLength", "the prompt is only whitespace")
        )
        return None
    return value


def _variant_cell(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _coerce(value: Any, spec: Any, row: int, column: str, problems: list[PromptProblem]) -> Any:
    """A table cell as the JSON value the field takes; text from CSV gets parsed by type."""
    if _is_missing(value):
        return _UNSET
    types = set(spec.types)
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()  # numpy scalar from Parquet
    if isinstance(value, str):
        text = value.strip()
        if "array" in types or "object" in types:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                if "array" in types and "string" in _item_types(spec):
                    return [item.strip() for item in text.split(",") if item.strip()]
                problems.append(
                    PromptProblem(row, column, "type", f"{text!r} is not valid JSON for a list")
                )
                return _UNSET
        if types & {"number", "integer"}:
            try:
                number = float(text)
            except ValueError:
                if "string" in types:
                    return text
                problems.append(PromptProblem(row, column, "type", f"{text!r} is not a number"))
                return _UNSET
            return _finite_number(number, types, row, column, problems)
        if "boolean" in types:
            lowered = text.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            problems.append(PromptProblem(row, column, "type", f"{text!r} is not true or false"))
            return _UNSET
        return text
    if isinstance(value, float | int) and not isinstance(value, bool):
        if types & {"number", "integer"}:
            return _finite_number(float(value), types, row, column, problems)
        if "string" in types:
            return _variant_cell(value)
    return value


def _finite_number(
    number: float, types: set[str], row: int, column: str, problems: list[PromptProblem]
) -> Any:
    if not math.isfinite(number):
        problems.append(PromptProblem(row, column, "type", f"{number!r} is not a finite number"))
        return _UNSET
    if number.is_integer():
        return int(number)
    if "integer" in types and "number" not in types:
        problems.append(PromptProblem(row, column, "type", f"{number!r} is not a whole number"))
        return _UNSET
    return number


def _item_types(spec: Any) -> set[str]:
    return set(spec.items.types) if spec.items is not None else set()
