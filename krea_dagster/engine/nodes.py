"""Nodes: a source of rows, then one or more Krea steps, each step's rows rendered from the last.

A **node** is a source of rows (a prompt-file folder, or a table an upstream asset gives) and one
or more **steps** (text-to-image, edit, enhance, video, a node app). Every step has the same
shape, whatever entry point built it: its rows are rendered (``step_frame``), validated with
every reference checked locally (``KreaNode.prepare``: nothing uploaded, nothing sent), then
submitted, collected and written to a manifest by the step's ``KreaImagePipeline``, under a
ledger scope of its own. A prompt-file instance is a node with one unnamed step.

How a step's request is made from a row:

- the **first** step reads the source like a prompt file: a ``prompt`` column, any request
  field of the model as a column, a ``variant``; every other column is carried data;
- its ``prompt`` template (``"Studio photo of {name}"``) and ``inputs`` templates render request
  fields from the row's columns (``krea_dagster.engine.template``); a column a template names is
  data, never a request field of its own;
- a column any step's template names is data for the first step too (step 2's ``{quality}`` is
  not step 1's quality); a step that renders a field the table also has as a column, without
  reading that column, is refused (which value is meant?);
- ``{previous}`` is a file: only a whole input value, never prompt text, and only in an input
  that takes a file; an input the step's model does not have is refused (never carried as data
  in silence);
- a **later** step sees the source's columns as data only (a ``width`` meant for the first
  step is never sent again), the row's ``prompt`` when it has no prompt template, and
  ``{previous}``: the previous step's verified output of the row (the store's URI, uploaded
  once by content hash like any local file);
- ``defaults`` are constant request fields (a rendered input or a row's own column wins).

An upstream table is read as a DataFrame whose named index levels are columns (a batch or key
column may live there), whose column names are unique text, whose ``pathlib.Path`` cells are
their text, and whose every row names its batch (``table_frame``, ``table_batch``); the batch's
name follows the rule of prompt files, and a template may name the batch column (``{batch}``:
the batch's name). A column carried into the manifest must be one Parquet can store (one type):
found before anything is paid (``unstorable_problems``).

Rows are identified by ``row_key`` (the key column's value, else a hash of the row) from step
to step: a key given by the table is never empty and never repeats in a batch. A row whose
previous step has no verified output is kept in the step's prompts table as a recorded skip
(``skip`` names why), never a paid call; a changed upstream row renders another request
(another prompt, another reference), so only the rows downstream of it are paid for again.

A step may run a Krea node app (``model="node-app/<version id>"``): its inputs are validated
against the schema Krea serves for the app (``load_node_app``), and each row's execution makes
several jobs, all collected and verified.
"""

import difflib
import hashlib
import json
import math
import numbers
import os
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from krea_dagster.api import AsyncKreaClient, NotFoundError, UnknownModelError, catalog
from krea_dagster.api.catalog import bundled_catalog, shorten
from krea_dagster.api.json_values import string_leaves
from krea_dagster.api.media import media_paths
from krea_dagster.engine.manifest import ManifestStatus
from krea_dagster.engine.names import batch_name_problem, dagster_name_problem
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.prompts import (
    PROMPT_COLUMN,
    ROW_KEY,
    VARIANT_COLUMN,
    PreparedBatch,
    PromptProblem,
    PromptValidationError,
)
from krea_dagster.engine.references import CheckedReferences
from krea_dagster.engine.source import BATCH_COLUMN, PromptSource
from krea_dagster.engine.table_rules import RESERVED_COLUMNS, number_problems
from krea_dagster.engine.template import (
    TemplateError,
    placeholders,
    render,
    render_value,
    template_version,
)

__all__ = [
    "PREVIOUS",
    "KreaNode",
    "KreaStep",
    "SourceRows",
    "StepFrame",
    "add_row_keys",
    "cell_text",
    "check_price",
    "input_problems",
    "load_node_app",
    "step_frame",
    "table_frame",
    "unstorable_problems",
]

#: The placeholder that names the previous step's verified output of the row.
PREVIOUS = "previous"
#: How problems of an upstream table name where they are.
TABLE_ORIGIN = "the table"
#: At most this many rows or values are named in one problem.
MAX_NAMED = 10


@dataclass(frozen=True)
class KreaStep:
    """One Krea step of a node: a model, and how each row becomes its request.

    Args:
        name: the step's name: its assets are named after it (``[prefix, name]`` for the
            outputs) and its ledger scope is ``<prefix>.<name>``. Only the single step of a
            prompt-file instance has no name (its assets are ``[prefix, role]``, its scope the
            prefix).
        model: the model path after ``/generate/image/`` (``"openai/gpt-image-2"``), a
            catalog key for other kinds (``"enhance/topaz/standard-enhance"``,
            ``"video/kling/kling-2.6"``), or ``"node-app/<version id>"`` for a Krea node app.
        prompt: the prompt template over the row's columns, e.g. ``"Studio photo of {name}"``;
            None takes the row's ``prompt`` column as it is.
        inputs: request fields rendered per row: templates, lists of them, or constants;
            ``"{previous}"`` is the previous step's output of the row, ``"{photo}"`` a column
            (a local path, an ``s3://`` URI or a URL).
        defaults: constant request fields (a rendered input or the row's own column wins).
        price_usd: USD per request, instead of the catalog's price (needed under a budget cap
            for a model the catalog has no price for, and for every node app: Krea publishes
            no price for an execution).
    """

    name: str
    model: str
    prompt: str | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    price_usd: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"step name {self.name!r} must be text")
        if self.name and (problem := dagster_name_problem(self.name, "step name")) is not None:
            raise ValueError(problem)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(
                f"step {self.name!r}: model must be a Krea model path, got {self.model!r}"
            )
        app = catalog.node_app_id(self.model)
        # A model is checked when a run starts, against the backend's live catalog (a model Krea
        # added after this release is only there); a misspelt one fails then, unpaid.
        if app is not None and (not app or "/" in app):
            raise ValueError(
                f"step {self.name!r}: {self.model!r} is not a node app; write "
                "'node-app/<version id>' with the version id of the app's page"
            )
        check_price(self.price_usd, f"step {self.name or self.model!r}: price_usd")
        for where, value in (("prompt", self.prompt), ("inputs", dict(self.inputs))):
            try:
                _template_columns(value)
            except TemplateError as error:
                raise ValueError(f"step {self.name or self.model!r}: {where}: {error}") from None
        self._check_previous()
        if ROW_KEY in self.inputs:
            raise ValueError(
                f"step {self.name or self.model!r}: inputs cannot set {ROW_KEY!r}: it is the "
                "row's identity from step to step, not a request field (give key_column=... "
                "to the node to choose it)"
            )
        if not isinstance(self.defaults, Mapping):
            raise ValueError(
                f"step {self.name or self.model!r}: defaults must be a mapping of request "
                f"fields, got {type(self.defaults).__name__}"
            )
        # The one number rule, at build time: a number no field takes (NaN, an integer of 400
        # digits) fails `dg check defs`, naming the field, before anything reads it.
        for path, problem in number_problems(dict(self.defaults)):
            raise ValueError(f"step {self.name or self.model!r}: defaults: {path}: {problem}")

    def _check_previous(self) -> None:
        """``{previous}`` is a file (the previous step's output): a whole input value only."""
        where = f"step {self.name or self.model!r}"
        if PREVIOUS in _template_columns(self.prompt):
            raise ValueError(
                f"{where}: the prompt names {{previous}}, the previous step's output file, which "
                "would put a file path in the prompt text; give it to an input that takes a "
                "file instead, e.g. inputs={'image_urls': ['{previous}']}"
            )
        for name, value in self.inputs.items():
            for leaf in string_leaves(value):
                if PREVIOUS in placeholders(leaf) and leaf != "{" + PREVIOUS + "}":
                    raise ValueError(
                        f"{where}: inputs[{name!r}] is {shorten(leaf, 80)!r}: {{previous}} is "
                        "the previous step's output file and must be a whole value "
                        "('{previous}'), not part of a text"
                    )

    @property
    def rendered_fields(self) -> set[str]:
        """The request fields the step's templates render (``prompt`` and its inputs)."""
        return set(self.inputs) | ({PROMPT_COLUMN} if self.prompt else set())

    @property
    def previous_inputs(self) -> list[str]:
        """The inputs whose value names ``{previous}``."""
        return [name for name, value in self.inputs.items() if PREVIOUS in _template_columns(value)]

    @property
    def is_node_app(self) -> bool:
        return catalog.node_app_id(self.model) is not None

    @property
    def version(self) -> str:
        """Changes whenever the step's templates or settings change."""
        return template_version(
            self.model, self.prompt, dict(self.inputs), dict(self.defaults), self.price_usd
        )

    @property
    def columns(self) -> set[str]:
        """The row columns the step's templates name (``previous`` excluded)."""
        return _template_columns([self.prompt, dict(self.inputs)]) - {PREVIOUS}

    @property
    def uses_previous(self) -> bool:
        return PREVIOUS in _template_columns([self.prompt, dict(self.inputs)])


def check_price(value: Any, name: str) -> float | None:
    """A USD amount: None, or a finite number 0 or more (``ValueError`` naming ``name``).

    Any real number counts (a NumPy scalar read from a table or a config is one); a bool or a
    text does not.
    """
    if value is None:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number of USD, 0 or more, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(
            f"{name} must be a finite number of USD, got an integer too large"
        ) from None
    if not (number >= 0) or number == float("inf"):  # NaN fails the first test
        raise ValueError(f"{name} must be a finite number of USD, 0 or more, got {value!r}")
    return number


def _template_columns(value: Any) -> set[str]:
    """The columns every template in ``value`` (a text, or texts nested in a request) names."""
    return {name for leaf in string_leaves(value) for name in placeholders(leaf)}


async def load_node_app(
    client: AsyncKreaClient, model: str, *, price_usd: float | None
) -> catalog.ModelSpec:
    """Read a node app's input schema (``GET /node-apps/{id}``) and make its spec known.

    From then on, in this process, ``model`` validates, prices and resolves references like a
    catalog model. Raises ``UnknownModelError`` when the token sees no such node app, or when
    Krea serves no input schema for it (its rows could not be checked).
    """
    version_id = catalog.node_app_id(model)
    if version_id is None:
        raise ValueError(f"{model!r} is not a node app ('node-app/<version id>')")
    try:
        app = await client.get_node_app(version_id)
    except NotFoundError:
        raise UnknownModelError(
            model,
            catalog.NODE_APP_KIND,
            (),
            reason=(
                f"GET /node-apps/{version_id} answered 404: no node app version with this id is "
                "visible to this token; copy the version id from the app's API page"
            ),
        ) from None
    spec = catalog.node_app_spec(version_id, app.input_schema, name=app.name, price_usd=price_usd)
    if not spec.fields:
        raise UnknownModelError(
            model,
            spec.kind,
            (),
            reason="Krea serves no input schema for this node app, so its rows cannot be checked",
        )
    return catalog.register_model(spec)


def cell_text(value: Any) -> str | None:
    """A batch or key cell as text: None when empty; a whole float as its integer (a column of
    integers with a gap is read as floats, and 7.0 is batch ``7``)."""
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    try:
        if bool(pd.isna(value)):
            return None
    except (TypeError, ValueError):
        pass  # a list or an array: not empty, its text is its value
    return str(value).strip() or None


def _rows_text(rows: Sequence[int]) -> str:
    shown = ", ".join(map(str, rows[:MAX_NAMED]))
    return shown + (f" and {len(rows) - MAX_NAMED} more" if len(rows) > MAX_NAMED else "")


def add_row_keys(table: pd.DataFrame, key_column: str | None) -> pd.DataFrame:
    """The table with a ``row_key``: the key column's value, or a hash of the whole row.

    A ``row_key`` column the table already has is the key (then no ``key_column`` may be
    given). A key the table gives is never empty and unique in a batch: the next step finds
    each row's output by it, so a repeated key would give one row another row's output.
    """
    frame = table.reset_index(drop=True).copy()
    if ROW_KEY in frame.columns and key_column not in (None, ROW_KEY):
        raise PromptValidationError(
            "",
            [
                PromptProblem(
                    None,
                    ROW_KEY,
                    "ambiguous",
                    f"the table has a {ROW_KEY!r} column and the node's key_column is "
                    f"{key_column!r}: a row has one key; drop the {ROW_KEY!r} column or the "
                    "key_column setting",
                )
            ],
        )
    given = ROW_KEY if ROW_KEY in frame.columns else key_column
    if given is None:
        frame[ROW_KEY] = [
            hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for row in frame.to_dict(orient="records")
        ]
        # Hashed keys repeat only for identical rows, which validation refuses as duplicates
        # (and says which line repeats which).
        return frame
    if given not in frame.columns:
        raise PromptValidationError(
            "",
            [
                PromptProblem(
                    None,
                    given,
                    "required",
                    f"the key column {given!r} is not in the table (columns: "
                    f"{shorten(', '.join(map(str, frame.columns)), 300)})",
                )
            ],
        )
    keys = [cell_text(value) for value in frame[given]]
    problems: list[PromptProblem] = []
    first_row: dict[str, int] = {}
    for number, key in enumerate(keys, start=1):
        if key is None:
            problems.append(
                PromptProblem(
                    number,
                    given,
                    "required",
                    "the row's key is empty: every row needs one (the next step finds the "
                    "row's output by it); fill it, or leave key_column unset to key rows by "
                    "their content",
                )
            )
        elif key in first_row:
            problems.append(
                PromptProblem(
                    number,
                    given,
                    "uniqueItems",
                    f"the key {shorten(key, 80)!r} repeats row {first_row[key]}: row keys must "
                    "be unique in a batch (the next step would give one row the other's output)",
                )
            )
        else:
            first_row[key] = number
    if problems:
        raise PromptValidationError("", problems)
    frame[ROW_KEY] = keys
    return frame


def _is_path(value: Any) -> bool:
    return isinstance(value, os.PathLike)


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def unstorable_problems(table: pd.DataFrame, columns: Sequence[str]) -> list[PromptProblem]:
    """A problem per carried column the manifest could not be stored with: its copy in the
    store is Parquet, which takes one type per column (not ``42`` beside ``"XL"``, nor
    arbitrary objects). Found here, before anything is paid, not when the outputs are."""
    problems = []
    for column in columns:
        if column not in table.columns:
            continue
        try:
            pa.array(table[column], from_pandas=True)
        except (pa.ArrowException, ArithmeticError, ValueError, TypeError) as error:
            problems.append(
                PromptProblem(
                    None,
                    column,
                    "type",
                    f"the column's values cannot be stored in the manifest (Parquet: "
                    f"{shorten(str(error), 200)}); give the column one type, e.g. "
                    f"table[{shorten(column, 40)!r}].astype(str)",
                )
            )
    return problems


def table_frame(table: Any, batch: str = "") -> pd.DataFrame:
    """An upstream table as the frame a node reads: its named index levels as columns (a batch
    or key column may live there), its column names unique text, a plain row index.

    Raises ``PromptValidationError`` for a table that is not a DataFrame, an index level also
    named as a column, or two columns of one name (a row would silently keep one value).
    """

    def refused(*problems: PromptProblem) -> PromptValidationError:
        return PromptValidationError(batch, list(problems), TABLE_ORIGIN)

    if not isinstance(table, pd.DataFrame):
        raise refused(
            PromptProblem(
                None,
                None,
                "type",
                f"the upstream table is a {type(table).__name__}, not a pandas DataFrame; "
                "return a DataFrame from the table asset",
            )
        )
    if isinstance(table.columns, pd.MultiIndex):
        raise refused(
            PromptProblem(
                None,
                None,
                "header",
                f"the table's columns have {table.columns.nlevels} levels; give it one level of "
                "column names (e.g. join the levels: table.columns = ['_'.join(c) for c in "
                "table.columns])",
            )
        )
    levels = [name for name in table.index.names if name is not None]
    both = [name for name in levels if name in table.columns]
    if both:
        raise refused(
            *(
                PromptProblem(
                    None,
                    str(name),
                    "ambiguous",
                    f"{shorten(str(name), 80)!r} is both an index level and a column of the "
                    "table: drop one (reset_index(drop=True) drops the index)",
                )
                for name in both
            )
        )
    try:
        frame = table.reset_index(level=levels) if levels else table
    except ValueError as error:  # two index levels of one name, ...
        raise refused(
            PromptProblem(None, None, "header", f"the table's index cannot be read: {error}")
        ) from None
    frame = frame.reset_index(drop=True)
    names = [str(name) for name in frame.columns]
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise refused(
            *(
                PromptProblem(
                    None,
                    name,
                    "header",
                    f"the table has {names.count(name)} columns named {shorten(name, 80)!r} "
                    f"(positions {', '.join(str(i) for i, n in enumerate(names, 1) if n == name)})"
                    ": a row would keep one of their values; rename or remove all but one",
                )
                for name in repeated
            )
        )
    if names != list(frame.columns):
        frame = frame.set_axis(names, axis=1)
    paths = [
        column
        for column in names
        if frame[column].dtype == object and frame[column].map(_is_path).any()
    ]
    if paths:  # pathlib.Path photos: their text, in requests and in the manifest alike
        frame = frame.assign(**{column: frame[column].map(_path_text) for column in paths})
    return frame


@dataclass(frozen=True)
class SourceRows:
    """The source rows of one batch: the frame (with ``row_key``), where each row came from."""

    frame: pd.DataFrame
    #: Where each row is in its file (``spring.csv line 7``), when the source is files.
    locations: tuple[str, ...] | None
    origin: str


@dataclass(frozen=True)
class StepFrame:
    """What a step's validation reads: the rendered frame, the columns it carries as data, and
    each row's key and (for a later step) why it is skipped, in the frame's order."""

    frame: pd.DataFrame
    carried: list[str]
    row_keys: list[str]
    skips: list[str | None]


def step_frame(
    step: KreaStep,
    rows: pd.DataFrame,
    *,
    first: bool,
    previous: pd.DataFrame | None,
    batch: str,
    origin: str,
    data_columns: Collection[str] = (),
    batch_column: str | None = None,
) -> StepFrame:
    """Render a step's rows from the source rows (with ``row_key``; see the module docstring).

    ``previous`` is the previous step's manifest: a row whose output there is not
    ``completed`` is skipped (the reason: that status), never sent. ``data_columns`` are the
    columns the node's other steps name: data for a first step, never its request fields.
    A template naming ``batch_column`` gets the batch's name. Raises ``PromptValidationError``
    for every template problem at once.
    """
    outputs: dict[str, str] = {}
    statuses: dict[str, str] = {}
    if previous is not None:
        for done in previous.to_dict(orient="records"):
            key = str(done[ROW_KEY])
            statuses[key] = str(done["status"])
            if done["status"] == ManifestStatus.COMPLETED and done.get("uri"):
                outputs[key] = str(done["uri"])
    rendered_fields = step.rendered_fields
    source_columns = [str(c) for c in rows.columns if c != ROW_KEY]
    named = step.columns
    batch_name = {batch_column: batch} if batch_column else {}
    missing = sorted(named - set(source_columns) - {ROW_KEY} - set(batch_name))
    if missing:
        known = shorten(", ".join(source_columns), 300) or "none"
        raise PromptValidationError(
            batch,
            [
                PromptProblem(
                    None,
                    column,
                    "template",
                    f"the step's templates name {{{column}}} but the table has no column "
                    f"{column!r} (its columns: {known}); add the column or fix the template",
                )
                for column in missing
            ],
            origin,
        )
    # A field the step renders, and a column of that name its templates do not read: two values
    # for one request field (a first step), or a data column and a field of one name (a later
    # step, whose prompt template replaces the table's prompt on purpose).
    clashes = sorted(
        (rendered_fields - (set() if first else {PROMPT_COLUMN})) & (set(source_columns) - named)
    )
    if clashes:
        raise PromptValidationError(
            batch,
            [
                PromptProblem(
                    None,
                    column,
                    "ambiguous",
                    f"the table has a column {column!r} and the step renders {column!r} from "
                    "its templates without reading that column: rename the column (it is then "
                    "carried as data), read it in the template ('{" + column + "}') or drop the "
                    "template",
                )
                for column in clashes
            ],
            origin,
        )
    if first:
        # Read like a prompt file: request-field columns are sent; the columns templates name
        # (this step's or a later one's) are data, and a rendered field is sent as rendered.
        # (A later step's column named like one the package writes is neither sent nor carried
        # here: the later step reads it from the table; this step's manifest has its own.)
        data = named | set(data_columns)
        kept = named | (set(data_columns) - RESERVED_COLUMNS)
        carried = sorted((kept & set(source_columns)) - rendered_fields)
        passthrough = [c for c in source_columns if c not in data]
    else:
        # A later step: the source's columns are data (its prompt too, unless no template).
        carried = [
            c
            for c in source_columns
            if (c == PROMPT_COLUMN and step.prompt)
            or (c != PROMPT_COLUMN and c not in rendered_fields)
        ]
        passthrough = [PROMPT_COLUMN] if PROMPT_COLUMN in source_columns and not step.prompt else []
    records: list[dict[str, Any]] = []
    keys: list[str] = []
    skips: list[str | None] = []
    problems: list[PromptProblem] = []
    for number, raw in enumerate(rows.to_dict(orient="records"), start=1):
        row = {str(name): value for name, value in raw.items()}
        key = str(row[ROW_KEY])
        record: dict[str, Any] = {c: row.get(c) for c in [*carried, *passthrough]}
        if previous is not None and key not in outputs:
            records.append(record)
            keys.append(key)
            skips.append(statuses.get(key, "missing"))
            continue
        context: dict[str, Any] = {**row, **batch_name, PREVIOUS: outputs.get(key)}
        try:
            if step.prompt:
                record[PROMPT_COLUMN] = render(step.prompt, context)
            for name, value in step.inputs.items():
                record[name] = render_value(value, context)
        except TemplateError as error:
            problems.append(PromptProblem(number, error.column or None, "template", error.reason))
            continue
        records.append(record)
        keys.append(key)
        skips.append(None)
    if problems:
        raise PromptValidationError(batch, problems, origin)
    columns = [*carried, *passthrough, *sorted(rendered_fields)]
    frame = pd.DataFrame.from_records(records, columns=list(dict.fromkeys(columns)))
    return StepFrame(frame, carried, keys, skips)


def input_problems(
    step: KreaStep, models: catalog.ModelCatalog | None = None
) -> list[PromptProblem]:
    """A problem per input of ``step`` its model cannot take: a field the model does not have
    (it would otherwise be carried as data and silently left out of the request), or
    ``{previous}`` (a file) in a field that takes no file (its path would be sent as text).
    Inputs named like a column the package writes are left to that rule (``reserved``)."""
    if not step.inputs:
        return []
    spec = (models or bundled_catalog()).get(step.model)
    if not spec.validated:
        return []  # a model no catalog knows: its fields are unknown
    problems = []
    for name in sorted(set(step.inputs) - set(spec.fields) - RESERVED_COLUMNS - {VARIANT_COLUMN}):
        close = difflib.get_close_matches(name, sorted(spec.fields), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.append(
            PromptProblem(
                None,
                name,
                "additionalProperties",
                f"the step's inputs set {name!r}, which is not a request field of {step.model}; "
                f"{hint}(its fields: {shorten(', '.join(sorted(spec.fields)), 300)})",
            )
        )
    takes_files = sorted({path.split(".")[0].split("[")[0] for path in media_paths(spec)})
    problems.extend(
        PromptProblem(
            None,
            name,
            "previous",
            f"inputs[{name!r}] is {{previous}}, the previous step's output file, but {name!r} "
            f"takes no file in {step.model} (its file inputs: {', '.join(takes_files) or 'none'})",
        )
        for name in step.previous_inputs
        if name in spec.fields and name not in takes_files
    )
    return problems


@dataclass
class KreaNode:
    """A node of the engine: its source of rows and the pipeline of each step.

    ``source`` is a prompt-file folder (``PromptSource``), or None when the rows come from a
    table given to each call (an upstream asset's DataFrame).
    """

    prefix: str
    steps: tuple[KreaStep, ...]
    pipelines: tuple[KreaImagePipeline, ...]
    source: PromptSource | None = None
    key_column: str | None = None
    batch_column: str = BATCH_COLUMN
    #: Where relative reference paths (``photos/a1.png``) are read from.
    base_dir: Path | None = None
    carry_columns: Sequence[str] = ()
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.steps or len(self.steps) != len(self.pipelines):
            raise ValueError("a node needs at least one step, and one pipeline per step")
        names = [step.name for step in self.steps]
        if len(self.steps) > 1 and not all(names):
            raise ValueError("every step of a node with several steps needs a name")
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique, got {names}")
        if self.steps[0].uses_previous:
            raise ValueError(
                f"step {self.steps[0].name or self.steps[0].model!r} is the first step, so it "
                "has no {previous} output to use; name a column of the table instead"
            )

    @property
    def files(self) -> PromptSource:
        """The prompt files of a node built over a folder."""
        if self.source is None:
            raise ValueError(f"{self.prefix} has no prompt files: its rows come from a table")
        return self.source

    def index(self, step: str) -> int:
        for number, candidate in enumerate(self.steps):
            if candidate.name == step:
                return number
        raise KeyError(f"no step {step!r}; steps: {', '.join(s.name for s in self.steps)}")

    def batch_rows(
        self, batch: str, table: pd.DataFrame | None = None, *, partitioned: bool = False
    ) -> SourceRows:
        """The source rows of ``batch`` with their ``row_key``: read from the prompt files, or
        selected from ``table`` (``table_batch``)."""
        if table is None:
            rows = self.files.read_batch_rows(batch)
            frame, locations = rows.frame, rows.locations
            origin = ", ".join(dict.fromkeys(rows.files))
        else:
            frame, locations = self.table_batch(table, batch, partitioned=partitioned), None
            origin = TABLE_ORIGIN
        return SourceRows(add_row_keys(frame, self.key_column), locations, origin)

    def table_batch(self, table: Any, batch: str, *, partitioned: bool) -> pd.DataFrame:
        """The rows of ``batch`` in an upstream table (``table_frame``): those whose batch
        column (or index level of that name) says ``batch``; the whole table when it is
        partitioned like the node (it then holds this batch only) and has no batch column.

        The batch's name follows the prompt files' rule (it names folders of the store), and
        every row must name its batch: a row without one would never be generated.
        """
        column = self.batch_column

        def refused(problem: str, rule: str = "required") -> PromptValidationError:
            return PromptValidationError(
                batch, [PromptProblem(None, column, rule, problem)], TABLE_ORIGIN
            )

        if (problem := batch_name_problem(batch)) is not None:
            raise refused(
                f"{problem}; rename the batch in the table and add that partition instead",
                "batchName",
            )
        frame = table_frame(table, batch)
        if column not in frame.columns:
            if partitioned:
                return frame
            raise refused(
                f"the table is not partitioned like the node and has no {column!r} column (nor "
                "an index level of that name), so no row says which batch it belongs to: add "
                "that column, name another with batch_column=..., or partition the table asset "
                "with the node's partitions"
            )
        names = [cell_text(value) for value in frame[column]]
        unnamed = [number for number, name in enumerate(names, start=1) if name is None]
        if unnamed:
            raise refused(
                f"{len(unnamed)} row(s) of the table have no batch in {column!r} (table rows "
                f"{_rows_text(unnamed)}, counted from 1): such a row would never be generated; "
                "fill its batch, or leave the row out of the table asset"
            )
        selected = frame[[name == batch for name in names]]
        if selected.empty:
            found = sorted(set(filter(None, names)))
            shown = shorten(", ".join(found[:MAX_NAMED]), 300) or "none"
            raise refused(
                f"no row of the table has {column}={batch!r} (its batches: {shown}"
                f"{', ...' if len(found) > MAX_NAMED else ''}); add rows for {batch!r}, or "
                "register only the batches the table has",
                "minItems",
            )
        return selected.drop(columns=[column]).reset_index(drop=True)

    def references(self) -> CheckedReferences:
        """A checker of the files a batch's requests name (local, ``s3://``), relative ones read
        from ``base_dir`` (else the prompt folder)."""
        base = self.base_dir
        if base is None and self.source is not None and "://" not in self.source.directory:
            base = Path(self.source.directory)
        return CheckedReferences(base_dir=base, storage_options=self.storage_options)

    def prepare(
        self,
        step_index: int,
        batch: str,
        *,
        table: pd.DataFrame | None = None,
        partitioned: bool = False,
        previous: pd.DataFrame | None = None,
        models: catalog.ModelCatalog | None = None,
    ) -> PreparedBatch:
        """Render and validate one step's rows of a batch against ``models`` (the step's
        catalog: default the bundled one): every row, every reference (read and hashed locally,
        nothing uploaded), the price and the budget. Nothing is sent.

        Raises ``PromptValidationError`` (every problem at once) or ``PromptSourceError``.
        """
        step, pipeline = self.steps[step_index], self.pipelines[step_index]
        if step_index and previous is None:
            raise ValueError(f"step {step.name!r} needs the previous step's manifest")
        step_label = f"step {step.name}" if step.name else ""

        def where(origin: str) -> str:
            return ", ".join(part for part in (step_label, origin) if part)

        try:
            source = self.batch_rows(batch, table, partitioned=partitioned)
        except PromptValidationError as error:
            origin = error.origin or (TABLE_ORIGIN if table is not None else "")
            raise PromptValidationError(batch, error.problems, where(origin)) from None
        try:
            rendered = step_frame(
                step,
                source.frame,
                first=step_index == 0,
                previous=previous if step_index else None,
                batch=batch,
                origin=source.origin,
                data_columns=set().union(*(other.columns for other in self.steps[1:])),
                batch_column=self.batch_column,
            )
        except PromptValidationError as error:
            raise PromptValidationError(batch, error.problems, where(source.origin)) from None
        if problems := input_problems(step, models):
            raise PromptValidationError(batch, problems, where(source.origin))
        extra = [*rendered.carried, *(self.carry_columns if step_index == 0 else ())]
        if self.key_column is not None:
            extra.append(self.key_column)
        # What a template renders is sent: a carry_columns entry of that name keeps no data.
        extra = [column for column in extra if column not in step.rendered_fields]
        prepared = pipeline.validate(
            rendered.frame,
            batch=batch,
            carry_columns=list(dict.fromkeys(extra)),
            origin=where(source.origin),
            locations=source.locations,
            references=self.references(),
            row_keys=rendered.row_keys,
            skips=rendered.skips,
            models=models,
        )
        if problems := unstorable_problems(prepared.table, prepared.carried_columns):
            raise PromptValidationError(batch, problems, where(source.origin))
        return prepared
