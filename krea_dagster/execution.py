"""The asset bodies of a step: one engine verb each, and one failure policy for every entry point.

Every step of every node (a prompt-file instance, a workflow step, a YAML component) runs the
same three bodies, whatever built it:

- ``run_prompts``: render and validate the batch's rows (``KreaNode.prepare``): every row,
  every reference read and hashed locally, the price and the budget; nothing is uploaded or
  sent;
- ``run_jobs``: submit what is missing (``KreaImagePipeline.submit``): the budget on what will
  be sent, then the referenced files uploaded once, then each POST on an account submit lane;
- ``run_images``: collect (poll inline what is still rendering, store and verify every output)
  and write the manifest, the per-batch checks and the step's metadata; above
  ``max_failed_fraction`` the step fails, so the run and the partition show it.

``raise_failure`` is the one place engine errors become Dagster's: bad input, an exceeded
budget or an unknown model is a ``Failure`` that no retry can fix; a transient stop (Krea rate
limiting or unreachable after it answered, other workers' lanes) is ``RetryRequested``, so a
retry policy resumes where the run stopped. A terminated run cancels the Krea jobs it submitted
(``cancel_on_termination``).
"""

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import dagster as dg
import pandas as pd

from krea_dagster.api import KreaError, UnknownModelError
from krea_dagster.checks import BatchOutcome, check_fraction, check_results
from krea_dagster.engine.errors import BatchStoppedError, BudgetExceededError, LeaseUnavailableError
from krea_dagster.engine.nodes import KreaNode, KreaStep, load_node_app
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.prompts import PROMPTS_TABLE_COLUMNS, PromptValidationError
from krea_dagster.engine.references import ImageReferenceError
from krea_dagster.engine.run import run_coroutine
from krea_dagster.engine.source import PromptSourceError, skipped_summary
from krea_dagster.metadata import (
    images_metadata,
    jobs_metadata,
    problems_table,
    prompts_metadata,
)
from krea_dagster.resource import KreaResource

__all__ = [
    "REGENERATE_TAG",
    "REGENERATION_ID_TAG",
    "KreaImagesConfig",
    "KreaJobsConfig",
    "KreaResourceRef",
    "StepRuntime",
    "raise_failure",
    "run_images",
    "run_jobs",
    "run_prompts",
]

REGENERATE_TAG = "krea/regenerate"
#: Names one request to regenerate; retries and re-executions of its run carry it.
REGENERATION_ID_TAG = "krea/regeneration_id"
#: A transient stop is retried by Dagster this many times, this far apart.
TRANSIENT_RETRIES = 3
TRANSIENT_RETRY_SECONDS = 60


class KreaJobsConfig(dg.Config):
    """Run configuration of a step's jobs asset."""

    regenerate: bool = False
    """Start a new generation of the batch: every prompt is submitted again (with a new seed
    when the request has none). Same as the run tag ``krea/regenerate=true``."""


class KreaImagesConfig(dg.Config):
    """Run configuration of a step's images (outputs) asset."""

    max_failed_fraction: float | None = None
    """Override the node's ``max_failed_fraction`` for this run, e.g. ``1.0`` to accept a
    batch whose failures exceeded it (re-running pays nothing: it stores what Krea already made
    and writes the manifest)."""


@dataclass(frozen=True)
class KreaResourceRef:
    """Where the assets and sensors of a node get their ``KreaResource``: a resource key, or
    an embedded resource (what the YAML component does: no key, no collision)."""

    key: str
    embedded: KreaResource | None = None

    @property
    def required_keys(self) -> set[str]:
        return set() if self.embedded is not None else {self.key}

    def get(self, context: Any) -> KreaResource:
        if self.embedded is not None:
            return self.embedded
        resource: KreaResource = getattr(context.resources, self.key)
        return resource


@dataclass(frozen=True)
class StepRuntime:
    """What the asset bodies of one step need: its node, its place, its settings."""

    node: KreaNode
    index: int
    krea: KreaResourceRef
    max_failed_fraction: float
    store_url: str | None

    @property
    def step(self) -> KreaStep:
        return self.node.steps[self.index]

    @property
    def pipeline(self) -> KreaImagePipeline:
        return self.node.pipelines[self.index]

    @property
    def label(self) -> str:
        """How messages name the step: ``step edit`` (empty for a prompt-file instance)."""
        return f"step {self.step.name}: " if self.step.name else ""


# -- failure policy -----------------------------------------------------------------------------


def raise_failure(error: BaseException, *, what: str) -> NoReturn:
    """Raise the Dagster outcome of an engine error (see the module docstring)."""
    if isinstance(error, PromptValidationError):
        raise dg.Failure(
            description=str(error),
            metadata={"problems": problems_table(error)},
            allow_retries=False,
        ) from None
    if isinstance(
        error,
        PromptSourceError | ImageReferenceError | BudgetExceededError | UnknownModelError,
    ):
        raise dg.Failure(description=f"{what}: {error}", allow_retries=False) from None
    if isinstance(error, BatchStoppedError | LeaseUnavailableError) and error.transient:
        raise dg.RetryRequested(
            max_retries=TRANSIENT_RETRIES, seconds_to_wait=TRANSIENT_RETRY_SECONDS
        ) from error
    if isinstance(error, BatchStoppedError | LeaseUnavailableError):
        raise dg.Failure(
            description=(
                f"{what} stopped: {error}. Everything already submitted stays recorded; re-run "
                "once fixed and only the missing prompts are submitted."
            ),
            allow_retries=False,
        ) from None
    raise error


def _interruptible(
    runtime: StepRuntime, context: dg.AssetExecutionContext, work: Callable[[], Any]
) -> Any:
    """Run ``work``; if the run is terminated meanwhile, cancel the jobs this run submitted."""
    krea = runtime.krea.get(context)
    try:
        return work()
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
        if krea.cancel_on_termination:
            cancelled = runtime.pipeline.cancel_run_jobs(
                krea, batch=context.partition_key, run_id=context.run.run_id, log=context.log
            )
            context.log.warning(f"run terminated: cancelled {len(cancelled)} pending Krea job(s)")
        raise


def ensure_model(runtime: StepRuntime, krea: KreaResource) -> None:
    """A node app's input schema, read from Krea when a step's asset starts (its spec then
    validates, prices and times the step like a catalog model's)."""
    step = runtime.step
    if not step.is_node_app:
        return

    async def load() -> None:
        async with krea.async_client() as client:
            await load_node_app(client, step.model, price_usd=step.price_usd)

    run_coroutine(load())


# -- prompts ------------------------------------------------------------------------------------


def run_prompts(
    context: dg.AssetExecutionContext,
    runtime: StepRuntime,
    *,
    table: pd.DataFrame | None,
    table_partitioned: bool,
    previous: pd.DataFrame | None,
) -> dg.Output[pd.DataFrame]:
    """Render and validate the batch's rows of the step; nothing is uploaded or sent."""
    batch = context.partition_key
    node = runtime.node
    skipped_files = []
    if runtime.index == 0 and node.source is not None and table is None:
        skipped_files = node.files.skipped()
        if skipped_files:  # one line, whatever the number of files
            context.log.warning(f"prompt source: {skipped_summary(skipped_files)}")
    krea = runtime.krea.get(context)
    # Which catalog validates the batch: the backend's live one (cached), else the bundled.
    models = runtime.pipeline.model_catalog(krea)
    if models.origin.fallback:
        context.log.warning(f"model catalog: {models.origin.fallback}")
    try:
        ensure_model(runtime, krea)
        prepared = node.prepare(
            runtime.index,
            batch,
            table=table,
            partitioned=table_partitioned,
            previous=previous,
            models=models,
        )
    except (
        PromptValidationError,
        PromptSourceError,
        ImageReferenceError,
        UnknownModelError,
    ) as error:
        raise_failure(error, what=f"{runtime.label}batch {batch!r}")
    except KreaError as error:  # reading a node app's schema failed
        raise dg.RetryRequested(
            max_retries=TRANSIENT_RETRIES, seconds_to_wait=TRANSIENT_RETRY_SECONDS
        ) from error
    metadata = prompts_metadata(runtime.pipeline.model, prepared, skipped_files, models.origin)
    context.log.info(f"{batch}: {runtime.label}{metadata['krea/summary']}")
    if prepared.price_warning:
        context.log.warning(f"{batch}: {runtime.label}{prepared.price_warning}")
    # Same table, same version: re-validating an unchanged batch leaves jobs and outputs in
    # sync (a random version per run would mark them "Unsynced").
    return dg.Output(prepared.table, metadata=metadata, data_version=_table_version(prepared.table))


def _table_version(table: pd.DataFrame) -> dg.DataVersion:
    return dg.DataVersion(hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()[:24])


# -- jobs ---------------------------------------------------------------------------------------


def regeneration_id(context: dg.AssetExecutionContext, config: KreaJobsConfig) -> str | None:
    """The id of the regeneration this run asks for, None when it asks for none.

    A schedule tick or a launch mints it (the ``krea/regeneration_id`` tag); without one, the
    run's root run id stands in. Run retries and re-executions copy the tags and share the root
    run id, so a retried regeneration finds the generation its first run opened.
    """
    tags = context.run.tags
    wanted = config.regenerate or tags.get(REGENERATE_TAG, "").lower() in ("1", "true", "yes")
    if not wanted:
        return None
    return tags.get(REGENERATION_ID_TAG) or context.run.root_run_id or context.run.run_id


def run_jobs(
    context: dg.AssetExecutionContext,
    runtime: StepRuntime,
    config: KreaJobsConfig,
    prompts: pd.DataFrame,
) -> dg.MaterializeResult:
    """Submit the batch's missing prompts (uploads first, only for what is sent now)."""
    krea = runtime.krea.get(context)
    batch = context.partition_key
    pipeline = runtime.pipeline
    from krea_dagster.engine.continuity import forgotten_images_warning

    forgotten = forgotten_images_warning(
        pipeline.ledger, pipeline.store, pipeline.scope, pipeline.prefix
    )
    if forgotten:
        context.log.warning(forgotten)
    what = f"{runtime.label}batch {batch!r}"
    try:
        ensure_model(runtime, krea)
        summary = _interruptible(
            runtime,
            context,
            lambda: run_coroutine(
                pipeline.submit(
                    krea,
                    prompts,
                    batch=batch,
                    regeneration_id=regeneration_id(context, config),
                    run_id=context.run.run_id,
                    log=context.log,
                )
            ),
        )
    except (BudgetExceededError, ImageReferenceError, UnknownModelError) as error:
        raise_failure(error, what=what)
    rows = pipeline.latest(batch, summary.generation)
    metadata = jobs_metadata(batch, summary, rows)
    if summary.stopped_by is not None:
        if getattr(summary.stopped_by, "transient", False):
            context.log.warning(f"{what} paused: {summary.stopped_by}")
        raise_failure(summary.stopped_by, what=what)
    return dg.MaterializeResult(metadata=metadata, data_version=_jobs_version(summary, rows))


def _jobs_version(summary: Any, rows: Mapping[str, Any]) -> dg.DataVersion:
    """The generation and its job ids: a re-run that submits nothing keeps the version."""
    text = f"{summary.generation}:" + ",".join(f"{k}={rows[k].job_id}" for k in sorted(rows))
    return dg.DataVersion(hashlib.sha256(text.encode()).hexdigest()[:24])


# -- images -------------------------------------------------------------------------------------


def run_images(
    context: dg.AssetExecutionContext,
    runtime: StepRuntime,
    config: KreaImagesConfig,
    prompts: pd.DataFrame,
) -> Iterator[Any]:
    """Collect the batch's outputs, write the manifest; the checks; fail above the threshold."""
    krea = runtime.krea.get(context)
    batch = context.partition_key
    pipeline = runtime.pipeline
    try:
        threshold = (
            runtime.max_failed_fraction
            if config.max_failed_fraction is None
            else check_fraction(config.max_failed_fraction, "run config max_failed_fraction")
        )
    except ValueError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    generation = pipeline.ledger.current_generation(pipeline.scope, batch)
    if generation == 0 and not _all_skipped(prompts):
        raise dg.Failure(
            description=(
                f"{runtime.label}batch {batch!r} has no submissions yet: materialize the "
                "jobs asset first"
            ),
            allow_retries=False,
        )
    try:
        ensure_model(runtime, krea)
    except UnknownModelError as error:
        raise_failure(error, what=f"{runtime.label}batch {batch!r}")
    report = _interruptible(
        runtime,
        context,
        lambda: run_coroutine(
            pipeline.collect(
                krea,
                prompts,
                batch=batch,
                generation=generation,
                run_id=context.run.run_id,
                log=context.log,
            )
        ),
    )
    carried = [c for c in prompts.columns if c not in PROMPTS_TABLE_COLUMNS]
    manifest = pipeline.manifest(prompts, batch=batch, generation=generation, carried=carried)
    step = runtime.step
    if step.name:
        manifest["step"], manifest["step_version"] = step.name, step.version
    outcome = BatchOutcome.of(manifest, batch=batch, generation=generation, threshold=threshold)
    metadata = images_metadata(
        context, pipeline, manifest, outcome, report, store_url=runtime.store_url, step=step
    )
    checks = list(check_results(pipeline, manifest, outcome))
    if not outcome.too_many_failed:
        yield dg.Output(manifest, metadata=metadata)
        yield from checks
        # Last, after the IO manager's and the checks' lines: what the step ends on.
        (context.log.warning if outcome.failed else context.log.info)(
            runtime.label + outcome.summary
        )
        return
    # Above the threshold the batch fails: no materialization, so Dagster marks the partition
    # Failed (a partition with a materialization in the failing run shows Materialized). What
    # succeeded stays: the outputs in the store, their ledger rows (a re-run pays nothing for
    # them), the gallery page and the manifest copy in the batch folder, linked below.
    yield from checks
    raise dg.Failure(
        description=(
            f"{runtime.label}{outcome.summary}: more than max_failed_fraction={threshold:g} of "
            "the batch failed. The outputs Krea made are stored and shown in the gallery. "
            "Re-run the jobs asset to retry the failed prompts (up to max_attempts), or re-run "
            "this asset with run config max_failed_fraction: 1 to accept the batch as it is "
            "(no cost)."
        ),
        metadata={k: v for k, v in metadata.items() if k != "krea/thumbnails"},
        allow_retries=False,
    )


def _all_skipped(prompts: pd.DataFrame) -> bool:
    """Whether no row of the prompts table is sent (every one skipped upstream)."""
    from krea_dagster.engine.prompts import SKIP_COLUMN

    if prompts.empty or SKIP_COLUMN not in prompts.columns:
        return False
    return bool(prompts[SKIP_COLUMN].notna().all())
