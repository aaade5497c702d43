"""``build_krea_node``: the one builder of krea-dagster's assets; the presets on top of it.

A node is a source of rows, a prompt-file folder (``prompts=``) or any upstream table asset
(``table=``), then one or more Krea steps (``krea_dagster.engine.nodes.KreaStep``). Every step
gets the same three assets and the same guarantees, whatever entry point built it:

- ``<step>_prompts``: the batch's rows rendered and validated, every referenced file read and
  hashed locally, the price and the budget (nothing uploaded, nothing sent);
- ``<step>_jobs``: the Krea jobs, each paid at most once (the ledger, the account's lease),
  referenced files uploaded once, just before the POST that needs them;
- ``<step>``: the verified outputs and the manifest (the next step's input, and any downstream
  asset's), with the four per-batch checks, a failed run and partition above
  ``max_failed_fraction``, the gallery page and the cost.

``build_krea_image_assets`` (a prompt-file folder, one model) and ``build_krea_workflow`` (a
table asset, named steps) are presets of this builder; the YAML components build the same.
Everything is named from ``name_prefix`` (asset keys through the translator, the partitions
definition, sensors, ledger scopes), so any number of nodes live in one code location.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from krea_dagster.checks import DEFAULT_MAX_FAILED_FRACTION, check_fraction, check_specs
from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.names import dagster_name_problem
from krea_dagster.engine.nodes import KreaNode, KreaStep, check_price
from krea_dagster.engine.paths import (
    DEFAULT_STORE,
    InstancePaths,
    caller_root,
    default_ledger,
    missing_extra,
    resolve_location,
)
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.source import BATCH_COLUMN, PromptSource
from krea_dagster.engine.store import ImageStore
from krea_dagster.execution import (
    KreaImagesConfig,
    KreaJobsConfig,
    KreaResourceRef,
    StepRuntime,
    run_images,
    run_jobs,
    run_prompts,
)
from krea_dagster.resource import KreaResource
from krea_dagster.translator import KreaAssetProps, KreaTranslator, Role

__all__ = [
    "KreaImageAssets",
    "KreaNodeAssets",
    "KreaStepAssets",
    "KreaWorkflow",
    "build_krea_image_assets",
    "build_krea_node",
    "build_krea_workflow",
]

TableRef = dg.AssetsDefinition | dg.AssetSpec | dg.AssetKey | str


@dataclass(frozen=True)
class KreaStepAssets:
    """The three assets of one step, its pipeline, and what its bodies run with."""

    step: KreaStep
    runtime: StepRuntime
    prompts: dg.AssetsDefinition
    jobs: dg.AssetsDefinition
    images: dg.AssetsDefinition

    @property
    def pipeline(self) -> KreaImagePipeline:
        return self.runtime.pipeline

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        return [self.prompts, self.jobs, self.images]


@dataclass(frozen=True)
class KreaNodeAssets:
    """Everything ``build_krea_node`` made for one node (and its presets).

    ``prompts`` and ``jobs`` are the first step's (where a batch enters the node), ``images``
    the last step's outputs (what the node delivers); ``step_assets`` has every step's three.
    """

    node: KreaNode
    partitions_def: dg.PartitionsDefinition
    #: The prompt files, as a partitioned external asset (None for a table source).
    source: dg.AssetSpec | None
    #: The upstream table asset (None for a prompt-file source).
    table_key: dg.AssetKey | None
    step_assets: tuple[KreaStepAssets, ...]
    krea: KreaResourceRef

    @property
    def prefix(self) -> str:
        return self.node.prefix

    @property
    def resource_key(self) -> str:
        """The resource key the assets read their ``KreaResource`` from (unless embedded)."""
        return self.krea.key

    @property
    def steps(self) -> tuple[KreaStep, ...]:
        """The node's steps, in order."""
        return self.node.steps

    @property
    def pipeline(self) -> KreaImagePipeline:
        """The first step's pipeline (the only one of a prompt-file instance)."""
        return self.step_assets[0].pipeline

    @property
    def pipelines(self) -> dict[str, KreaImagePipeline]:
        """Every step's pipeline, by step name."""
        return {assets.step.name: assets.pipeline for assets in self.step_assets}

    @property
    def prompts(self) -> dg.AssetsDefinition:
        return self.step_assets[0].prompts

    @property
    def jobs(self) -> dg.AssetsDefinition:
        return self.step_assets[0].jobs

    @property
    def images(self) -> dg.AssetsDefinition:
        return self.step_assets[-1].images

    def step(self, name: str) -> KreaStepAssets:
        """A step's assets, by its name."""
        return self.step_assets[self.node.index(name)]

    def asset(self, step: str) -> dg.AssetsDefinition:
        """A step's outputs asset (its manifest), by the step's name."""
        return self.step(step).images

    @property
    def assets(self) -> list[dg.AssetSpec | dg.AssetsDefinition]:
        """Every asset of the node: the prompt source (for a folder) and each step's three."""
        specs: list[dg.AssetSpec | dg.AssetsDefinition] = [self.source] if self.source else []
        return [*specs, *(asset for step in self.step_assets for asset in step.assets)]

    @property
    def keys(self) -> dict[str, dg.AssetKey]:
        """The first step's keys by role, and the node's outputs (``images``)."""
        keys = {"prompts": self.prompts.key, "jobs": self.jobs.key, "images": self.images.key}
        if self.source is not None:
            keys["prompt_source"] = self.source.key
        return keys

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


#: What ``build_krea_image_assets`` and ``build_krea_workflow`` made before they were presets
#: of one builder: the same class now.
KreaImageAssets = KreaNodeAssets
KreaWorkflow = KreaNodeAssets


def build_krea_node(
    name_prefix: str,
    *,
    steps: Sequence[KreaStep],
    prompts: PromptSource | str | Path | None = None,
    table: TableRef | None = None,
    store: ImageStore | str | Path = DEFAULT_STORE,
    ledger: Ledger | str | None = None,
    key_column: str | None = None,
    batch_column: str = BATCH_COLUMN,
    partitions_def: dg.PartitionsDefinition | None = None,
    base_dir: str | Path | None = None,
    carry_columns: Sequence[str] = (),
    resource_key: str = "krea",
    krea: KreaResource | None = None,
    translator: KreaTranslator | None = None,
    max_usd_per_run: float | None = None,
    max_attempts: int = 3,
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
    thumbnails: int = 24,
    store_url: str | None = None,
    io_manager_key: str = "io_manager",
    automation_condition: dg.AutomationCondition | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    root: str | Path | None = None,
) -> KreaNodeAssets:
    """Build the assets of one node: a source of rows, then each step's three assets.

    Args:
        name_prefix: names everything (asset keys, partitions ``<prefix>_batches``, sensors,
            ledger scopes); letters, digits and ``_``.
        steps: the Krea steps, in order; each step after the first sees the previous step's
            output of the row as ``{previous}``. A node with several steps names each.
        prompts: a folder of prompt files (CSV/Parquet, one batch per file or per ``batch``
            value; local or a URL), discovered by the discovery sensor. Or ``table``:
        table: the upstream asset whose DataFrame holds the rows: partitioned like the node, or
            unpartitioned with a ``batch_column``.
        store: image store root (local directory or ``s3://bucket/prefix``); default
            ``krea-output/images`` under the project root.
        ledger: ledger database URL (``sqlite:///...`` or ``postgresql+psycopg://...``);
            default ``$KREA_LEDGER_URL``, else ``sqlite:///krea-output/ledger.db`` under the
            project root. Every node that uses one Krea token must share one ledger.
        key_column: the column that identifies a row from step to step (default: a hash of
            the whole row).
        batch_column: the column naming each row's batch (a table or a prompt file).
        partitions_def: the batches (default: a dynamic ``<prefix>_batches``); give the
            table's own to run a node over a table partitioned by batch.
        base_dir: where relative reference paths (``photos/a1.png``) are read from (default:
            the prompt folder, else the project root).
        carry_columns: columns of the source kept as data even when named like a request field.
        resource_key: where the assets find their ``KreaResource``.
        krea: a ``KreaResource`` to embed instead (no resource key involved).
        translator: customizes keys, groups, owners, tags and descriptions.
        max_usd_per_run: refuse (before any upload or call) a batch whose new submissions of a
            step are estimated above this many USD; a prompt with no known price is refused
            too, unless its step gives ``price_usd``.
        max_attempts: Krea failures tolerated per prompt and generation before it is left
            failed (failed jobs are not billed).
        max_failed_fraction: share of a step's prompts of a batch whose job may end without an
            output before the batch counts as failed: the ``no_failed_prompts`` check fails
            with ERROR and the step fails (the run and the partition show it). ``0`` fails on
            the first failure, ``1`` never; overridable per run (``KreaImagesConfig``).
        thumbnails: how many thumbnails an outputs asset shows inline; all are in the gallery.
        store_url: the HTTP(S) address at which the store root is served, so the gallery link
            in the UI opens in the browser.
        io_manager_key: IO manager of the prompts and manifest tables.
        automation_condition: put on every asset of the node (e.g. ``eager()``: a batch
            refreshes when its source changes, paying only for changed rows).
        retry_policy: retry policy of the jobs and outputs steps.
        root: what relative paths resolve against (``$KREA_DAGSTER_ROOT`` wins; default: the
            project folder of the calling file), never the current directory.
    """
    settings = _check_settings(
        name_prefix,
        steps=steps,
        prompts=prompts,
        table=table,
        store=store,
        store_url=store_url,
        max_usd_per_run=max_usd_per_run,
        max_attempts=max_attempts,
        max_failed_fraction=max_failed_fraction,
        thumbnails=thumbnails,
    )
    ledger = default_ledger() if ledger is None else ledger
    paths = InstancePaths.resolve(prompts, store, ledger, root)
    image_store = store if isinstance(store, ImageStore) else ImageStore(paths.store)
    shared_ledger = ledger if isinstance(ledger, Ledger) else Ledger(paths.ledger)
    source = None
    if prompts is not None:
        source = (
            prompts
            if isinstance(prompts, PromptSource)
            else PromptSource(paths.prompts, batch_column=batch_column)
        )
    # Relative reference paths are read from base_dir (itself relative to the project root),
    # else the prompt folder, else the project root: never the current directory.
    project = paths.root or caller_root()
    if base_dir is not None:
        references_root: str | Path | None = resolve_location(base_dir, project, "base_dir")
    else:
        references_root = None if source is not None else project
    pipelines = tuple(
        KreaImagePipeline(
            prefix=f"{name_prefix}.{step.name}" if step.name else name_prefix,
            model=step.model,
            store=image_store,
            ledger=shared_ledger,
            defaults=dict(step.defaults),
            price_usd=step.price_usd,
            max_attempts=max_attempts,
            max_usd_per_run=settings.max_usd_per_run,
            thumbnails=thumbnails,
        )
        for step in steps
    )
    node = KreaNode(
        prefix=name_prefix,
        steps=tuple(steps),
        pipelines=pipelines,
        source=source,
        key_column=key_column,
        batch_column=batch_column,
        base_dir=Path(references_root) if references_root is not None else None,
        carry_columns=tuple(carry_columns),
    )
    partitions = partitions_def or dg.DynamicPartitionsDefinition(name=f"{name_prefix}_batches")
    krea_ref = KreaResourceRef(resource_key, krea)
    translator = translator or KreaTranslator()
    source_spec = None
    if source is not None:
        spec = translator.get_asset_spec(
            KreaAssetProps(
                prefix=name_prefix,
                role="prompt_source",
                model=steps[0].model,
                source=source.directory,
            )
        )
        source_spec = spec.replace_attributes(
            partitions_def=partitions, metadata={**spec.metadata, "dagster/uri": source.directory}
        )
    table_key = _key_of(table) if table is not None else None
    built: list[KreaStepAssets] = []
    for index, step in enumerate(steps):
        runtime = StepRuntime(
            node=node,
            index=index,
            krea=krea_ref,
            max_failed_fraction=settings.max_failed_fraction,
            store_url=store_url,
        )
        roles: tuple[Role, ...] = ("prompts", "jobs", "images")
        specs: dict[Role, dg.AssetSpec] = {
            role: translator.get_asset_spec(
                KreaAssetProps(
                    prefix=name_prefix,
                    role=role,
                    model=step.model,
                    source=source.directory if source else table_key.to_user_string(),  # type: ignore[union-attr]
                    step=step.name,
                )
            )
            for role in roles
        }
        factory = _StepFactory(
            runtime=runtime,
            specs=specs,
            partitions=partitions,
            io_manager_key=io_manager_key,
            automation_condition=automation_condition,
            retry_policy=retry_policy,
        )
        prompts_asset = factory.prompts(
            source=source_spec,
            table=table_key,
            previous=built[-1].images.key if built else None,
        )
        jobs_asset = factory.jobs(prompts_asset.key)
        images_asset = factory.images(prompts_asset.key, jobs_asset.key)
        built.append(KreaStepAssets(step, runtime, prompts_asset, jobs_asset, images_asset))
    assets = KreaNodeAssets(
        node=node,
        partitions_def=partitions,
        source=source_spec,
        table_key=table_key,
        step_assets=tuple(built),
        krea=krea_ref,
    )
    from krea_dagster.partitions import remember

    remember(assets)  # so `krea-dagster register-batches <prefix>` finds it
    return assets


@dataclass(frozen=True)
class _Settings:
    max_usd_per_run: float | None
    max_failed_fraction: float


def _check_settings(
    name_prefix: str,
    *,
    steps: Sequence[KreaStep],
    prompts: Any,
    table: Any,
    store: Any,
    store_url: str | None,
    max_usd_per_run: Any,
    max_attempts: Any,
    max_failed_fraction: Any,
    thumbnails: Any,
) -> _Settings:
    """Every setting of a node checked when it is built, with what to write instead."""
    if (problem := dagster_name_problem(name_prefix, "name_prefix")) is not None:
        raise ValueError(problem)
    if (prompts is None) == (table is None):
        raise ValueError(
            f"{name_prefix}: give the rows' source, either prompts=<folder of prompt files> or "
            "table=<upstream table asset>, not both"
            if prompts is not None
            else f"{name_prefix}: give the rows' source: prompts=<folder of prompt files> or "
            "table=<upstream table asset>"
        )
    if not steps or not all(isinstance(step, KreaStep) for step in steps):
        raise ValueError(f"{name_prefix}: steps must be one or more KreaStep(...)")
    if store_url is not None and not str(store_url).startswith(("http://", "https://")):
        raise ValueError(
            f"store_url={store_url!r} must be an http:// or https:// address at which the "
            "store root is served, e.g. https://cdn.example.com/krea-images"
        )
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be a whole number, 1 or more, got {max_attempts!r}")
    if isinstance(thumbnails, bool) or not isinstance(thumbnails, int) or thumbnails < 0:
        raise ValueError(f"thumbnails must be a whole number, 0 or more, got {thumbnails!r}")
    for location in (store, prompts):
        if isinstance(location, str | Path) and (missing := missing_extra(location)):
            raise ValueError(f"{name_prefix}: {missing}")
    return _Settings(
        max_usd_per_run=check_price(max_usd_per_run, "max_usd_per_run"),
        max_failed_fraction=check_fraction(max_failed_fraction, "max_failed_fraction"),
    )


def _key_of(table: TableRef) -> dg.AssetKey:
    if isinstance(table, dg.AssetsDefinition | dg.AssetSpec):
        return table.key
    if isinstance(table, str):
        return dg.AssetKey.from_user_string(table)
    return dg.AssetKey.from_coercible(table)


def _is_input_partitioned(context: dg.AssetExecutionContext, name: str) -> bool:
    try:
        context.asset_partitions_def_for_input(name)
    except dg.DagsterInvariantViolationError:
        return False
    return True


@dataclass(frozen=True)
class _StepFactory:
    """Makes the three assets of one step from its specs."""

    runtime: StepRuntime
    specs: Mapping[Role, dg.AssetSpec]
    partitions: dg.PartitionsDefinition
    io_manager_key: str
    automation_condition: dg.AutomationCondition | None
    retry_policy: dg.RetryPolicy | None

    def _kwargs(self, role: Role) -> dict[str, Any]:
        spec = self.specs[role]
        return {
            "key": spec.key,
            "group_name": spec.group_name,
            "description": spec.description,
            "kinds": spec.kinds,
            "tags": spec.tags,
            "owners": spec.owners,
            "metadata": spec.metadata,
            "partitions_def": self.partitions,
            "automation_condition": self.automation_condition,
            "required_resource_keys": self.runtime.krea.required_keys,
        }

    def prompts(
        self,
        *,
        source: dg.AssetSpec | None,
        table: dg.AssetKey | None,
        previous: dg.AssetKey | None,
    ) -> dg.AssetsDefinition:
        runtime = self.runtime
        ins = {}
        if table is not None:
            ins["table"] = dg.AssetIn(table)
        if previous is not None:
            ins["previous"] = dg.AssetIn(previous)

        @dg.asset(
            **self._kwargs("prompts"),
            ins=ins,
            deps=[source] if source is not None else [],
            io_manager_key=self.io_manager_key,
            code_version=runtime.step.version,
        )
        def prompts(
            context: dg.AssetExecutionContext, **inputs: pd.DataFrame
        ) -> dg.Output[pd.DataFrame]:
            return run_prompts(
                context,
                runtime,
                table=inputs.get("table"),
                table_partitioned="table" in inputs and _is_input_partitioned(context, "table"),
                previous=inputs.get("previous"),
            )

        return prompts

    def jobs(self, prompts_key: dg.AssetKey) -> dg.AssetsDefinition:
        runtime = self.runtime

        @dg.asset(
            **self._kwargs("jobs"),
            ins={"prompts": dg.AssetIn(prompts_key)},
            pool="krea",
            retry_policy=self.retry_policy,
        )
        def jobs(
            context: dg.AssetExecutionContext, config: KreaJobsConfig, prompts: pd.DataFrame
        ) -> dg.MaterializeResult:
            return run_jobs(context, runtime, config, prompts)

        return jobs

    def images(self, prompts_key: dg.AssetKey, jobs_key: dg.AssetKey) -> dg.AssetsDefinition:
        runtime = self.runtime
        key = self.specs["images"].key

        @dg.asset(
            **self._kwargs("images"),
            ins={"prompts": dg.AssetIn(prompts_key)},
            deps=[jobs_key],
            io_manager_key=self.io_manager_key,
            check_specs=check_specs(key, self.partitions, runtime.max_failed_fraction),
            retry_policy=self.retry_policy,
        )
        def images(
            context: dg.AssetExecutionContext, config: KreaImagesConfig, prompts: pd.DataFrame
        ) -> Any:
            yield from run_images(context, runtime, config, prompts)

        return images


# -- presets ------------------------------------------------------------------------------------


def build_krea_image_assets(
    name_prefix: str,
    *,
    prompts: PromptSource | str | Path,
    model: str,
    store: ImageStore | str | Path = DEFAULT_STORE,
    ledger: Ledger | str | None = None,
    defaults: Mapping[str, Any] | None = None,
    price_usd: float | None = None,
    **options: Any,
) -> KreaNodeAssets:
    """A prompt-file instance: a folder of prompt files, one model (``build_krea_node`` with one
    unnamed step; its assets are ``[prefix, prompt_source | prompts | jobs | images]``).

    ``defaults`` are request fields for every prompt (a row's own values win); ``price_usd``
    is USD per request, used instead of the catalog's price (required with
    ``max_usd_per_run`` for a model without one). Every other option is ``build_krea_node``'s.
    """
    step = KreaStep("", model, defaults=dict(defaults or {}), price_usd=price_usd)
    return build_krea_node(
        name_prefix, steps=[step], prompts=prompts, store=store, ledger=ledger, **options
    )


def build_krea_workflow(
    name_prefix: str,
    *,
    table: TableRef,
    steps: Sequence[KreaStep],
    store: ImageStore | str | Path = DEFAULT_STORE,
    ledger: Ledger | str | None = None,
    **options: Any,
) -> KreaNodeAssets:
    """Chained Krea steps over the rows of a table asset (``build_krea_node`` with ``table=``;
    each step's outputs are ``[prefix, step]``)."""
    if any(not step.name for step in steps):
        raise ValueError(f"{name_prefix}: every step of a workflow needs a name")
    return build_krea_node(
        name_prefix, steps=steps, table=table, store=store, ledger=ledger, **options
    )
