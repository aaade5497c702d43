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
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.prompts import PROMPTS_TABLE_COLUMNS, PromptValidationError, expected_size
from krea_dagster.engine.run import run_coroutine
from krea_dagster.engine.source import PromptSource, PromptSourceError
from krea_dagster.engine.store import ImageStore
from krea_dagster.manifest import column_schema, manifest_metadata
from krea_dagster.resource import KreaResource
from krea_dagster.translator import KreaAssetProps, KreaTranslator

__all__ = [
    "REGENERATE_TAG",
    "REGENERATION_ID_TAG",
    "KreaImageAssets",
    "KreaJobsConfig",
    "KreaSource",
    "build_krea_image_assets",
]

REGENERATE_TAG = "krea/regenerate"
#: Names one request to regenerate; retries and re-executions of its run carry it.
REGENERATION_ID_TAG = "krea/regeneration_id"
MAX_JOB_IDS_IN_METADATA = 200
PREVIEW_ROWS = 10


class KreaJobsConfig(dg.Config):
    """Run configuration of the jobs asset."""

    regenerate: bool = False
    """Start a new generation of the batch: every prompt is submitted again (with a new seed
    when the request has none). Same as the run tag ``krea/regenerate=true``."""


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
    thumbnails: int = 24,
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
        thumbnails: how many thumbnails the images asset shows (tiny JPEGs in metadata).
        io_manager_key: IO manager of the prompts and manifest tables.
        automation_condition: put on prompts, jobs and images; e.g.
            ``dg.AutomationCondition.eager()`` refreshes a batch whenever the discovery sensor
            observes a new version of its prompt file (paying only for changed rows).
        retry_policy: retry policy of the jobs and images steps.
        root: what relative ``prompts``, ``store`` and ``sqlite:///`` ledger paths are resolved
            against (``$KREA_DAGSTER_ROOT`` wins; default: the project folder of the calling
            file, see ``krea_dagster.engine.paths``), never the current directory.
    """
    if not name_prefix.replace("_", "").isalnum():
        raise ValueError(
            f"name_prefix {name_prefix!r} must use only letters, digits and '_' "
            "(it names asset keys, partitions and sensors)"
        )
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
        for entry in skipped:
            context.log.warning(f"prompt source: {entry.file}: {entry.message}")
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
                "dagster/column_schema": column_schema(table),
                "krea/estimated_usd": prepared.estimated_usd,
                "krea/unpriced_prompts": prepared.unpriced_rows,
                "krea/model": pipeline.model,
                "krea/skipped_files": dg.MetadataValue.json(
                    {entry.file: entry.message for entry in skipped[:50]}
                ),
                "preview": dg.MetadataValue.md(_markdown_preview(table)),
            },
            # Same table, same version: re-validating an unchanged file leaves jobs and images
            # in sync (a random version per run would mark them "Unsynced").
            data_version=_table_version(table),
        )

    return prompts


def _table_version(table: pd.DataFrame) -> dg.DataVersion:
    import hashlib

    return dg.DataVersion(hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()[:24])


def _markdown_preview(table: pd.DataFrame) -> str:
    lines = ["| row | prompt | variant | est. USD |", "|---|---|---|---|"]
    for record in table.head(PREVIEW_ROWS).to_dict(orient="records"):
        prompt = str(record["prompt"]).replace("|", "\\|").replace("\n", " ")[:120]
        cost = record["estimated_usd"]
        shown = "?" if cost is None or pd.isna(cost) else f"{cost:.4f}"
        lines.append(f"| {record['row']} | {prompt} | {record['variant']} | {shown} |")
    if len(table) > PREVIEW_ROWS:
        lines.append(f"\n_{len(table) - PREVIEW_ROWS} more rows_")
    return "\n".join(lines)


def _problems_table(error: PromptValidationError) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "row": problem.row if problem.row is not None else 0,
                    "location": problem.location or "",
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
        metadata = _jobs_metadata(pipeline, summary, rows)
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


def _jobs_metadata(
    pipeline: KreaImagePipeline, summary: Any, rows: Mapping[str, Any]
) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row.state] = counts.get(row.state, 0) + 1
    job_ids = [row.job_id for row in rows.values() if row.job_id]
    submitted = sum(report.submitted for report in summary.rounds)
    submitted_usd = sum(report.submitted_usd for report in summary.rounds)
    model = pipeline.model
    return {
        "krea/generation": summary.generation,
        "krea/prompts": summary.planned,
        "krea/submitted_this_run": submitted,
        "krea/already_covered": sum(report.skipped for report in summary.rounds)
        + (summary.planned - summary.to_submit),
        "krea/status_counts": dg.MetadataValue.json(dict(sorted(counts.items()))),
        f"krea.{model}.jobs": submitted,
        f"krea.{model}.usd": round(submitted_usd, 6),
        "krea/reconciled": len(summary.reconciled),
        "krea/job_ids": dg.MetadataValue.json(job_ids[:MAX_JOB_IDS_IN_METADATA]),
    }


# -- images -------------------------------------------------------------------------------------

CHECK_RESOLVED = "every_prompt_resolved"
CHECK_SIZE = "images_have_requested_size"
CHECK_NO_DOUBLE_PAY = "no_duplicate_paid_jobs"


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
) -> dg.AssetsDefinition:
    check_specs = [
        dg.AssetCheckSpec(
            CHECK_RESOLVED,
            asset=spec.key,
            description="Every prompt has a verified image or a recorded terminal failure.",
        ),
        dg.AssetCheckSpec(
            CHECK_SIZE,
            asset=spec.key,
            description="Every stored image has the width and height its request asked for.",
        ),
        dg.AssetCheckSpec(
            CHECK_NO_DOUBLE_PAY,
            asset=spec.key,
            description="The ledger holds no two paid jobs for one prompt in one generation.",
        ),
    ]

    @dg.asset(
        **_asset_kwargs(spec),
        ins={"prompts": dg.AssetIn(prompts_key)},
        deps=[jobs_key],
        partitions_def=partitions,
        required_resource_keys=krea_source.required_keys,
        io_manager_key=io_manager_key,
        check_specs=check_specs,
        automation_condition=automation_condition,
        retry_policy=retry_policy,
    )
    def images(context: dg.AssetExecutionContext, prompts: pd.DataFrame) -> Iterator[Any]:
        krea = krea_source.get(context)
        batch = context.partition_key
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
        metadata = manifest_metadata(
            manifest,
            model=pipeline.model,
            thumbnails=report.thumbnails,
            store_uri=pipeline.store.batch_uri(pipeline.prefix),
        )
        metadata["krea/generation"] = generation
        metadata["krea/polls"] = report.polls
        metadata["krea/downloaded_this_run"] = report.downloaded
        context.log.info(
            f"{batch}: {metadata['krea/images']} image(s) stored, {metadata['krea/failures']} "
            f"without an image, ${manifest['cost_usd'].sum():.4f}"
        )
        yield dg.Output(manifest, metadata=metadata)
        yield from _check_results(pipeline, manifest, batch, generation)

    return images


def _check_results(
    pipeline: KreaImagePipeline, manifest: pd.DataFrame, batch: str, generation: int
) -> Any:
    unresolved = manifest[
        manifest["status"].isin(
            [ManifestStatus.PENDING, ManifestStatus.UNRESOLVED, ManifestStatus.NOT_SUBMITTED]
        )
    ]
    reported = pipeline.ledger.reported(pipeline.scope, batch)
    yield dg.AssetCheckResult(
        check_name=CHECK_RESOLVED,
        passed=unresolved.empty,
        description=(
            f"batch {batch}: {len(reported)} submission(s) reconciliation could not decide; "
            "resolve them by hand (see reported)"
            if reported
            else None
        ),
        metadata={
            "unresolved": len(unresolved),
            "prompt_keys": dg.MetadataValue.json(list(unresolved["prompt_key"].head(50))),
            "reported": dg.MetadataValue.json(
                [
                    {
                        "submission_id": r.submission_id,
                        "prompt_key": r.prompt_key,
                        "why": (r.error_message or "")[:500],
                    }
                    for r in reported[:20]
                ]
            ),
        },
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
        metadata={"wrong_size": len(wrong), "prompt_keys": dg.MetadataValue.json(wrong[:50])},
    )
    duplicates = pipeline.ledger.paid_duplicates(pipeline.scope, batch, generation)
    yield dg.AssetCheckResult(
        check_name=CHECK_NO_DOUBLE_PAY,
        passed=not duplicates,
        metadata={"duplicates": dg.MetadataValue.json(duplicates)},
    )
