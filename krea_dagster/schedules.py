"""Scheduled regeneration: a schedule that refreshes chosen batches, with its cost known up front.

``build_krea_regeneration_schedule`` evaluates, on a cron, every selected batch of a node (a
prompt-file folder or a table asset: the first step's rows are validated and priced as the run
would):

- mode ``changed``: only batches whose source has prompts without a job in the current
  generation (new or edited rows). The run pays only for those rows; unchanged rows keep their
  outputs, and later steps pay only for the rows downstream of a change.
- mode ``all``: a new generation of every selected batch (the ``krea/regenerate`` tag): every
  prompt is submitted again, with a new seed when its request has none.

Each tick logs the estimated cost per batch and in total, and skips (with a log line) any batch
whose estimate is above the instance's ``max_usd_per_run``, the same guard the jobs asset applies.

The declarative alternative is ``automation_condition=dg.AutomationCondition.eager()`` on the
builder: the prompts, jobs and images of a batch refresh as soon as the discovery sensor
observes a new version of its prompt file. Costs compared (see the README):

==================================  ==============================================================
``eager()``                          refreshes a batch when (and only when) its file changed; pays
                                     for changed rows only
this schedule, mode ``changed``      the same work, but batched on a cron (e.g. nightly)
this schedule, mode ``all``          a full new generation of every selected batch per tick: the
                                     whole batch is paid again
``cron_tick_passed``                 like ``all`` for **every** dynamic partition on each tick (the
                                     cost of the whole prompt library); avoid for paid generation
==================================  ==============================================================
"""

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import dagster as dg

from krea_dagster.api import UnknownModelError
from krea_dagster.engine.prompts import PromptValidationError
from krea_dagster.engine.references import ImageReferenceError
from krea_dagster.engine.source import PromptSourceError
from krea_dagster.execution import REGENERATE_TAG, REGENERATION_ID_TAG
from krea_dagster.node import KreaNodeAssets

__all__ = ["BatchSelector", "build_krea_regeneration_schedule", "plan_regeneration"]

BatchSelector = Sequence[str] | Callable[[list[str]], list[str]] | None
Mode = Literal["changed", "all"]


def plan_regeneration(
    assets: KreaNodeAssets,
    batch: str,
    mode: Mode,
    *,
    table: Any = None,
    partitioned: bool = False,
) -> tuple[int, float] | None:
    """(prompts to submit, estimated USD) of the node's first step for one batch, or None when
    there is nothing to do. ``table`` is the table's value, for a node over a table."""
    pipeline = assets.pipeline
    prepared = assets.node.prepare(0, batch, table=table, partitioned=partitioned)
    table = prepared.table
    if mode == "all":
        return len(table), prepared.estimated_usd
    generation = pipeline.ledger.current_generation(pipeline.scope, batch)
    planned = pipeline.plan(table, max(generation, 1))
    todo = pipeline.needs_submission(planned, batch, max(generation, 1))
    if not todo:
        return None
    return len(todo), sum(p.estimated_usd or 0.0 for p in todo)


def build_krea_regeneration_schedule(
    assets: KreaNodeAssets,
    *,
    cron_schedule: str,
    mode: Mode = "changed",
    batches: BatchSelector = None,
    target: Sequence[Any] | None = None,
    name: str | None = None,
    execution_timezone: str | None = None,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """A schedule that regenerates the selected batches of one node.

    Args:
        cron_schedule: when, e.g. ``"0 3 * * *"``.
        mode: ``changed`` (pay for new or edited prompts only) or ``all`` (a new generation).
        batches: batch names, a function choosing among the existing ones, or None for all.
        target: what the runs materialize (default: every step of the node; with the
            completion sensor running, the first step's prompts and jobs are enough).
    """
    if mode not in ("changed", "all"):
        raise ValueError(f"mode must be 'changed' or 'all', not {mode!r}")
    pipeline = assets.pipeline
    targets = list(target or [asset for step in assets.step_assets for asset in step.assets])
    keys = [
        key for t in targets for key in (t.keys if isinstance(t, dg.AssetsDefinition) else [t.key])
    ]

    @dg.schedule(
        name=name or f"{assets.prefix}_regenerate_{mode}",
        cron_schedule=cron_schedule,
        target=targets,
        execution_timezone=execution_timezone,
        default_status=default_status,
        description=(
            f"Regenerates {'every selected batch' if mode == 'all' else 'changed prompts of each selected batch'} "
            f"of {assets.prefix}; logs the estimated cost of each tick."
        ),
    )
    def regenerate(context: dg.ScheduleEvaluationContext) -> dg.SkipReason | list[dg.RunRequest]:
        existing = _batches(context, assets)
        chosen = _select(existing, batches)
        tick = (
            context.scheduled_execution_time.isoformat()
            if context.scheduled_execution_time
            else "now"
        )
        requests: list[dg.RunRequest] = []
        total = 0.0
        for batch in chosen:
            try:
                plan = plan_regeneration(assets, batch, mode, **_table_of(context, assets, batch))
            except (PromptSourceError, PromptValidationError, ImageReferenceError) as error:
                context.log.warning(f"{batch}: not regenerated, its prompts are invalid: {error}")
                continue
            except UnknownModelError as error:
                # A schedule plans with the bundled catalog (it has no resource to read the
                # backend's live one): a model only the live catalog knows is not planned here.
                context.log.warning(f"{batch}: not regenerated, cannot be planned: {error}")
                continue
            if plan is None:
                context.log.info(f"{batch}: nothing changed since its last generation")
                continue
            count, estimate = plan
            cap = pipeline.max_usd_per_run
            if cap is not None and estimate > cap:
                context.log.warning(
                    f"{batch}: skipped, {count} prompt(s) estimated at ${estimate:.4f} exceed "
                    f"max_usd_per_run ${cap:.4f}"
                )
                continue
            context.log.info(f"{batch}: {count} prompt(s) to generate, estimated ${estimate:.4f}")
            total += estimate
            tags = {"krea/batch": batch, "krea/estimated_usd": f"{estimate:.6f}"}
            if mode == "all":
                tags[REGENERATE_TAG] = "true"
                run_key = f"{batch}:all:{tick}"
                # One id per tick and batch: a retried run of this tick reuses its generation.
                tags[REGENERATION_ID_TAG] = f"{assets.prefix}:{run_key}"
            else:
                digest = hashlib.sha256(f"{batch}:{count}:{estimate}:{tick}".encode()).hexdigest()[
                    :12
                ]
                run_key = f"{batch}:changed:{digest}"
            requests.append(
                dg.RunRequest(partition_key=batch, run_key=run_key, tags=tags, asset_selection=keys)
            )
        context.log.info(f"tick estimate: {len(requests)} batch run(s), ${total:.4f} in total")
        if not requests:
            return dg.SkipReason(f"no batch to regenerate (mode {mode}, {len(chosen)} selected)")
        return requests

    return regenerate


def _batches(context: dg.ScheduleEvaluationContext, assets: KreaNodeAssets) -> list[str]:
    partitions = assets.partitions_def
    if isinstance(partitions, dg.DynamicPartitionsDefinition):
        return sorted(context.instance.get_dynamic_partitions(partitions.name or ""))
    return sorted(partitions.get_partition_keys(dynamic_partitions_store=context.instance))


def _table_of(
    context: dg.ScheduleEvaluationContext, assets: KreaNodeAssets, batch: str
) -> dict[str, Any]:
    """The table a node over a table validates a batch with (its value, and whether it is the
    batch's own partition)."""
    key = assets.table_key
    if key is None:
        return {}
    repository = context.repository_def
    partitioned = repository.asset_graph.get(key).partitions_def is not None
    table = repository.load_asset_value(
        key, instance=context.instance, partition_key=batch if partitioned else None
    )
    return {"table": table, "partitioned": partitioned}


def _select(existing: list[str], batches: BatchSelector) -> list[str]:
    if batches is None:
        return existing
    if callable(batches):
        return [b for b in batches(existing) if b in existing]
    return [b for b in batches if b in existing]
