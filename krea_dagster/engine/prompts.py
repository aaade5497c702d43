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
  A column named like one the package writes (``prompt_key``, ``row``, ``request_json``,
  ``estimated_usd``, ``status``, ...; see ``table_rules.RESERVED_COLUMNS``) is refused.

Beyond the schema, the rules of ``krea_dagster.engine.table_rules`` apply (exact numbers, seed range,
positive sizes, visible prompt text, fetchable image URLs). Problems name the file and its own
line when the source gives them (``locations``); every echoed value is shortened.

``prompt_key`` is a hash of the model, the canonical request (parameters with the prompt) and
the variant: reordering or adding rows does not change other rows' keys; changing anything
that is sent does.

The catalog is the caller's (``krea_dagster.engine.catalogs.catalog_for``: the backend's live
one, else the bundled one). A model in no catalog that the user chose to send unvalidated
(``KreaResource.unvalidated_models``) is read by column type only, and its prompts table (and
so its manifest) gets a ``validation`` column saying ``unvalidated``. A model with no known
price is estimated "unknown", never $0, and ``PreparedBatch.price_warning`` names it.
"""

import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from krea_dagster.api.catalog import ModelCatalog, bundled_catalog, shorten
from krea_dagster.api.json_values import JSONLimitError, is_number, load_json

if TYPE_CHECKING:
    from krea_dagster.engine.references import CheckedReferences
from krea_dagster.engine.table_rules import (
    RESERVED_COLUMNS,
    exact_number,
    image_object_problems,
    image_reference_problems,
    implied_bound_problems,
    number_problems,
    prompt_text_problem,
    quoted,
    size_conflict,
)

__all__ = [
    "PROMPTS_TABLE_COLUMNS",
    "PROMPT_COLUMN",
    "REFERENCES_COLUMN",
    "ROW_KEY",
    "SKIP_COLUMN",
    "VALIDATION_COLUMN",
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
#: Identifies a row of a node's source from step to step (a key column's value, or a hash).
ROW_KEY = "row_key"
#: Why a row is not sent by this step (its previous step has no output for it); else empty.
SKIP_COLUMN = "skip_reason"
#: The files a row's request names, by upload token (``references.upload_token``): JSON.
REFERENCES_COLUMN = "references_json"
#: Added to the prompts table (and carried into the manifest) of a batch sent unvalidated.
VALIDATION_COLUMN = "validation"
UNVALIDATED = "unvalidated"
PROMPTS_TABLE_COLUMNS = (
    "prompt_key",
    ROW_KEY,
    "row",
    "prompt",
    "variant",
    "request_json",
    REFERENCES_COLUMN,
    "estimated_usd",
    SKIP_COLUMN,
)
MAX_LISTED_PROBLEMS = 200
#: The error message lists at most this many problems (all of them are in ``problems``) ...
MAX_PROBLEMS_IN_MESSAGE = 20
#: ... and is never longer than this, whatever the table holds.
MAX_MESSAGE_CHARS = 4000
MAX_PROBLEM_CHARS = 600


@dataclass(frozen=True)
class PromptProblem:
    """One thing wrong with a batch: where (row and column) and which rule."""

    row: int | None
    column: str | None
    rule: str
    message: str
    #: Where the row is in its file (``spring.csv line 7``), when the source knows.
    location: str | None = None

    def __str__(self) -> str:
        where = []
        if self.location is not None:
            where.append(self.location)
        elif self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {quoted(self.column)}")
        location = ", ".join(where) or "table"
        rule = "" if self.message.endswith(f"({self.rule})") else f" ({self.rule})"
        return shorten(f"{location}: {self.message}{rule}", MAX_PROBLEM_CHARS)


class PromptValidationError(ValueError):
    """A prompt batch has problems; nothing of it was submitted."""

    def __init__(self, batch: str, problems: Sequence[PromptProblem], origin: str = "") -> None:
        self.batch = batch
        self.problems = list(problems)
        self.origin = origin
        source = f" ({shorten(origin, 200)})" if origin else ""
        numbering = (
            "Lines are the file's own (the header is line 1)."
            if any(problem.location for problem in self.problems)
            else "Rows are numbered from 1 after the header."
        )
        head = (
            f"prompt batch {quoted(batch)}{source} has {len(self.problems)} problem(s); nothing "
            f"was submitted. Fix them in the file and materialize the batch again. {numbering}"
        )
        lines: list[str] = []
        size = len(head)
        for problem in self.problems[:MAX_PROBLEMS_IN_MESSAGE]:
            line = f"  - {problem}"
            if size + len(line) > MAX_MESSAGE_CHARS - 200:
                break
            lines.append(line)
            size += len(line) + 1
        more = len(self.problems) - len(lines)
        if more > 0:
            lines.append(
                f"  ... and {more} more (the step's 'problems' metadata lists up to "
                f"{MAX_LISTED_PROBLEMS})"
            )
        super().__init__("\n".join([head, *lines]))


@dataclass
class PreparedBatch:
    """The validated prompts of a batch."""

    table: pd.DataFrame
    carried_columns: list[str]
    estimated_usd: float
    unpriced_rows: int
    problems: list[PromptProblem] = field(default_factory=list)
    #: Why some estimates are unknown (the model has no price), naming the model; else None.
    price_warning: str | None = None

    @property
    def estimate_text(self) -> str:
        """``$0.1200``, or ``unknown`` when no prompt is priced, or ``$0.12 plus unknown for 3``."""
        if not self.unpriced_rows:
            return f"${self.estimated_usd:.4f}"
        if len(self.table) == self.unpriced_rows:
            return "unknown"
        return f"${self.estimated_usd:.4f} plus unknown for {self.unpriced_rows} prompt(s)"


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
    locations: Sequence[str] | None = None,
    price_usd: float | None = None,
    max_usd_per_run: float | None = None,
    references: "CheckedReferences | None" = None,
    row_keys: Sequence[str] | None = None,
    skips: Sequence[str | None] | None = None,
    catalog: ModelCatalog | None = None,
) -> PreparedBatch:
    """Validate every row of a batch; raise ``PromptValidationError`` listing all problems.

    ``locations`` names each row's place in its file (``spring.csv line 7``), in frame order.
    ``price_usd`` is the USD price of one request, used instead of the catalog's price. With
    ``max_usd_per_run`` set, a row whose price is unknown is a problem: no price, no budget.
    ``references`` reads, checks and hashes every file a request names (nothing is uploaded):
    the validated request carries an upload token per file (``references.upload_token``);
    without it, only URLs Krea can fetch are accepted. ``catalog`` validates and prices the
    rows (default: the bundled catalog); a model it lacks raises ``UnknownModelError`` saying
    what to do.

    ``row_keys`` are the rows' keys in a node (else the prompt key stands in); a row whose
    ``skips`` entry is set (why: its previous step has no output) is not validated: it stays in
    the table as a recorded skip. Both are given beside the frame, in its order, never read
    from its columns: a table column of either name is the user's, and reserved.
    """
    models = catalog or bundled_catalog()
    spec = models.get(model)
    if row_keys is not None and len(row_keys) != len(frame):
        raise ValueError(f"{len(row_keys)} row keys for {len(frame)} rows")
    if skips is not None and len(skips) != len(frame):
        raise ValueError(f"{len(skips)} skips for {len(frame)} rows")
    fields = spec.fields
    prompt_required = PROMPT_COLUMN in spec.required
    problems: list[PromptProblem] = []
    if locations is not None and len(locations) != len(frame):
        raise ValueError(f"{len(locations)} locations for {len(frame)} rows")

    def where(index: int) -> str | None:
        return locations[index - 1] if locations is not None else None

    if PROMPT_COLUMN not in frame.columns and not prompt_required:
        frame = frame.assign(**{PROMPT_COLUMN: ""})
    if PROMPT_COLUMN not in frame.columns:
        shown = [quoted(column) for column in frame.columns[:20]]
        if len(frame.columns) > 20:
            shown.append(f"... {len(frame.columns) - 20} more")
        found = ", ".join(shown) or "none"
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
            batch,
            [
                PromptProblem(
                    None,
                    None,
                    "minItems",
                    "the batch has no rows; add one prompt per line under the header",
                )
            ],
            origin,
        )

    parameter_columns, carried, column_problems = _classify_columns(
        list(frame.columns), model, set(fields), set(carry_columns), models
    )
    problems.extend(column_problems)

    base = dict(defaults or {})
    # A number no field can take (an integer of 400 digits, NaN) is reported once and left
    # out, so the schema's rules do not report it again, differently.
    for path, message in list(number_problems(base)):
        problems.append(PromptProblem(None, path, "number", f"in the defaults: {message}"))
        base.pop(_top_field(path), None)
    checked = dict(base)
    default_files: set[str] = set()  # paths of the defaults' file references (checked once)
    if references is not None:
        checked, _, file_problems = references.tokenize(model, {PROMPT_COLUMN: "x", **base})
        checked.pop(PROMPT_COLUMN, None)
        for path, message in file_problems:
            default_files.add(path)
            problems.append(
                PromptProblem(None, path, "imageReference", f"in the defaults: {message}")
            )
    default_problems = models.validate(model, {PROMPT_COLUMN: "x", **checked}).problems
    # Only the defaults' own fields: required ones may come from the rows, checked per row.
    default_references = {
        path: message
        for path, message in image_reference_problems(checked)
        if path not in default_files
    }
    for problem in (p for p in default_problems if _top_field(p.field) in base):
        if problem.field in default_references and problem.rule == "format":
            continue
        if problem.field in default_files:
            continue
        problems.append(
            PromptProblem(None, problem.field, problem.rule, f"in the defaults: {problem.message}")
        )
    for name, rule, message in implied_bound_problems(base, fields):
        problems.append(PromptProblem(None, name, rule, f"in the defaults: {message}"))
    for path, message in default_references.items():
        problems.append(PromptProblem(None, path, "imageReference", f"in the defaults: {message}"))
    for path, rule, message in image_object_problems(base, fields):
        problems.append(PromptProblem(None, path, rule, f"in the defaults: {message}"))
    if (conflict := size_conflict(base, fields)) is not None:
        problems.append(
            PromptProblem(None, "aspect_ratio", "sizeConflict", f"in the defaults: {conflict}")
        )

    records: list[dict[str, Any]] = []
    first_row_of_key: dict[str, int] = {}
    total = 0.0
    unpriced = 0
    first_unpriced: int | None = None
    for index, raw_row in enumerate(frame.to_dict(orient="records"), start=1):
        row = {name: _plain(value) for name, value in raw_row.items()}
        location = where(index)
        row_key = None if row_keys is None else str(row_keys[index - 1])
        skip = None if skips is None else skips[index - 1]
        if skip is not None:
            records.append(_skipped_record(dict(row), index, row_key, skip, carried))
            continue
        row_problems: list[PromptProblem] = []
        raw_prompt = row.get(PROMPT_COLUMN)
        if not prompt_required and (_is_missing(raw_prompt) or str(raw_prompt).strip() == ""):
            prompt: str | None = ""  # the model takes no prompt (enhance): not set
        else:
            prompt = _prompt_cell(raw_prompt, index, row_problems)
        params: dict[str, Any] = dict(base)
        own: set[str] = set()
        for column in parameter_columns:
            value = _coerce(row.get(column), fields[column], index, column, row_problems)
            if value is not _UNSET:
                params[column] = value
                own.add(column)
        files: dict[str, str] = {}
        if prompt is not None:
            if prompt:
                params[PROMPT_COLUMN] = prompt
            unreadable: set[str] = set()
            if references is not None:
                params, files, file_problems = references.tokenize(model, params)
                for path, message in file_problems:
                    unreadable.add(path)
                    if _top_field(path) in base and _top_field(path) not in own:
                        continue  # the defaults' own file: reported once, above
                    row_problems.append(PromptProblem(index, path, "imageReference", message))
            result = models.validate(model, params)
            # The image-reference rule says more than the schema's "format: uri" (and covers
            # what that format lets through, such as Windows paths): it replaces that problem.
            urls = {
                path: message
                for path, message in image_reference_problems(result.params)
                if _top_field(path) in own and path not in unreadable
            }
            for problem in result.problems:
                if _top_field(problem.field) in base and problem.field not in row:
                    continue  # already reported once for the defaults
                if problem.field in urls and problem.rule == "format":
                    continue
                if problem.field in unreadable:
                    continue  # the file's own problem says more
                row_problems.append(
                    PromptProblem(index, problem.field, problem.rule, problem.message)
                )
            params = dict(result.params)
            for name, rule, message in implied_bound_problems(params, fields):
                if name in own:
                    row_problems.append(PromptProblem(index, name, rule, message))
            for path, message in urls.items():
                row_problems.append(PromptProblem(index, path, "imageReference", message))
            for path, rule, message in image_object_problems(params, fields):
                if _top_field(path) in own:
                    row_problems.append(PromptProblem(index, path, rule, message))
            conflict = size_conflict(params, fields)
            sizing = {"aspect_ratio", "width", "height"} & set(params)
            if conflict is not None and own & sizing:
                inherited = ", ".join(sorted(sizing - own))
                note = f" ({inherited} from the defaults)" if inherited else ""
                row_problems.append(
                    PromptProblem(index, "aspect_ratio", "sizeConflict", conflict + note)
                )
        variant = _variant_cell(row.get(VARIANT_COLUMN))
        problems.extend(
            PromptProblem(p.row, p.column, p.rule, p.message, location) for p in row_problems
        )
        if row_problems or prompt is None:
            continue
        key = prompt_key(model, params, variant)
        if key in first_row_of_key:
            first = first_row_of_key[key]
            problems.append(
                PromptProblem(
                    index,
                    None,
                    "unique",
                    f"duplicate of {where(first) or f'row {first}'} (same prompt and "
                    "parameters); remove it, or give the rows different 'variant' values to "
                    "generate both",
                    location,
                )
            )
            continue
        first_row_of_key[key] = index
        cost = price_usd if price_usd is not None else models.estimate_cost(model, params)
        if cost is None:
            unpriced += 1
            first_unpriced = first_unpriced or index
        else:
            total += cost
        record = {
            "prompt_key": key,
            ROW_KEY: row_key if row_key is not None else key,
            "row": index,
            "prompt": prompt,
            "variant": variant,
            "request_json": canonical_json(params),
            REFERENCES_COLUMN: canonical_json(files) if files else None,
            "estimated_usd": cost,
            SKIP_COLUMN: None,
        }
        if not spec.validated:
            record[VALIDATION_COLUMN] = UNVALIDATED
        for column in carried:
            record[column] = row.get(column)
        records.append(record)

    if max_usd_per_run is not None and first_unpriced is not None:
        problems.append(
            PromptProblem(
                first_unpriced,
                None,
                "price",
                f"no price is known for {model} ({unpriced} prompt(s) unpriced), so "
                f"max_usd_per_run (${max_usd_per_run:g}) cannot be enforced: give price_usd=<USD "
                "per request> (to build_krea_image_assets, to the step: KreaStep(price_usd=...), "
                "or price_usd: in defs.yaml), or remove max_usd_per_run",
                where(first_unpriced),
            )
        )
    if problems:
        raise PromptValidationError(batch, problems, origin)
    label = [] if spec.validated else [VALIDATION_COLUMN]
    table = pd.DataFrame.from_records(records, columns=[*PROMPTS_TABLE_COLUMNS, *label, *carried])
    price_warning = (
        f"no price is known for {spec.key}: the estimate of {unpriced} prompt(s) is unknown "
        "(not $0) and Krea bills them; give price_usd (USD per request) to count them"
        if unpriced
        else None
    )
    return PreparedBatch(
        table=table,
        carried_columns=carried,
        estimated_usd=round(total, 6),
        unpriced_rows=unpriced,
        price_warning=price_warning,
    )


def _skipped_record(
    row: Mapping[Any, Any], index: int, row_key: str | None, skip: str, carried: Sequence[str]
) -> dict[str, Any]:
    """A row the step does not send (its previous step has no output for it): no request."""
    record: dict[str, Any] = {
        "prompt_key": "",
        ROW_KEY: row_key,
        "row": index,
        "prompt": "" if _is_missing(row.get(PROMPT_COLUMN)) else str(row.get(PROMPT_COLUMN)),
        "variant": _variant_cell(row.get(VARIANT_COLUMN)),
        "request_json": None,
        REFERENCES_COLUMN: None,
        "estimated_usd": 0.0,
        SKIP_COLUMN: skip,
    }
    for column in carried:
        record[column] = row.get(column)
    return record


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


def _all_request_fields(models: ModelCatalog) -> set[str]:
    names: set[str] = set()
    for spec in models.models("image"):
        names.update(spec.fields)
    return names


def _classify_columns(
    columns: list[str], model: str, model_fields: set[str], carry: set[str], models: ModelCatalog
) -> tuple[list[str], list[str], list[PromptProblem]]:
    parameters: list[str] = []
    carried: list[str] = []
    problems: list[PromptProblem] = []
    other_models = _all_request_fields(models) - model_fields
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
        # A model field named like a manifest column (width) is a parameter; as data it would
        # collide with the column the package writes.
        if column in RESERVED_COLUMNS and (column not in model_fields or column in carry):
            problems.append(
                PromptProblem(
                    None,
                    column,
                    "reserved",
                    f"{column!r} is a column krea-dagster writes itself (reserved: "
                    f"{', '.join(sorted(RESERVED_COLUMNS))}); rename the column, e.g. "
                    f"'my_{column}'",
                )
            )
        elif column in carry:
            carried.append(column)
        elif column in model_fields:
            parameters.append(column)
        elif column in other_models:
            problems.append(
                PromptProblem(
                    None,
                    column,
                    "additionalProperties",
                    f"{quoted(column)} is a request field of other Krea models but not of {model}; "
                    "remove the column, or list it in carry_columns to keep it as data",
                )
            )
        elif close := difflib.get_close_matches(column, sorted(model_fields), n=1, cutoff=0.8):
            problems.append(
                PromptProblem(
                    None,
                    column,
                    "additionalProperties",
                    f"unknown column {quoted(column)}: did you mean {close[0]!r}? (or list it in "
                    "carry_columns to keep it as data)",
                )
            )
        else:
            carried.append(column)
    return parameters, carried, problems


# -- cells ----------------------------------------------------------------------------------

_UNSET: Any = object()


def _top_field(path: str) -> str:
    """The request field a problem path is in: ``style_images[0].url`` -> ``style_images``."""
    return path.split(".")[0].split("[")[0]


def _plain(value: Any) -> Any:
    """A cell as plain Python: numpy scalars and arrays (Parquet lists) become ints and lists."""
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


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
                f"the prompt must be text, got {type(value).__name__} {quoted(value)}",
            )
        )
        return None
    if not value.strip():
        problems.append(
            PromptProblem(row, PROMPT_COLUMN, "minLength", "the prompt is only whitespace")
        )
        return None
    if (problem := prompt_text_problem(value)) is not None:
        problems.append(PromptProblem(row, PROMPT_COLUMN, "visibleText", problem))
        return None
    return value


def _variant_cell(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _coerce(value: Any, spec: Any, row: int, column: str, problems: list[PromptProblem]) -> Any:
    """A table cell as the JSON value the field takes; text from CSV gets parsed by type.

    Every number, wherever it sits (the cell itself, JSON inside it, a Parquet list), meets
    the one number rule of ``table_rules`` before it can be sent.
    """
    if _is_missing(value):
        return _UNSET
    types = set(spec.types)
    if isinstance(value, str) and types & {"array", "object"}:
        text = value.strip()
        try:
            value = load_json(text)
        except JSONLimitError as error:
            if "array" in types and "string" in _item_types(spec):
                if text[:5].lower() == "data:":  # its own comma is not a list separator
                    return [text]
                return [item.strip() for item in text.split(",") if item.strip()]
            problems.append(PromptProblem(row, column, "type", f"{quoted(text)} {error}"))
            return _UNSET
    if isinstance(value, list | tuple | dict):
        found = list(number_problems(value, column))
        problems.extend(PromptProblem(row, path, "number", message) for path, message in found)
        return _UNSET if found else value
    if types & {"number", "integer"} and (isinstance(value, str | Decimal) or is_number(value)):
        number, problem = exact_number(value)
        if problem is not None:
            problems.append(PromptProblem(row, column, "type", problem))
            return _UNSET
        if number is None:
            text = str(value).strip()
            if "string" in types:
                return text
            problems.append(PromptProblem(row, column, "type", f"{quoted(text)} is not a number"))
            return _UNSET
        return _whole_if_needed(number, types, row, column, problems)
    if isinstance(value, str | Decimal):
        text = str(value).strip()  # a Parquet decimal in a text field: its exact text
        if "boolean" in types:
            lowered = text.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            problems.append(
                PromptProblem(row, column, "type", f"{quoted(text)} is not true or false")
            )
            return _UNSET
        return text
    if is_number(value) and "string" in types:
        return _variant_cell(value)
    return value


def _whole_if_needed(
    number: float, types: set[str], row: int, column: str, problems: list[PromptProblem]
) -> Any:
    if isinstance(number, float) and "integer" in types and "number" not in types:
        problems.append(PromptProblem(row, column, "type", f"{number!r} is not a whole number"))
        return _UNSET
    return number


def _item_types(spec: Any) -> set[str]:
    return set(spec.items.types) if spec.items is not None else set()
