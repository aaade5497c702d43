"""Workflow nodes: one Krea step over the rows of a table, chained like assets.

A step takes a table (an upstream asset's DataFrame, or the previous step's manifest), renders
each row's request from templates (``krea_dagster.engine.template``), resolves every image
reference (local path, ``s3://``, URL, or the previous step's image of the row) into what Krea
accepts (uploading each distinct file once, by content hash, recorded in the ledger), validates
the whole batch against the model's schema, and then runs the same submit / collect / manifest
steps as a prompt-file batch, under a ledger scope of its own (``<prefix>.<step>``), so every
node keeps the pay-once promise.

A step may also run a Krea node app (a saved workflow: ``model="node-app/<version id>"``): its
inputs are rendered the same way and validated against the input schema Krea serves for it
(``load_node_app``, when the run starts), and each row's execution creates several jobs, all
collected and verified (see ``krea_dagster.engine.ledger`` on output rows).

Rows are identified by a key column (``row_key``) carried from step to step. A row whose
previous step has no verified image is a recorded skip (status ``skipped``, error code
``upstream_failed``), never a paid call. A changed upstream row changes the request it renders
(another prompt, another reference image), so only the rows downstream of it are paid for again.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from krea_dagster.api import AsyncKreaClient, NotFoundError, UnknownModelError, catalog
from krea_dagster.engine.errors import ErrorCode
from krea_dagster.engine.manifest import MANIFEST_COLUMNS, OUTPUTS_COLUMN, ManifestStatus
from krea_dagster.engine.names import dagster_name_problem
from krea_dagster.engine.prompts import PROMPT_COLUMN, PromptProblem, PromptValidationError
from krea_dagster.engine.template import TemplateError, render, render_value, template_version

__all__ = [
    "PREVIOUS",
    "ROW_KEY",
    "STEP_COLUMNS",
    "KreaStep",
    "StepRows",
    "add_row_keys",
    "load_node_app",
    "skipped_manifest_rows",
    "step_rows",
]

#: The placeholder that names the previous step's verified image of the row.
PREVIOUS = "previous"
#: The column that identifies a row of the workflow's table from step to step.
ROW_KEY = "row_key"
#: What a step's manifest adds to a batch manifest's columns: a table column of one of these
#: names is not carried (it would be overwritten).
STEP_COLUMNS = (OUTPUTS_COLUMN, "step", "step_version")


@dataclass(frozen=True)
class KreaStep:
    """One Krea step of a workflow: a model, and how each row becomes its request.

    Args:
        name: the step's name (its asset key is ``[prefix, name]``).
        model: the model path after ``/generate/image/`` (``"openai/gpt-image-2"``), a
            catalog key for other kinds (``"enhance/topaz/standard-enhance"``,
            ``"video/kling/kling-2.6"``), or ``"node-app/<version id>"`` for a Krea node app.
        prompt: the prompt template over the row's columns, e.g. ``"Studio photo of {name}"``;
            None takes the row's ``prompt`` column as it is.
        inputs: request fields rendered per row: templates, lists of them, or constants;
            ``"{previous}"`` is the previous step's image of the row, ``"{photo}"`` a column
            (a local path, an ``s3://`` URI or a URL).
        defaults: constant request fields (a rendered input wins).
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
        if (problem := dagster_name_problem(self.name, "step name")) is not None:
            raise ValueError(problem)
        app = catalog.node_app_id(self.model)
        if app is None:
            catalog.get_model(self.model)  # a misspelt model fails when the workflow is built
        elif not app or "/" in app:
            raise ValueError(
                f"step {self.name!r}: {self.model!r} is not a node app; write "
                "'node-app/<version id>' with the version id of the app's page"
            )

    @property
    def is_node_app(self) -> bool:
        return catalog.node_app_id(self.model) is not None

    @property
    def spec(self) -> catalog.ModelSpec:
        return catalog.get_model(self.model)

    @property
    def version(self) -> str:
        """Changes whenever the step's templates or settings change."""
        return template_version(
            self.model, self.prompt, dict(self.inputs), dict(self.defaults), self.price_usd
        )

    @property
    def uses_previous(self) -> bool:
        return PREVIOUS in json.dumps([self.prompt, dict(self.inputs)], default=str)


@dataclass
class StepRows:
    """A step's rendered rows: the frame to validate, and the rows skipped before it."""

    frame: pd.DataFrame
    skipped: pd.DataFrame
    carried: list[str]


async def load_node_app(
    client: AsyncKreaClient, model: str, *, price_usd: float | None
) -> catalog.ModelSpec:
    """Read a node app's input schema (``GET /node-apps/{id}``) and make its spec known.

    From then on, in this process, ``model`` validates, prices and resolves references like a
    catalog model. Raises ``UnknownModelError`` when the token sees no such node app.
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
    return catalog.register_model(spec)


def add_row_keys(table: pd.DataFrame, key_column: str | None) -> pd.DataFrame:
    """The table with a ``row_key``: the key column's value, or a hash of the whole row."""
    frame = table.reset_index(drop=True).copy()
    if ROW_KEY in frame.columns:
        return frame
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
            hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for row in frame.to_dict(orient="records")
        ]
    duplicated = frame[frame[ROW_KEY].duplicated()][ROW_KEY].tolist()
    if duplicated:
        raise PromptValidationError(
            "",
            [
                PromptProblem(
                    None,
                    key_column or ROW_KEY,
                    "uniqueItems",
                    f"row keys must be unique; repeated: {', '.join(map(str, duplicated[:10]))}",
                )
            ],
        )
    return frame


def step_rows(
    step: KreaStep,
    table: pd.DataFrame,
    *,
    batch: str,
    previous: pd.DataFrame | None,
    table_columns: Sequence[str],
) -> StepRows:
    """Render every row of ``table`` for ``step``; raise ``PromptValidationError`` on any problem.

    ``previous`` is the previous step's manifest (None for the first step): a row whose image
    there is not ``completed`` is skipped. ``table_columns`` are the workflow table's own
    columns, carried into every step's manifest.
    """
    images: dict[str, str] = {}
    statuses: dict[str, str] = {}
    if previous is not None:
        for record in previous.to_dict(orient="records"):
            statuses[str(record[ROW_KEY])] = str(record["status"])
            if record["status"] == ManifestStatus.COMPLETED and record.get("uri"):
                images[str(record[ROW_KEY])] = str(record["uri"])
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    problems: list[PromptProblem] = []
    carried = [c for c in table_columns if c != PROMPT_COLUMN and c not in step.spec.fields]
    for number, raw in enumerate(table.to_dict(orient="records"), start=1):
        row = {str(name): value for name, value in raw.items()}
        key = str(row[ROW_KEY])
        if previous is not None and key not in images:
            why = statuses.get(key, "missing")
            skipped.append({**{c: row.get(c) for c in carried}, "status": why, "row": number})
            continue
        context: dict[str, Any] = {**row, PREVIOUS: images.get(key)}
        try:
            prompt = render(step.prompt, context) if step.prompt else context.get(PROMPT_COLUMN)
            request = {name: render_value(value, context) for name, value in step.inputs.items()}
        except TemplateError as error:
            problems.append(PromptProblem(number, error.column or None, "template", error.reason))
            continue
        rendered: dict[str, Any] = {c: row.get(c) for c in carried}
        if prompt is not None:
            rendered[PROMPT_COLUMN] = prompt
        rendered.update(request)
        records.append(rendered)
    if problems:
        raise PromptValidationError(batch, problems, f"step {step.name}")
    frame = pd.DataFrame.from_records(records)
    if not frame.empty and PROMPT_COLUMN not in frame.columns:
        frame[PROMPT_COLUMN] = ""  # models without a prompt (enhance): validated as not set
    return StepRows(frame=frame, skipped=pd.DataFrame.from_records(skipped), carried=carried)


def skipped_manifest_rows(
    skipped: pd.DataFrame, *, batch: str, generation: int, carried: Sequence[str]
) -> pd.DataFrame:
    """Manifest rows for the rows a step did not send: skipped because their upstream failed."""
    if skipped.empty:
        return pd.DataFrame(columns=[*MANIFEST_COLUMNS, *carried])
    frame = pd.DataFrame(
        {
            "batch": batch,
            "generation": generation,
            "status": ManifestStatus.SKIPPED,
            "error_code": ErrorCode.UPSTREAM_FAILED.value,
            "error_message": [
                f"not sent: the previous step's image of this row is {status}"
                for status in skipped["status"]
            ],
            "cost_usd": 0.0,
            "row": skipped["row"].to_numpy(),
            "prompt": "",
            "prompt_key": "",
        }
    )
    for column in carried:
        frame[column] = skipped[column].to_numpy() if column in skipped else None
    for column in MANIFEST_COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame[[*MANIFEST_COLUMNS, *carried]]
