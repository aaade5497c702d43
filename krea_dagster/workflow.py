"""Workflow nodes as assets: a table asset in, one asset per Krea step, chained step to step.

```python
import dagster as dg
from krea_dagster import KreaStep, build_krea_workflow

@dg.asset
def products() -> pd.DataFrame:  # any table: a dbt model, a warehouse query, a file
    return pd.DataFrame({"batch": ["spring"], "sku": ["A1"], "name": ["red sneaker"],
                         "photo": ["data/products/a1.png"]})

catalog = build_krea_workflow(
    "catalog",
    table=products,
    key_column="sku",
    steps=[
        KreaStep("edit", model="openai/gpt-image-2",
                 prompt="Studio photo of a {name} on white", inputs={"image_urls": ["{photo}"]}),
        KreaStep("upscale", model="enhance/topaz/standard-enhance",
                 inputs={"image_url": "{previous}"},
                 defaults={"model": "Standard V2", "width": 2048, "height": 2048}),
    ],
    store="s3://bucket/krea", ledger="postgresql+psycopg://.../krea",
)
defs = dg.Definitions(assets=[products, *catalog.assets], resources={"krea": KreaResource(...)})
```

Each step is its own asset (``[prefix, step]``), partitioned by batch (the table's own
partitions when it has the same ones, else its ``batch_column``), with its own ledger scope, so
the pay-once promise holds per node. Its output is the step's manifest: one row per table row
(``row_key``, the table's columns, status, uri, sha256, cost, error), the next step's input.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from krea_dagster.api import UnknownModelError
from krea_dagster.assets import KreaJobsConfig, KreaSource, _problems_table, _regeneration_id
from krea_dagster.engine.errors import BudgetExceededError
from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.manifest import MANIFEST_COLUMNS, ManifestStatus
from krea_dagster.engine.nodes import (
    ROW_KEY,
    STEP_COLUMNS,
    KreaStep,
    add_row_keys,
    load_node_app,
    skipped_manifest_rows,
    step_rows,
)
from krea_dagster.engine.paths import InstancePaths, caller_root
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.prompts import PROMPTS_TABLE_COLUMNS, PromptValidationError, prepare_batch
from krea_dagster.engine.references import AsyncReferenceResolver, ImageReferenceError
from krea_dagster.engine.run import run_coroutine
from krea_dagster.engine.store import ImageStore
from krea_dagster.metadata import (
    MANIFEST_COLUMN_DOCS,
    KreaImagesMetadata,
    failed_prompts,
    failures_table,
    gallery_entries,
    status_counts,
    table_schema,
)
from krea_dagster.resource import KreaResource

__all__ = ["KreaWorkflow", "build_krea_workflow"]


@dataclass(frozen=True)
class KreaWorkflow:
    """Everything ``build_krea_workflow`` made: one asset per step, in order."""

    prefix: str
    steps: tuple[KreaStep, ...]
    assets: list[dg.AssetsDefinition]
    partitions_def: dg.PartitionsDefinition
    pipelines: Mapping[str, KreaImagePipeline]
    krea: KreaSource

    def asset(self, step: str) -> dg.AssetsDefinition:
        """The asset of a step, by its name."""
        for spec, asset in zip(self.steps, self.assets, strict=True):
            if spec.name == step:
                return asset
        raise KeyError(f"no step {step!r}; steps: {', '.join(s.name for s in self.steps)}")


def build_krea_workflow(
    name_prefix: str,
    *,
    table: dg.AssetsDefinition | dg.AssetSpec | dg.AssetKey | str,
    steps: Sequence[KreaStep],
    store: ImageStore | str | Path,
    ledger: Ledger | str,
    key_column: str | None = None,
    batch_column: str = "batch",
    partitions_def: dg.PartitionsDefinition | None = None,
    base_dir: str | Path | None = None,
    root: str | Path | None = None,
    resource_key: str = "krea",
    krea: KreaResource | None = None,
    max_usd_per_run: float | None = None,
    max_attempts: int = 3,
    io_manager_key: str = "io_manager",
    retry_policy: dg.RetryPolicy | None = None,
) -> KreaWorkflow:
    """Build one asset per Krea step over the rows of ``table``.

    Args:
        name_prefix: names the assets (``[prefix, step]``), partitions and ledger scopes.
        table: the upstream asset whose DataFrame holds one row per item (partitioned like
            the workflow, or unpartitioned with a ``batch_column``).
        steps: the Krea steps, in order; each step after the first sees the previous step's
            image of the row as ``{previous}``.
        store, ledger: as for ``build_krea_image_assets``.
        key_column: the column that identifies a row (default: a hash of the whole row).
        batch_column: the column naming each row's batch when ``table`` is unpartitioned.
        partitions_def: the batches (default: a dynamic ``<prefix>_batches``).
        base_dir: the folder relative reference paths in the table are read from (default:
            the root below).
        root: what relative ``store`` and ``sqlite:///`` ledger paths (and references, without
            ``base_dir``) resolve against: ``$KREA_DAGSTER_ROOT``, else this, else the project
            root of the calling file (see "Where files go" in the README).
    """
    if not steps:
        raise ValueError("a workflow needs at least one step")
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"step names must be unique, got {names}")
    partitions = partitions_def or dg.DynamicPartitionsDefinition(name=f"{name_prefix}_batches")
    paths = InstancePaths.resolve(None, store, ledger, root)
    store = store if isinstance(store, ImageStore) else ImageStore(paths.store)
    ledger = ledger if isinstance(ledger, Ledger) else Ledger(paths.ledger)
    references_root = base_dir if base_dir is not None else (paths.root or caller_root())
    source = KreaSource(resource_key, krea)
    table_key = _key_of(table)
    pipelines = {
        step.name: KreaImagePipeline(
            prefix=f"{name_prefix}.{step.name}",
            source=None,
            model=step.model,
            store=store,
            ledger=ledger,
            defaults=dict(step.defaults),
            price_usd=step.price_usd,
            max_attempts=max_attempts,
            max_usd_per_run=max_usd_per_run,
        )
        for step in steps
    }
    assets: list[dg.AssetsDefinition] = []
    upstream = table_key
    for index, step in enumerate(steps):
        assets.append(
            _step_asset(
                name_prefix,
                step,
                pipelines[step.name],
                table_key=table_key,
                previous_key=upstream if index else None,
                partitions=partitions,
                source=source,
                key_column=key_column,
                batch_column=batch_column,
                base_dir=Path(references_root) if references_root is not None else None,
                io_manager_key=io_manager_key,
                retry_policy=retry_policy,
            )
        )
        upstream = assets[-1].key
    return KreaWorkflow(name_prefix, tuple(steps), assets, partitions, pipelines, source)


def _key_of(table: dg.AssetsDefinition | dg.AssetSpec | dg.AssetKey | str) -> dg.AssetKey:
    if isinstance(table, dg.AssetsDefinition | dg.AssetSpec):
        return table.key
    return dg.AssetKey.from_coercible(table)


def _step_asset(
    prefix: str,
    step: KreaStep,
    pipeline: KreaImagePipeline,
    *,
    table_key: dg.AssetKey,
    previous_key: dg.AssetKey | None,
    partitions: dg.PartitionsDefinition,
    source: KreaSource,
    key_column: str | None,
    batch_column: str,
    base_dir: Path | None,
    io_manager_key: str,
    retry_policy: dg.RetryPolicy | None,
) -> dg.AssetsDefinition:
    ins = {"table": dg.AssetIn(table_key)}
    if previous_key is not None:
        ins["previous"] = dg.AssetIn(previous_key)

    @dg.asset(
        key=[prefix, step.name],
        ins=ins,
        partitions_def=partitions,
        required_resource_keys=source.required_keys,
        io_manager_key=io_manager_key,
        pool="krea",
        kinds={"krea", "pandas"},
        group_name=prefix,
        description=(
            f"Krea step {step.name!r}: {step.model} over each row of {table_key.to_user_string()}"
            + (f" and the images of {previous_key.to_user_string()}" if previous_key else "")
            + "; outputs the step's manifest (one row per table row)."
        ),
        code_version=step.version,
        retry_policy=retry_policy,
        metadata={"krea/model": step.model, "krea/step_version": step.version},
    )
    def krea_step(
        context: dg.AssetExecutionContext, config: KreaJobsConfig, **inputs: pd.DataFrame
    ) -> Iterator[dg.Output[pd.DataFrame]]:
        krea = source.get(context)
        batch = context.partition_key
        table = inputs["table"]
        if batch_column in table.columns:
            table = table[table[batch_column].astype(str) == batch]
        try:
            if step.is_node_app:
                run_coroutine(_load_node_app(krea, step))
            rows = add_row_keys(table, key_column)
            columns = [ROW_KEY, *(c for c in rows.columns if c not in (ROW_KEY, batch_column))]
            rendered = step_rows(
                step, rows, batch=batch, previous=inputs.get("previous"), table_columns=columns
            )
            carried = [
                c
                for c in rendered.carried
                if c not in (*MANIFEST_COLUMNS, *PROMPTS_TABLE_COLUMNS, *STEP_COLUMNS)
            ]
            manifest = run_coroutine(
                _run_step(
                    context, step, pipeline, krea, rendered.frame, carried, batch, base_dir, config
                )
            )
        except (PromptValidationError, ImageReferenceError) as error:
            problems = (
                {"problems": _problems_table(error)}
                if isinstance(error, PromptValidationError)
                else {}
            )
            raise dg.Failure(
                description=str(error), metadata=problems, allow_retries=False
            ) from None
        except (BudgetExceededError, UnknownModelError) as error:
            raise dg.Failure(description=str(error), allow_retries=False) from None
        generation = int(manifest["generation"].dropna().iloc[0]) if not manifest.empty else 0
        skipped = skipped_manifest_rows(
            rendered.skipped, batch=batch, generation=generation, carried=carried
        )
        full = pd.concat([manifest, skipped], ignore_index=True) if not skipped.empty else manifest
        full["step"], full["step_version"] = step.name, step.version
        metadata = _step_metadata(context, step, pipeline, full, batch, generation)
        skipped_count = int((full["status"] == ManifestStatus.SKIPPED).sum())
        context.log.info(
            f"{batch}: step {step.name}: {int((full['status'] == ManifestStatus.COMPLETED).sum())}"
            f" of {len(full)} row(s) with an image, {skipped_count} skipped upstream, "
            f"estimated ${full['cost_usd'].sum():.4f}"
        )
        yield dg.Output(full, metadata=metadata)

    return krea_step


def _step_metadata(
    context: dg.AssetExecutionContext,
    step: KreaStep,
    pipeline: KreaImagePipeline,
    manifest: pd.DataFrame,
    batch: str,
    generation: int,
) -> dict[str, Any]:
    """The step's counts, estimated cost, failures and gallery page, in the krea/ namespace."""
    images = int((manifest["status"] == ManifestStatus.COMPLETED).sum())
    folder, links = gallery_entries(
        pipeline.store,
        pipeline.prefix,
        batch,
        manifest,
        subtitle=f"generation {generation} · {step.model}",
        store_url=None,
        log=context.log,
    )
    entries = dict(
        KreaImagesMetadata(
            batch=batch,
            generation=str(generation),
            images=images,
            failed_prompts=len(failed_prompts(manifest)),
            estimated_cost_usd=round(float(manifest["cost_usd"].sum()), 6),
            status_counts=dg.MetadataValue.json(status_counts(manifest)),
            failures=failures_table(manifest),
            **links,
        )
    )
    return {
        **entries,
        "krea/step_version": step.version,
        "dagster/row_count": len(manifest),
        "dagster/uri": folder,
        "dagster/column_schema": table_schema(manifest, MANIFEST_COLUMN_DOCS),
    }


async def _load_node_app(krea: KreaResource, step: KreaStep) -> None:
    """Read the step's node app from Krea, so its rows validate against the app's inputs."""
    async with krea.async_client() as client:
        spec = await load_node_app(client, step.model, price_usd=step.price_usd)
    if not spec.fields:
        raise UnknownModelError(
            step.model,
            spec.kind,
            (),
            reason="Krea serves no input schema for this node app, so its rows cannot be checked",
        )


async def _run_step(
    context: dg.AssetExecutionContext,
    step: KreaStep,
    pipeline: KreaImagePipeline,
    krea: KreaResource,
    frame: pd.DataFrame,
    carried: Sequence[str],
    batch: str,
    base_dir: Path | None,
    config: KreaJobsConfig,
) -> pd.DataFrame:
    """Resolve references, validate, submit, collect: the step's manifest of sent rows."""
    if frame.empty:
        return pd.DataFrame(columns=[*MANIFEST_COLUMNS, *carried])
    ledger = pipeline.ledger
    async with krea.async_client() as client:
        resolver = AsyncReferenceResolver(
            client, ledger.upload_cache(krea.account_id), base_dir=base_dir
        )
        records = []
        for record in frame.to_dict(orient="records"):
            request = {str(k): v for k, v in record.items() if k not in carried}
            resolved, _ = await resolver.resolve_request(step.model, request)
            records.append({**{c: record[c] for c in carried}, **resolved})
    if resolver.uploads:
        context.log.info(
            f"{batch}: step {step.name}: uploaded {resolver.uploads} reference file(s)"
        )
    resolved_frame = pd.DataFrame.from_records(records)
    prepared = prepare_batch(
        resolved_frame,
        batch=batch,
        model=step.model,
        defaults=step.defaults,
        carry_columns=carried,
        origin=f"step {step.name}",
        price_usd=step.price_usd,
        max_usd_per_run=pipeline.max_usd_per_run,
        backend=krea.effective_base_url,  # uploads are URLs of the API's own host
    )
    prompts = prepared.table
    summary = await pipeline.submit(
        krea,
        prompts,
        batch=batch,
        regeneration_id=_regeneration_id(context, config),
        run_id=context.run.run_id,
        log=context.log,
    )
    if summary.stopped_by is not None:
        raise dg.Failure(
            description=f"step {step.name}, batch {batch!r} stopped: {summary.stopped_by}",
            allow_retries=False,
        )
    await pipeline.collect(
        krea,
        prompts,
        batch=batch,
        generation=summary.generation,
        run_id=context.run.run_id,
        log=context.log,
    )
    return pipeline.manifest(
        prompts, batch=batch, generation=summary.generation, carried=list(carried)
    )
