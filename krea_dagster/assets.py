"""``build_krea_image_assets``: the prompt file -> prompts -> jobs -> images assets of one instance.

Everything is named from ``name_prefix`` (asset keys, the partitions definition, sensors), so
two instances, say two models or two prompt sources, live side by side in one code location.
The assets need one ``KreaResource``: under ``resource_key`` (``"krea"``), which several
instances may share, or embedded with ``krea=`` (what the YAML component does, so two
instances never collide on a key and a token resolved from YAML never shows up as resource
config in the UI).

One partition is one prompt batch. A run that materializes ``jobs`` and ``images`` together
polls inline; with the completion sensor (``build_krea_sensors``) the ``jobs`` run returns as
soon as everything is submitted and the sensor launches ``images`` when the batch is done.
"""

import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from krea_dagster.api.catalog import shorten
from krea_dagster.engine.errors import BatchStoppedError, BudgetExceededError, LeaseUnavailableError
from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.manifest import ManifestStatus
from krea_dagster.engine.names import dagster_name_problem
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.prompts import PROMPTS_TABLE_COLUMNS, PromptValidationError, expected_size
from krea_dagster.engine.run import run_coroutine
from krea_dagster.engine.source import PromptSource, PromptSourceError, skipped_summary
from krea_dagster.engine.store import ImageStore
from krea_dagster.metadata import (
    MANIFEST_COLUMN_DOCS,
    MAX_KEYS_IN_METADATA,
    PROMPTS_COLUMN_DOCS,
    KreaCheckMetadata,
    KreaImagesMetadata,
    KreaJobsMetadata,
    KreaPromptsMetadata,
    failed_prompts,
    failures_table,
    gallery_entries,
    prompts_preview,
    status_counts,
    table_schema,
    thumbnails_markdown,
)
from krea_dagster.resource import KreaResource
from krea_dagster.translator import KreaAssetProps, KreaTranslator

__all__ = [
    "DEFAULT_MAX_FAILED_FRACTION",
    "REGENERATE_TAG",
    "REGENERATION_ID_TAG",
    "KreaImageAssets",
    "KreaImagesConfig",
    "KreaJobsConfig",
    "KreaSource",
    "build_krea_image_assets",
]

REGENERATE_TAG = "krea/regenerate"
#: Names one request to regenerate; retries and re-executions of its run carry it.
REGENERATION_ID_TAG = "krea/regeneration_id"
MAX_JOB_IDS_IN_METADATA = 200
DEFAULT_MAX_FAILED_FRACTION = 0.5


class KreaJobsConfig(dg.Config):
    """Run configuration of the jobs asset."""

    regenerate: bool = False
    """Start a new generation of the batch: every prompt is submitted again (with a new seed
    when the request has none). Same as the run tag ``krea/regenerate=true``."""


class KreaImagesConfig(dg.Config):
    """Run configuration of the images asset."""

    max_failed_fraction: float | None = None
    """Override the instance's ``max_failed_fraction`` for this run, e.g. ``1.0`` to accept a
    batch whose failures exceeded it (re-running images pays nothing: it stores what Krea
    already made and writes the manifest)."""


@dataclass(frozen=True)
class KreaSource:
    """Where the assets and sensors of an instance get their ``KreaResource``."""

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
class KreaImageAssets:
    """Everything ``build_krea_image_assets`` made for one prefix."""

    pipeline: KreaImagePipeline
    partitions_def: dg.DynamicPartitionsDefinition
    source: dg.AssetSpec
    prompts: dg.AssetsDefinition
    jobs: dg.AssetsDefinition
    images: dg.AssetsDefinition
    krea: KreaSource

    @property
    def prefix(self) -> str:
        return self.pipeline.prefix

    @property
    def resource_key(self) -> str:
        """The resource key the assets read their ``KreaResource`` from (unless embedded)."""
        return self.krea.key

    @property
    def assets(self) -> list[dg.AssetSpec | dg.AssetsDefinition]:
        return [self.source, self.prompts, self.jobs, self.images]

    @property
    def keys(self) -> dict[str, dg.AssetKey]:
        return {
            "prompt_source": self.source.key,
            "prompts": self.prompts.key,
            "jobs": self.jobs.key,
            "images": self.images.key,
        }

    def definitions(
        self,
        *,
        resources: Mapping[str, Any] | None = None,
        sensors: Sequence[dg.SensorDefinition] = (),
        schedules: Sequence[dg.ScheduleDefinition] = (),
    ) -> dg.Definitions:
        return dg.Definitions(
            assets=self.assets, sensors=sensors, schedules=schedules, resources=resources
        )


def build_krea_image_assets(
    name_prefix: str,
    *,
    prompts: PromptSource | str | Path,
    model: str,
    store: ImageStore | str | Path,
    ledger: Ledger | str,
    defaults: Mapping[str, Any] | None = None,
    carry_columns: Sequence[str] = (),
    resource_key: str = "krea",
    krea: KreaResource | None = None,
    translator: KreaTranslator | None = None,
    max_usd_per_run: float | None = None,
    price_usd: float | None = None,
    max_attempts: int = 3,
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
    thumbnails: int = 24,
    store_url: str | None = None,
    io_manager_key: str = "io_manager",
    automation_condition: dg.AutomationCondition | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    root: str | Path | None = None,
) -> KreaImageAssets:
    """Build the four assets of one krea-dagster instance.

    Args:
        name_prefix: names everything (asset keys ``[prefix, role]``, partitions
            ``<prefix>_batches``); letters, digits and ``_``.
        prompts: the prompt source (a directory of CSV/Parquet files, local or a URL).
        model: the Krea model path after ``/generate/image/``, e.g. ``"bfl/flux-1-dev"``.
        store: image store root (local directory or ``s3://bucket/prefix``).
        ledger: ledger database URL (``sqlite:///...`` or ``postgresql+psycopg://...``).
        defaults: request parameters for every prompt (a row's own values win).
        carry_columns: extra columns to keep in the manifest even when their name looks like
            a request field.
        resource_key: where the assets find their ``KreaResource``.
        krea: a ``KreaResource`` to embed instead (no resource key involved).
        translator: customizes keys, groups, owners, tags and descriptions.
        max_usd_per_run: refuse (before any call) a batch whose new submissions are
            estimated above this many USD. A batch with a prompt whose price is unknown (a
            model the catalog has no price for) is refused too, unless ``price_usd`` is given.
        price_usd: USD per request of ``model``, used for every estimate instead of the
            catalog's price (required with ``max_usd_per_run`` for a model without one).
        max_attempts: Krea failures tolerated per prompt and generation before it is left
            failed (failed jobs are not billed).
        max_failed_fraction: share of a batch's prompts whose job may end without an image
            (failed, cancelled, invalid image) before the batch counts as failed. Any
            failure fails the ``no_failed_prompts`` check with severity WARN; above this share
            it fails with ERROR and the images step fails, so the run and the partition show
            failed (the images already made stay stored, and the gallery page and a manifest
            copy are written to the batch folder). ``0`` fails a batch on the first failure,
            ``1`` never fails the step. Overridable per run (``KreaImagesConfig``).
        thumbnails: how many thumbnails the images asset shows inline (small JPEGs in
            metadata); every image is on the batch's gallery page.
        store_url: the HTTP(S) address at which the store root is served (a CDN, a bucket
            website, ``python -m http.server`` in the store), so the gallery link in the UI
            opens in the browser; without it the link is the page's ``file://`` path or
            ``s3://`` URI (browsers do not open those from a web page: copy the path).
        io_manager_key: IO manager of the prompts and manifest tables.
        automation_condition: put on prompts, jobs and images; e.g.
            ``dg.AutomationCondition.eager()`` refreshes a batch whenever the discovery sensor
            observes a new version of its prompt file (paying only for changed rows).
        retry_policy: retry policy of the jobs and images steps.
        root: what relative ``prompts``, ``store`` and ``sqlite:///`` ledger paths are resolved
            against (``$KREA_DAGSTER_ROOT`` wins; default: the project folder of the calling
            file, see ``krea_dagster.engine.paths``), never the current directory.
    """
    _check_fraction(max_failed_fraction, "max_failed_fraction")
    if store_url is not None and not store_url.startswith(("http://", "https://")):
        raise ValueError(
            f"store_url={store_url!r} must be an http:// or https:// address at which the "
            "store root is served, e.g. https://cdn.example.com/krea-images"
        )
    if (problem := dagster_name_problem(name_prefix, "name_prefix")) is not None:
        raise ValueError(problem)
    for name, value in (("max_usd_per_run", max_usd_per_run), ("price_usd", price_usd)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
        ):
            raise ValueError(f"{name} must be a number of USD, 0 or more, got {value!r}")
        if value is not None and value == float("inf"):
            raise ValueError(f"{name} must be a finite number of USD, got {value!r}")
    from krea_dagster.batches import remember
    from krea_dagster.engine.paths import InstancePaths

    paths = InstancePaths.resolve(prompts, store, ledger, root)
    source = prompts if isinstance(prompts, PromptSource) else PromptSource(paths.prompts)
    pipeline = KreaImagePipeline(
        prefix=name_prefix,
        source=source,
        model=model,
        store=store if isinstance(store, ImageStore) else ImageStore(paths.store),
        ledger=ledger if isinstance(ledger, Ledger) else Ledger(paths.ledger),
        defaults=dict(defaults or {}),
        carry_columns=tuple(carry_columns),
        max_attempts=max_attempts,
        max_usd_per_run=max_usd_per_run,
        price_usd=price_usd,
        thumbnails=thumbnails,
    )
    krea_source = KreaSource(resource_key, krea)
    translator = translator or KreaTranslator()
    specs = {
        role: translator.get_asset_spec(
            KreaAssetProps(prefix=name_prefix, role=role, model=model, source=source.directory)
        )
        for role in ("prompt_source", "prompts", "jobs", "images")
    }
    partitions = dg.DynamicPartitionsDefinition(name=f"{name_prefix}_batches")
    source_spec = specs["prompt_source"].replace_attributes(
        partitions_def=partitions,
        metadata={**specs["prompt_source"].metadata, "dagster/uri": source.directory},
    )
    prompts_asset = _prompts_asset(
        pipeline, specs["prompts"], source_spec, partitions, io_manager_key, automation_condition
    )
    jobs_asset = _jobs_asset(
        pipeline,
        specs["jobs"],
        prompts_asset.key,
        partitions,
        krea_source,
        retry_policy,
        automation_condition,
    )
    images_asset = _images_asset(
        pipeline,
        specs["images"],
        prompts_asset.key,
        jobs_asset.key,
        partitions,
        krea_source,
        io_manager_key,
        automation_condition,
        retry_policy,
        max_failed_fraction,
        store_url,
    )
    built = KreaImageAssets(
        pipeline=pipeline,
        partitions_def=partitions,
        source=source_spec,
        prompts=prompts_asset,
        jobs=jobs_asset,
        images=images_asset,
        krea=krea_source,
    )
    remember(built)  # so `krea-dagster register-batches <prefix>` finds it
    return built


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(
            f"{name}={value!r} must be a number from 0 to 1 (the share of a batch's prompts "
            "that may fail), e.g. 0.5; 0 fails a batch on its first failure, 1 never"
        )
    return float(value)


def _asset_kwargs(spec: dg.AssetSpec) -> dict[str, Any]:
    return {
        "key": spec.key,
        "group_name": spec.group_name,
        "description": spec.description,
        "kinds": spec.kinds,
        "tags": spec.tags,
        "owners": spec.owners,
        "metadata": spec.metadata,
    }


# -- prompts ------------------------------------------------------------------------------------


def _prompts_asset(
    pipeline: KreaImagePipeline,
    spec: dg.AssetSpec,
    source: dg.AssetSpec,
    partitions: dg.DynamicPartitionsDefinition,
    io_manager_key: str,
    automation_condition: dg.AutomationCondition | None,
) -> dg.AssetsDefinition:
    @dg.asset(
        **_asset_kwargs(spec),
        deps=[source],
        partitions_def=partitions,
        io_manager_key=io_manager_key,
        automation_condition=automation_condition,
    )
    def prompts(context: dg.AssetExecutionContext) -> dg.Output[pd.DataFrame]:
        batch = context.partition_key
        skipped = pipeline.files.skipped()
        if skipped:
            context.log.warning(f"prompt source: {skipped_summary(skipped)}")
        try:
            prepared = pipeline.prepare(batch)
        except PromptSourceError as error:
            raise dg.Failure(description=str(error), allow_retries=False) from None
        except PromptValidationError as error:
            raise dg.Failure(
                description=str(error),
                metadata={"problems": _problems_table(error)},
                allow_retries=False,
            ) from None
        table = prepared.table
        context.log.info(
            f"{batch}: {len(table)} valid prompt(s), estimated ${prepared.estimated_usd:.4f}"
            + (f" plus {prepared.unpriced_rows} unpriced" if prepared.unpriced_rows else "")
        )
        return dg.Output(
            table,
            metadata={
                "dagster/row_count": len(table),
                "dagster/column_schema": table_schema(table, PROMPTS_COLUMN_DOCS),
                **KreaPromptsMetadata(
                    model=pipeline.model,
                    estimated_cost_usd=prepared.estimated_usd,
                    unpriced_prompts=prepared.unpriced_rows,
                    skipped_files=dg.MetadataValue.json(
                        {entry.file: entry.message for entry in skipped[:50]}
                    ),
                    preview=dg.MetadataValue.md(prompts_preview(table)),
                ),
            },
            # Same table, same version: re-validating an unchanged file leaves jobs and images
            # in sync (a random version per run would mark them "Unsynced").
            data_version=_table_version(table),
        )

    return prompts


def _table_version(table: pd.DataFrame) -> dg.DataVersion:
    import hashlib

    return dg.DataVersion(hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()[:24])


def _problems_table(error: PromptValidationError) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "row": problem.row if problem.row is not None else 0,
                    "location": shorten(problem.location or "", 200),
                    "column": shorten(str(problem.column or ""), 120),
                    "rule": problem.rule,
                    "message": shorten(problem.message, 600),
                }
            )
            for problem in error.problems[:200]
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("row", "int"),
                dg.TableColumn("location", "string"),
                dg.TableColumn("column", "string"),
                dg.TableColumn("rule", "string"),
                dg.TableColumn("message", "string"),
            ]
        ),
    )


# -- jobs ---------------------------------------------------------------------------------------


def _regeneration_id(context: dg.AssetExecutionContext, config: "KreaJobsConfig") -> str | None:
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


def _interruptible(
    pipeline: KreaImagePipeline,
    krea: KreaResource,
    context: dg.AssetExecutionContext,
    work: Callable[[], Any],
) -> Any:
    """Run ``work``; if the run is terminated meanwhile, cancel the jobs this run submitted."""
    try:
        return work()
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
        if krea.cancel_on_termination:
            cancelled = pipeline.cancel_run_jobs(
                krea, batch=context.partition_key, run_id=context.run.run_id, log=context.log
            )
            context.log.warning(f"run terminated: cancelled {len(cancelled)} pending Krea job(s)")
        raise


def _jobs_asset(
    pipeline: KreaImagePipeline,
    spec: dg.AssetSpec,
    prompts_key: dg.AssetKey,
    partitions: dg.DynamicPartitionsDefinition,
    krea_source: KreaSource,
    retry_policy: dg.RetryPolicy | None,
    automation_condition: dg.AutomationCondition | None,
) -> dg.AssetsDefinition:
    @dg.asset(
        **_asset_kwargs(spec),
        ins={"prompts": dg.AssetIn(prompts_key)},
        partitions_def=partitions,
        pool="krea",
        required_resource_keys=krea_source.required_keys,
        retry_policy=retry_policy,
        automation_condition=automation_condition,
    )
    def jobs(
        context: dg.AssetExecutionContext, config: KreaJobsConfig, prompts: pd.DataFrame
    ) -> dg.MaterializeResult:
        krea = krea_source.get(context)
        batch = context.partition_key
        regeneration_id = _regeneration_id(context, config)
        from krea_dagster.engine.continuity import forgotten_images_warning

        forgotten = forgotten_images_warning(
            pipeline.ledger, pipeline.store, pipeline.scope, pipeline.prefix
        )
        if forgotten:
            context.log.warning(forgotten)
        try:
            summary = _interruptible(
                pipeline,
                krea,
                context,
                lambda: run_coroutine(
                    pipeline.submit(
                        krea,
                        prompts,
                        batch=batch,
                        regeneration_id=regeneration_id,
                        run_id=context.run.run_id,
                        log=context.log,
                    )
                ),
            )
        except BudgetExceededError as error:
            raise dg.Failure(description=str(error), allow_retries=False) from None
        rows = pipeline.latest(batch, summary.generation)
        metadata = _jobs_metadata(batch, summary, rows)
        stopped = summary.stopped_by
        if isinstance(stopped, BatchStoppedError | LeaseUnavailableError) and stopped.transient:
            # Rate limited or Krea unreachable: a retry policy resumes where this run stopped
            # (everything submitted stays recorded, so the retry pays for nothing twice).
            context.log.warning(f"batch {batch!r} paused: {stopped}")
            raise dg.RetryRequested(max_retries=3, seconds_to_wait=60) from stopped
        if stopped is not None:
            raise dg.Failure(
                description=(
                    f"batch {batch!r} stopped: {stopped}. Everything already submitted stays "
                    "recorded; re-run the jobs asset once fixed and only the missing prompts "
                    "are submitted."
                ),
                metadata=metadata,
                allow_retries=False,
            )
        return dg.MaterializeResult(metadata=metadata, data_version=_jobs_version(summary, rows))

    return jobs


def _jobs_version(summary: Any, rows: Mapping[str, Any]) -> dg.DataVersion:
    """The generation and its job ids: a re-run that submits nothing keeps the version."""
    import hashlib

    text = f"{summary.generation}:" + ",".join(f"{k}={rows[k].job_id}" for k in sorted(rows))
    return dg.DataVersion(hashlib.sha256(text.encode()).hexdigest()[:24])


def _jobs_metadata(batch: str, summary: Any, rows: Mapping[str, Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row.state] = counts.get(row.state, 0) + 1
    job_ids = [row.job_id for row in rows.values() if row.job_id]
    submitted_usd = sum(report.submitted_usd for report in summary.rounds)
    return dict(
        KreaJobsMetadata(
            batch=batch,
            generation=str(summary.generation),
            prompts=summary.planned,
            submitted_this_run=sum(report.submitted for report in summary.rounds),
            already_covered=sum(report.skipped for report in summary.rounds)
            + (summary.planned - summary.to_submit),
            reconciled=len(summary.reconciled),
            estimated_cost_usd=round(submitted_usd, 6),
            status_counts=dg.MetadataValue.json(dict(sorted(counts.items()))),
            job_ids=dg.MetadataValue.json(job_ids[:MAX_JOB_IDS_IN_METADATA]),
        )
    )


# -- images -------------------------------------------------------------------------------------

CHECK_RESOLVED = "every_prompt_resolved"
CHECK_SIZE = "images_have_requested_size"
CHECK_NO_DOUBLE_PAY = "no_duplicate_paid_jobs"
CHECK_FAILED = "no_failed_prompts"


def _check_specs(
    key: dg.AssetKey, partitions: dg.DynamicPartitionsDefinition, max_failed_fraction: float
) -> list[dg.AssetCheckSpec]:
    """The images checks, one result per batch (partitioned like the asset)."""
    descriptions = {
        CHECK_FAILED: (
            "No prompt's Krea job of the batch ended without an image (failed, cancelled, "
            "invalid image). Severity WARN for some failures, ERROR when more than "
            f"{max_failed_fraction:.0%} of the prompts failed (max_failed_fraction); the images "
            "step then fails too, so the run and the partition show it."
        ),
        CHECK_RESOLVED: "Every prompt has a verified image or a recorded terminal failure.",
        CHECK_SIZE: "Every stored image has the width and height its request asked for.",
        CHECK_NO_DOUBLE_PAY: "The ledger holds no two paid jobs for one prompt in one generation.",
    }
    with warnings.catch_warnings():
        # Partitioned checks are a preview in Dagster 1.13 (each result then names its batch in
        # the UI's check history); the warning would repeat for every instance built.
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
        return [
            dg.AssetCheckSpec(name, asset=key, description=text, partitions_def=partitions)
            for name, text in descriptions.items()
        ]


def _images_asset(
    pipeline: KreaImagePipeline,
    spec: dg.AssetSpec,
    prompts_key: dg.AssetKey,
    jobs_key: dg.AssetKey,
    partitions: dg.DynamicPartitionsDefinition,
    krea_source: KreaSource,
    io_manager_key: str,
    automation_condition: dg.AutomationCondition | None,
    retry_policy: dg.RetryPolicy | None,
    max_failed_fraction: float,
    store_url: str | None,
) -> dg.AssetsDefinition:
    @dg.asset(
        **_asset_kwargs(spec),
        ins={"prompts": dg.AssetIn(prompts_key)},
        deps=[jobs_key],
        partitions_def=partitions,
        required_resource_keys=krea_source.required_keys,
        io_manager_key=io_manager_key,
        check_specs=_check_specs(spec.key, partitions, max_failed_fraction),
        automation_condition=automation_condition,
        retry_policy=retry_policy,
    )
    def images(
        context: dg.AssetExecutionContext, config: KreaImagesConfig, prompts: pd.DataFrame
    ) -> Iterator[Any]:
        krea = krea_source.get(context)
        batch = context.partition_key
        try:
            threshold = (
                max_failed_fraction
                if config.max_failed_fraction is None
                else _check_fraction(config.max_failed_fraction, "run config max_failed_fraction")
            )
        except ValueError as error:
            raise dg.Failure(description=str(error), allow_retries=False) from None
        generation = pipeline.ledger.current_generation(pipeline.scope, batch)
        if generation == 0:
            raise dg.Failure(
                description=f"batch {batch!r} has no submissions yet: materialize the jobs asset first",
                allow_retries=False,
            )
        report = _interruptible(
            pipeline,
            krea,
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
        outcome = BatchOutcome.of(manifest, batch=batch, generation=generation, threshold=threshold)
        metadata = _images_metadata(pipeline, context, manifest, outcome, report, store_url)
        checks = list(_check_results(pipeline, manifest, outcome))
        if not outcome.too_many_failed:
            yield dg.Output(manifest, metadata=metadata)
            yield from checks
            # Last, after the IO manager's and the checks' lines: what the step ends on.
            (context.log.warning if outcome.failed else context.log.info)(outcome.summary)
            return
        # Above the threshold the batch fails: no materialization, so Dagster marks the partition
        # Failed (a partition with a materialization in the failing run shows Materialized). What
        # succeeded stays: the images in the store, their ledger rows (a re-run pays nothing for
        # them), the gallery page and the manifest copy in the batch folder, linked below.
        yield from checks
        raise dg.Failure(
            description=(
                f"{outcome.summary}: more than max_failed_fraction={threshold:g} of the batch "
                "failed. The images Krea made are stored and shown in the gallery. Re-run the "
                "jobs asset to retry the failed prompts (up to max_attempts), or re-run images "
                "with run config max_failed_fraction: 1 to accept the batch as it is (no cost)."
            ),
            metadata={k: v for k, v in metadata.items() if k != "krea/thumbnails"},
            allow_retries=False,
        )

    return images


@dataclass(frozen=True)
class BatchOutcome:
    """How many prompts of a batch generation ended without an image, against the threshold."""

    batch: str
    generation: int
    prompts: int
    images: int
    failed: int
    threshold: float
    error_codes: dict[str, int]
    estimated_cost_usd: float

    @classmethod
    def of(
        cls, manifest: pd.DataFrame, *, batch: str, generation: int, threshold: float
    ) -> "BatchOutcome":
        failed = failed_prompts(manifest)
        codes = failed["error_code"].fillna(failed["status"]).astype(str)
        return cls(
            batch=batch,
            generation=generation,
            prompts=len(manifest),
            images=int((manifest["status"] == ManifestStatus.COMPLETED).sum()),
            failed=len(failed),
            threshold=threshold,
            error_codes={str(code): int(n) for code, n in sorted(Counter(codes).items())},
            estimated_cost_usd=round(float(manifest["cost_usd"].sum()), 6),
        )

    @property
    def fraction(self) -> float:
        return self.failed / self.prompts if self.prompts else 0.0

    @property
    def too_many_failed(self) -> bool:
        return self.fraction > self.threshold

    @property
    def summary(self) -> str:
        """One line: the batch, how many images, how many failed and why, the estimated cost."""
        codes = ", ".join(f"{code} x{count}" for code, count in self.error_codes.items())
        failed = f"{self.failed} of {self.prompts} prompts failed" + (
            f" ({codes})" if codes else ""
        )
        return (
            f"batch {self.batch!r} generation {self.generation}: {self.images} of "
            f"{self.prompts} images stored, {failed}, estimated ${self.estimated_cost_usd:.4f}"
        )


def _images_metadata(
    pipeline: KreaImagePipeline,
    context: dg.AssetExecutionContext,
    manifest: pd.DataFrame,
    outcome: BatchOutcome,
    report: Any,
    store_url: str | None,
) -> dict[str, Any]:
    batch = outcome.batch
    order = {key: index for index, key in enumerate(manifest["prompt_key"])}  # batch order
    folder, links = gallery_entries(
        pipeline.store,
        pipeline.prefix,
        batch,
        manifest,
        subtitle=f"generation {outcome.generation} · {pipeline.model}",
        store_url=store_url,
        log=context.log,
    )
    krea_entries = dict(
        KreaImagesMetadata(
            batch=batch,
            generation=str(outcome.generation),
            images=outcome.images,
            failed_prompts=outcome.failed,
            estimated_cost_usd=outcome.estimated_cost_usd,
            status_counts=dg.MetadataValue.json(status_counts(manifest)),
            thumbnails=dg.MetadataValue.md(
                thumbnails_markdown(
                    sorted(report.thumbnails, key=lambda thumb: order.get(thumb.prompt_key, 0)),
                    total_images=outcome.images,
                )
            ),
            failures=failures_table(manifest),
            this_run=dg.MetadataValue.json(
                {
                    "polls": report.polls,
                    "downloaded": report.downloaded,
                    "already_stored": report.already_stored,
                }
            ),
            **links,
        )
    )
    return {
        **krea_entries,
        "dagster/row_count": len(manifest),
        "dagster/uri": folder,
        "dagster/column_schema": table_schema(manifest, MANIFEST_COLUMN_DOCS),
    }


def _check_results(
    pipeline: KreaImagePipeline, manifest: pd.DataFrame, outcome: BatchOutcome
) -> Iterator[dg.AssetCheckResult]:
    batch, generation = outcome.batch, outcome.generation
    judged = f"batch {batch!r} generation {generation}"
    # Each check's numbers are its own finding (what its Plots show), the batch is text.
    base: dict[str, Any] = {"batch": batch, "generation": str(generation)}

    failed = failed_prompts(manifest)
    yield dg.AssetCheckResult(
        check_name=CHECK_FAILED,
        passed=outcome.failed == 0,
        severity=(
            dg.AssetCheckSeverity.ERROR if outcome.too_many_failed else dg.AssetCheckSeverity.WARN
        ),
        description=(
            f"{judged}: {outcome.failed} of {outcome.prompts} prompts failed "
            f"({outcome.fraction:.0%}; ERROR above {outcome.threshold:.0%})"
        ),
        metadata=dict(
            KreaCheckMetadata(
                **base,
                prompts=outcome.prompts,
                failed_prompts=outcome.failed,
                failed_fraction=round(outcome.fraction, 4),
                max_failed_fraction=outcome.threshold,
                error_codes=dg.MetadataValue.json(outcome.error_codes),
                prompt_keys=dg.MetadataValue.json(
                    list(failed["prompt_key"].head(MAX_KEYS_IN_METADATA))
                ),
            )
        ),
    )

    unresolved = manifest[
        manifest["status"].isin(
            [ManifestStatus.PENDING, ManifestStatus.UNRESOLVED, ManifestStatus.NOT_SUBMITTED]
        )
    ]
    reported = pipeline.ledger.reported(pipeline.scope, batch)
    yield dg.AssetCheckResult(
        check_name=CHECK_RESOLVED,
        passed=unresolved.empty,
        description=f"{judged}: {len(unresolved)} of {outcome.prompts} prompts unresolved"
        + (
            f"; {len(reported)} submission(s) reconciliation could not decide: resolve them "
            "by hand (see krea/reported)"
            if reported
            else ""
        ),
        metadata=dict(
            KreaCheckMetadata(
                **base,
                unresolved=len(unresolved),
                prompt_keys=dg.MetadataValue.json(
                    list(unresolved["prompt_key"].head(MAX_KEYS_IN_METADATA))
                ),
                reported=dg.MetadataValue.json(
                    [
                        {
                            "submission_id": r.submission_id,
                            "prompt_key": r.prompt_key,
                            "why": (r.error_message or "")[:500],
                        }
                        for r in reported[:20]
                    ]
                ),
            )
        ),
    )

    rows = pipeline.latest(batch, generation)
    wrong: list[str] = []
    for record in manifest[manifest["status"] == ManifestStatus.COMPLETED].to_dict(
        orient="records"
    ):
        row = rows[record["prompt_key"]]
        wanted = expected_size(row.request)
        if wanted is not None and (record["width"], record["height"]) != wanted:
            wrong.append(record["prompt_key"])
    yield dg.AssetCheckResult(
        check_name=CHECK_SIZE,
        passed=not wrong,
        description=f"{judged}: {len(wrong)} of {outcome.images} images have the wrong size",
        metadata=dict(
            KreaCheckMetadata(
                **base,
                wrong_size=len(wrong),
                prompt_keys=dg.MetadataValue.json(wrong[:MAX_KEYS_IN_METADATA]),
            )
        ),
    )

    duplicates = pipeline.ledger.paid_duplicates(pipeline.scope, batch, generation)
    yield dg.AssetCheckResult(
        check_name=CHECK_NO_DOUBLE_PAY,
        passed=not duplicates,
        description=f"{judged}: {len(duplicates)} prompts paid twice",
        metadata=dict(KreaCheckMetadata(**base, duplicates=dg.MetadataValue.json(duplicates))),
    )
