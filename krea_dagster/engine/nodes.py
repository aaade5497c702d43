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
- a **later** step sees the source's columns as data only (a ``width`` meant for the first
  step is never sent again), the row's ``prompt`` when it has no prompt template, and
  ``{previous}``: the previous step's verified output of the row (the store's URI, uploaded
  once by content hash like any local file);
- ``defaults`` are constant request fields (a rendered input or a row's own column wins).

Rows are identified by ``row_key`` (the key column's value, else a hash of the row) from step
to step. A row whose previous step has no verified output is kept in the step's prompts table
as a recorded skip (``skip`` names why), never a paid call; a changed upstream row renders
another request (another prompt, another reference), so only the rows downstream of it are paid
for again.

A step may run a Krea node app (``model="node-app/<version id>"``): its inputs are validated
against the schema Krea serves for the app (``load_node_app``), and each row's execution makes
several jobs, all collected and verified.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from krea_dagster.api import AsyncKreaClient, NotFoundError, UnknownModelError, catalog
from krea_dagster.engine.manifest import ManifestStatus
from krea_dagster.engine.names import dagster_name_problem
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.prompts import (
    PROMPT_COLUMN,
    ROW_KEY,
    PreparedBatch,
    PromptProblem,
    PromptValidationError,
)
from krea_dagster.engine.references import CheckedReferences
from krea_dagster.engine.source import BATCH_COLUMN, PromptSource
from krea_dagster.engine.table_rules import number_problems
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
    "check_price",
    "load_node_app",
    "step_frame",
]

#: The placeholder that names the previous step's verified output of the row.
PREVIOUS = "previous"


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
        if not isinstance(self.defaults, Mapping):
            raise ValueError(
                f"step {self.name or self.model!r}: defaults must be a mapping of request "
                f"fields, got {type(self.defaults).__name__}"
            )
        # The one number rule, at build time: a number no field takes (NaN, an integer of 400
        # digits) fails `dg check defs`, naming the field, before anything reads it.
        for path, problem in number_problems(dict(self.defaults)):
            raise ValueError(f"step {self.name or self.model!r}: defaults: {path}: {problem}")

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
    """A USD amount: None, or a finite number 0 or more (``ValueError`` naming ``name``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
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
    if isinstance(value, str):
        return set(placeholders(value))
    if isinstance(value, Mapping):
        return set().union(*(_template_columns(item) for item in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(_template_columns(item) for item in value))
    return set()


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


def add_row_keys(table: pd.DataFrame, key_column: str | None) -> pd.DataFrame:
    """The table with a ``row_key``: the key column's value, or a hash of the whole row.

    A ``row_key`` column the table already has is the key. A key column's values must be
    unique in a batch.
    """
    frame = table.reset_index(drop=True).copy()
    if ROW_KEY not in frame.columns:
        if key_column is not None:
            if key_column not in frame.columns:
                raise PromptValidationError(
                    "",
                    [
                        PromptProblem(
                            None,
                            key_column,
                            "required",
                            f"the key column {key_column!r} is not in the table (columns: "
                            f"{', '.join(map(str, frame.columns))[:300]})",
                        )
                    ],
                )
            frame[ROW_KEY] = frame[key_column].astype(str)
        else:
            frame[ROW_KEY] = [
                hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[
                    :16
                ]
                for row in frame.to_dict(orient="records")
            ]
    frame[ROW_KEY] = frame[ROW_KEY].astype(str)
    # Hashed keys repeat only for identical rows, which validation refuses as duplicates (and
    # says which line repeats which); a key column's repeats are this rule's to name.
    duplicated = frame[frame[ROW_KEY].duplicated()][ROW_KEY].tolist() if key_column else []
    if duplicated:
        raise PromptValidationError(
            "",
            [
                PromptProblem(
                    None,
                    key_column or ROW_KEY,
                    "uniqueItems",
                    f"row keys must be unique in a batch; repeated: "
                    f"{', '.join(map(str, duplicated[:10]))[:300]}",
                )
            ],
        )
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
) -> StepFrame:
    """Render a step's rows from the source rows (with ``row_key``; see the module docstring).

    ``previous`` is the previous step's manifest: a row whose output there is not
    ``completed`` is skipped (the reason: that status), never sent. Raises
    ``PromptValidationError`` for every template problem at once.
    """
    outputs: dict[str, str] = {}
    statuses: dict[str, str] = {}
    if previous is not None:
        for done in previous.to_dict(orient="records"):
            key = str(done[ROW_KEY])
            statuses[key] = str(done["status"])
            if done["status"] == ManifestStatus.COMPLETED and done.get("uri"):
                outputs[key] = str(done["uri"])
    rendered_fields = set(step.inputs) | ({PROMPT_COLUMN} if step.prompt else set())
    source_columns = [str(c) for c in rows.columns if c != ROW_KEY]
    named = step.columns
    if first:
        # Read like a prompt file: request-field columns are sent, templates' columns are data.
        clashes = sorted(rendered_fields & (set(source_columns) - named))
        if clashes:
            raise PromptValidationError(
                batch,
                [
                    PromptProblem(
                        None,
                        column,
                        "ambiguous",
                        f"the table has a column {column!r} and the step renders {column!r} from "
                        "its templates: rename the column (it is then carried as data) or "
                        "drop the template",
                    )
                    for column in clashes
                ],
                origin,
            )
        carried = sorted(named & set(source_columns))
        passthrough = [c for c in source_columns if c not in named]
    else:
        # A later step: the source's columns are data (its prompt too, unless no template).
        carried = [c for c in source_columns if c != PROMPT_COLUMN or step.prompt]
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
        context: dict[str, Any] = {**row, PREVIOUS: outputs.get(key)}
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
            origin = "the table"
        return SourceRows(add_row_keys(frame, self.key_column), locations, origin)

    def table_batch(self, table: Any, batch: str, *, partitioned: bool) -> pd.DataFrame:
        """The rows of ``batch`` in an upstream table: those whose batch column (or index level
        of that name) says ``batch``; the whole table when it is partitioned like the node (it
        then holds this batch only) and has no batch column."""
        if not isinstance(table, pd.DataFrame):
            raise PromptValidationError(
                batch,
                [
                    PromptProblem(
                        None,
                        None,
                        "type",
                        f"the upstream table is a {type(table).__name__}, not a pandas "
                        "DataFrame; return a DataFrame from the table asset",
                    )
                ],
            )
        frame = table
        if self.batch_column in [name for name in frame.index.names if name is not None]:
            frame = frame.reset_index(level=self.batch_column)
        if self.batch_column not in frame.columns:
            if partitioned:
                return frame.reset_index(drop=True)
            raise PromptValidationError(
                batch,
                [
                    PromptProblem(
                        None,
                        self.batch_column,
                        "required",
                        f"the table is not partitioned like the node and has no "
                        f"{self.batch_column!r} column (nor an index level of that name), so "
                        "no row says which batch it belongs to: add that column, name another "
                        "with batch_column=..., or partition the table asset with the node's "
                        "partitions",
                    )
                ],
                "the table",
            )
        selected = frame[frame[self.batch_column].astype(str).str.strip() == batch]
        return selected.drop(columns=[self.batch_column]).reset_index(drop=True)

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
        try:
            source = self.batch_rows(batch, table, partitioned=partitioned)
        except PromptValidationError as error:
            raise PromptValidationError(batch, error.problems, error.origin) from None
        rendered = step_frame(
            step,
            source.frame,
            first=step_index == 0,
            previous=previous if step_index else None,
            batch=batch,
            origin=source.origin,
        )
        extra = [*rendered.carried, *(self.carry_columns if step_index == 0 else ())]
        if self.key_column is not None:
            extra.append(self.key_column)
        return pipeline.validate(
            rendered.frame,
            batch=batch,
            carry_columns=list(dict.fromkeys(extra)),
            origin=f"step {step.name}, {source.origin}" if step.name else source.origin,
            locations=source.locations,
            references=self.references(),
            row_keys=rendered.row_keys,
            skips=rendered.skips,
            models=models,
        )
