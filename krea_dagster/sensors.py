"""Sensors: new batches start on their own, and no run holds a worker while Krea renders.

``build_krea_sensors`` makes, per node (named from its prefix):

- ``<prefix>_batch_discovery``: finds the node's batches. For a prompt-file folder it scans the
  files; for an unpartitioned table asset it reads the table's value when a new
  materialization of it appears. A new batch becomes a dynamic partition and a run (and, for a
  file, a runless materialization of the prompt_source partition), a changed batch (its
  content hash moved) a run again (prompt keys make it pay only for new or changed rows), a
  removed batch is reported in the tick and deleted only when ``delete_removed_batches`` is
  set. Partitions and runs come back in one ``SensorResult``; the run key is
  ``<batch>:<content hash>`` so no tick launches the same work twice. A file is read only when
  its size and mtime (an object store's ETag) move: the cursor keeps each file's fingerprint
  and what it held, so an unchanged file costs a ``stat``.
- ``<prefix>_completion``: the deferred path (Airflow's deferrable operator, done with a
  sensor), for every step of the node. It reads the pending jobs of every step from the
  ledger, polls them with ``poll_many`` (about one request per 1000 pending jobs) until a
  deadline (its budget, at most half of Dagster's sensor deadline) that every request and
  cancel of the tick obeys, records every status change, stores the outputs of the jobs it saw
  complete (before the same deadline, so a deferred batch is collected while it renders),
  reports progress per batch as runless observations of each step's jobs asset, and once a
  step's batch is done (every prompt its jobs run planned taken by Krea, or that run ended
  successfully; every job terminal) requests the run that collects it and submits the next
  step, never while the run it requested for the batch before is still going (the last step's run also materializes the
  ``completion_target``). It reads only the batches with work left (an indexed ledger query),
  so its cost follows the work, not the history. It never sleeps; its cursor is a small
  serialized record, and everything else it needs is in the ledger, so a daemon restart loses
  and repeats nothing.
"""

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from typing import Any, Self

import dagster as dg

from krea_dagster.api import JobStatus, KreaError
from krea_dagster.engine.ledger import JobUpdate, Submission, utcnow
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.run import run_coroutine
from krea_dagster.engine.source import FileScan, skipped_summary
from krea_dagster.node import KreaNodeAssets
from krea_dagster.partitions import recorded_source_versions, source_materialization, table_batches
from krea_dagster.resource import KreaResource

__all__ = [
    "CompletionCursor",
    "DiscoveryCursor",
    "build_krea_sensors",
    "completion_tick",
    "discovery_tick",
]

DEFAULT_TICK_BUDGET_SECONDS = 20.0
# Dagster abandons a sensor evaluation after this long unless its environment says otherwise.
DAGSTER_SENSOR_TIMEOUT_SECONDS = 60.0
# One poll_many call at most this many ids; the next tick resumes with the rest (rotation).
POLL_CHUNK = 20_000
CURSOR_VERSION = 1
#: Tags every run the completion sensor requests with the step and batch it collects
#: (``<scope>|<batch>``): no second one is requested while one is unfinished.
COLLECTS_TAG = "krea/collects"


@dataclass
class _Cursor:
    """A sensor cursor: a versioned dataclass stored as JSON."""

    version: int = CURSOR_VERSION

    def serialize(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, text: str | None, log: Any = None) -> Self:
        """A cursor from its JSON; an unreadable one starts fresh (run keys still dedupe)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            if data.get("version") != CURSOR_VERSION:
                raise ValueError(f"cursor version {data.get('version')}")
            # Fields this version does not know are dropped; missing ones take their default
            # (a cursor written before a field existed still parses).
            known = {item.name for item in fields(cls)}
            return cls(**{key: value for key, value in data.items() if key in known})
        except (ValueError, TypeError, AttributeError) as error:
            if log is not None:
                log.warning(f"ignoring an unreadable sensor cursor ({error}); starting fresh")
            return cls()


@dataclass
class DiscoveryCursor(_Cursor):
    """The content hash of every batch the discovery sensor has launched, and what each file
    held under its fingerprint (``FileScan.to_json``), so an unchanged file is not read again;
    for a table, the storage id of the materialization last read."""

    hashes: dict[str, str] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    table_event: int = 0

    def file_scans(self) -> dict[str, FileScan]:
        """The recorded file scans; an entry that does not parse is read again."""
        if not isinstance(self.files, dict):
            return {}
        scans = {name: FileScan.from_json(data) for name, data in self.files.items()}
        return {name: scan for name, scan in scans.items() if scan is not None}


@dataclass
class CompletionCursor(_Cursor):
    """The run last requested per step and batch (``<scope>|<batch>``), the batches whose
    every job is terminal but whose jobs run is still going (looked at again each tick until
    it ends), and where the next tick starts polling."""

    requested: dict[str, str] = field(default_factory=dict)
    offset: int = 0
    waiting: list[str] = field(default_factory=list)


# -- discovery ----------------------------------------------------------------------------------


def discovery_tick(
    context: dg.SensorEvaluationContext,
    assets: KreaNodeAssets,
    *,
    delete_removed: bool,
    run_asset_keys: Sequence[dg.AssetKey],
) -> dg.SensorResult:
    """One evaluation of the discovery sensor (a pure function of the source, the partitions and
    the cursor): new batches become partitions and runs, changed ones runs again."""
    cursor = DiscoveryCursor.parse(context.cursor, context.log)
    partitions_name = getattr(assets.partitions_def, "name", None) or ""
    existing = set(context.instance.get_dynamic_partitions(partitions_name))
    observations: list[dg.AssetMaterialization] = []
    problems: list[str] = []
    skipped: list[Any] = []
    if assets.source is not None:
        source = assets.node.files
        # Only files whose fingerprint moved are read; gone files drop out of the cursor.
        scans = source.scan_files(cursor.file_scans())
        found, file_problems = source.batches_from(scans)
        skipped = source.skipped()
        hashes = {batch: info.content_hash for batch, info in found.items()}
        problems = [f"{problem.file}: {problem.message}" for problem in file_problems]
        next_cursor = DiscoveryCursor(
            hashes=hashes, files={name: scan.to_json() for name, scan in scans.items()}
        )
        # A batch this sensor has not seen yet but that was registered elsewhere (krea-dagster
        # register-batches, scripts/demo) is compared with the version recorded for its file,
        # so a first tick does not re-run batches that are already up to date.
        unseen = [batch for batch in hashes if batch in existing and batch not in cursor.hashes]
        known = {**recorded_source_versions(context.instance, assets, unseen), **cursor.hashes}
    else:
        read = _read_table(context, assets, cursor)
        if isinstance(read, str):
            return dg.SensorResult(cursor=cursor.serialize(), skip_reason=read)
        hashes, problems, event = read
        next_cursor = DiscoveryCursor(hashes=hashes, table_event=event)
        # Batches registered before this sensor's first read (krea-dagster register-batches)
        # count as seen at this version: only a later change of their rows launches them.
        known = {**{b: hashes.get(b) for b in existing}, **cursor.hashes}
    new = sorted(set(hashes) - existing)
    changed = sorted(
        batch
        for batch, digest in hashes.items()
        if batch in existing and known.get(batch) != digest
    )
    removed = sorted((existing | set(cursor.hashes)) - set(hashes))
    run_requests = [
        dg.RunRequest(
            partition_key=batch,
            run_key=f"{batch}:{hashes[batch]}",
            asset_selection=list(run_asset_keys),
            tags={"krea/batch": batch, "krea/content_hash": hashes[batch]},
        )
        for batch in [*new, *changed]
    ]
    if assets.source is not None:
        observations = [
            source_materialization(assets, batch, found[batch]) for batch in [*new, *changed]
        ]
    partition_requests: list[Any] = []
    dynamic = assets.partitions_def
    if isinstance(dynamic, dg.DynamicPartitionsDefinition):
        if new:
            partition_requests.append(dynamic.build_add_request(new))
        if removed and delete_removed:
            partition_requests.append(
                dynamic.build_delete_request([b for b in removed if b in existing])
            )
    # One line each, whatever the number of files: the first few, and counts.
    if problems:
        context.log.warning(_summarized("batches not read", problems))
    if skipped:
        context.log.warning(f"prompt source: {skipped_summary(skipped)}")
    if removed:
        verb = "deleting" if delete_removed else "kept (set delete_removed_batches to delete)"
        context.log.warning(f"batches no longer in the source: {_names(removed)}; {verb}")
    summary = _discovery_summary(new, changed, removed, problems, delete_removed, skipped)
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=partition_requests,
        asset_events=observations,
        cursor=next_cursor.serialize(),
        skip_reason=None if run_requests else summary,
    )


def _read_table(
    context: dg.SensorEvaluationContext, assets: KreaNodeAssets, cursor: DiscoveryCursor
) -> tuple[dict[str, str], list[str], int] | str:
    """The batches of the node's table (batch -> content hash), problems, and the storage id of
    the materialization read; or why nothing was read (a skip reason)."""
    key = assets.table_key
    assert key is not None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key), limit=1, ascending=False
    ).records
    if not records:
        return (
            f"the table {key.to_user_string()} has not been materialized yet: materialize it, "
            "and its batches are discovered at the next tick"
        )
    event = records[0].storage_id
    if event == cursor.table_event:
        return f"no new materialization of {key.to_user_string()} since the last tick"
    if context.repository_def is None:
        return "no repository to load the table from"
    try:
        table = context.repository_def.load_asset_value(key, instance=context.instance)
        hashes, problems = table_batches(assets, table)
    except Exception as error:  # the user's IO manager or table: report, never crash the tick
        message = f"could not read the batches of {key.to_user_string()}: {error}"
        context.log.warning(message)
        return message
    return hashes, problems, event


def _summarized(what: str, entries: Sequence[str], limit: int = 10) -> str:
    """One log line for any number of entries: how many, and the first ``limit``."""
    shown = "; ".join(entries[:limit])
    more = f"; and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{what} ({len(entries)}): {shown}{more}"


def _discovery_summary(
    new: list[str],
    changed: list[str],
    removed: list[str],
    problems: list[str],
    delete: bool,
    skipped: Sequence[Any] = (),
) -> str:
    parts = []
    if removed:
        parts.append(f"removed from the source: {_names(removed)}" + ("" if delete else " (kept)"))
    if problems:
        parts.append(_summarized("not read", problems))
    if skipped:
        parts.append("not read: " + skipped_summary(skipped))
    if not (new or changed):
        parts.insert(0, "no new or changed batches")
    return ". ".join(parts)


def _names(names: Sequence[str], limit: int = 20) -> str:
    text = ", ".join(names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


# -- completion ---------------------------------------------------------------------------------


def completion_tick(
    context: dg.SensorEvaluationContext,
    assets: KreaNodeAssets,
    krea: KreaResource,
    *,
    budget_seconds: float,
    run_selections: Sequence[Sequence[dg.AssetKey]],
    store_images: bool = True,
) -> dg.SensorResult:
    """One evaluation of the completion sensor over every step of a node.

    ``run_selections[i]`` is what the run of step ``i``'s finished batch materializes (its
    outputs, then the next step's prompts and jobs, or the rest of the chain). With
    ``store_images`` (the deferred path) the tick also stores the outputs of the jobs that
    completed, within the tick's budget, so the outputs run of a finished batch has little or
    nothing left to download; with inline collection the outputs run does that itself.
    """
    started = time.monotonic()
    deadline = tick_deadline(budget_seconds, started=started)
    pipelines = [step.pipeline for step in assets.step_assets]
    ledger = pipelines[0].ledger
    cursor = CompletionCursor.parse(context.cursor, context.log)
    pending = [row for pipeline in pipelines for row in ledger.pending(pipeline.scope)]
    pending.sort(key=lambda row: row.krea_created_at or row.intent_at, reverse=True)
    polled = 0
    finished: set[str] = set()  # job ids this tick saw terminal
    changed: set[tuple[str, str]] = set()  # (scope, batch)
    offset = cursor.offset if cursor.offset < len(pending) else 0
    order = pending[offset:] + pending[:offset]
    client = krea.get_client()
    # The deadline reaches every request (poll_many clips their timeouts and stops sending
    # when it passes), so one slow page cannot carry the tick past Dagster's deadline.
    while polled < len(order) and time.monotonic() < deadline:
        chunk = order[polled : polled + POLL_CHUNK]
        ids = [row.job_id for row in chunk if row.job_id]
        created = [row.krea_created_at for row in chunk if row.job_id and row.krea_created_at]
        try:
            jobs = client.poll_many(
                ids,
                created_after=min(created) if created else None,
                # Pages start above the newest of these jobs: a tick resumes where the last
                # one stopped, not at the account's newest (already polled) jobs.
                created_before=max(created) if created and len(created) == len(ids) else None,
                deadline=deadline,
            )
        except KreaError as error:
            context.log.warning(f"polling Krea failed, next tick retries: {error}")
            break
        for row in ledger.update_jobs([JobUpdate.from_job(job) for job in jobs]):
            changed.add((row.scope, row.batch))
        finished.update(job.job_id for job in jobs if job.is_terminal)
        reached = _reached(chunk, {job.job_id for job in jobs})
        polled += reached
        if reached < len(chunk):
            break  # the deadline stopped poll_many part way
    if polled < len(order):
        context.log.info(
            f"tick deadline ({deadline - started:.1f} s) reached after {polled} of "
            f"{len(order)} pending jobs; the next tick continues from there"
        )
    next_offset = (offset + polled) % len(order) if order and polled < len(order) else 0
    still_pending = [row for row in pending if row.job_id not in finished]
    changed |= _handle_poll_timeouts(context, assets, krea, still_pending, deadline)

    run_requests: list[dg.RunRequest] = []
    observations: list[dg.AssetObservation] = []
    stored = 0
    requested: dict[str, str] = {}
    waiting: list[str] = []
    for index, step in enumerate(assets.step_assets):
        pipeline = step.pipeline
        scope = pipeline.scope
        # Only the batches with work left (the ledger's partial index), those this tick
        # changed (a last job that failed leaves a batch with nothing open) and those waiting
        # for their jobs run to end: never the history.
        work = dict(ledger.open_batches(scope))
        touched = {batch for where, batch in changed if where == scope}
        waited = {slot.split("|", 1)[1] for slot in cursor.waiting if slot.startswith(scope + "|")}
        work.update(ledger.current_generations(scope, (touched | waited) - set(work)))
        batch_rows = {
            batch: list(pipeline.latest(batch, generation).values())
            for batch, generation in sorted(work.items())
        }
        if store_images:
            stored += _store_finished(context, pipeline, krea, batch_rows, finished, deadline)
        for batch, rows in batch_rows.items():
            generation = work[batch]
            if not rows:
                continue
            slot = f"{scope}|{batch}"
            if slot in cursor.requested:
                requested[slot] = cursor.requested[slot]
            counts = Counter(_progress_state(row) for row in rows)
            if batch in touched:
                observations.append(
                    dg.AssetObservation(
                        asset_key=step.jobs.key,
                        partition=batch,
                        metadata={
                            "generation": generation,
                            "pending": counts["pending"],
                            "completed": counts["completed"],
                            "failed": counts["failed"],
                            "unresolved": counts["unresolved"],
                            "images_stored": sum(1 for row in rows if row.image_uri),
                        },
                    )
                )
            if counts["pending"] or counts["unresolved"]:
                continue
            if (
                not any(row.state == JobStatus.COMPLETED and not row.image_uri for row in rows)
                and batch not in touched
                and batch not in waited
            ):
                continue  # nothing new to collect for this batch
            progress = ledger.plan_progress(scope, batch, generation)
            if progress.unsent:
                # Krea has not taken every prompt the batch's jobs run planned: that run is
                # on its way (or between two rounds, or died and its retry has not sent the
                # rest yet), so the batch is not done, whatever its rows say. Once the run
                # succeeded, what it left unsent (its rounds ran out) is final for this plan;
                # while it runs, the batch is looked at again every tick.
                status = _run_status(context, progress.run_id)
                if status in _UNFINISHED_RUN_STATUSES:
                    waiting.append(slot)
                if status != dg.DagsterRunStatus.SUCCESS:
                    continue
            watermark = max(row.updated_at for row in rows).strftime("%Y%m%dT%H%M%S%f")
            run_key = f"{scope}:{batch}:g{generation}:{watermark}"
            if requested.get(slot) == run_key:
                continue
            if _collecting(context, slot):
                # A run this sensor requested is collecting the batch: it stores its outputs
                # and waits for what it re-sent itself (transient failures). A second run now
                # would collect the same batch twice; once it has finished, what is left (if
                # anything) gets a run of its own.
                continue
            requested[slot] = run_key
            run_requests.append(
                dg.RunRequest(
                    partition_key=batch,
                    run_key=run_key,
                    asset_selection=list(run_selections[index]),
                    tags={
                        "krea/batch": batch,
                        "krea/generation": str(generation),
                        COLLECTS_TAG: slot,
                        **({"krea/step": step.step.name} if step.step.name else {}),
                    },
                )
            )
    summary = (
        f"{len(pending)} pending job(s), polled {polled}, stored {stored} output(s) in "
        f"{time.monotonic() - started:.1f} s, {len(run_requests)} run(s) requested"
    )
    context.log.info(summary)
    return dg.SensorResult(
        run_requests=run_requests,
        asset_events=observations,
        # Entries of batches with nothing left to do are dropped: the cursor stays small.
        cursor=CompletionCursor(
            requested=requested, offset=next_offset, waiting=waiting
        ).serialize(),
        skip_reason=None if run_requests else summary,
    )


def _store_finished(
    context: dg.SensorEvaluationContext,
    pipeline: KreaImagePipeline,
    krea: KreaResource,
    batch_rows: dict[str, list[Submission]],
    finished: set[str],
    deadline: float,
) -> int:
    """Store the outputs of completed jobs of batches still rendering, and of the jobs this tick
    saw complete, until ``deadline``; re-reads those batches' rows. Returns outputs stored.

    A batch all of whose jobs were already terminal before this tick is left to its outputs run
    (requested once it is terminal), so the tick and that run never download the same rows.
    """
    todo: list[Submission] = []
    for rows in batch_rows.values():
        rendering = any(not row.is_terminal for row in rows)
        todo.extend(
            row
            for row in rows
            if row.state == JobStatus.COMPLETED
            and row.image_uri is None
            and row.error_code is None
            and (rendering or row.job_id in finished)
        )
    if not todo or time.monotonic() >= deadline:
        return 0
    report = run_coroutine(pipeline.store_completed(krea, todo, deadline=deadline, log=context.log))
    for batch in {row.batch for row in todo}:
        generation = batch_rows[batch][0].generation
        batch_rows[batch] = list(pipeline.latest(batch, generation).values())
    return report.downloaded


def tick_deadline(budget_seconds: float, *, started: float | None = None) -> float:
    """The ``time.monotonic()`` by which a completion tick stops calling Krea.

    ``started + budget_seconds``, but never later than half of Dagster's own sensor deadline
    (``DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS``, else ``DAGSTER_GRPC_TIMEOUT_SECONDS``, else 60 s):
    the other half is for the ledger work after polling and the answer's trip to the daemon.
    """
    start = time.monotonic() if started is None else started
    return start + min(budget_seconds, dagster_sensor_timeout() / 2)


def dagster_sensor_timeout() -> float:
    """Seconds Dagster gives a sensor evaluation before it abandons the tick (its gRPC deadline)."""
    for name in ("DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS", "DAGSTER_GRPC_TIMEOUT_SECONDS"):
        value = os.environ.get(name)
        if value:
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError(
                    f"{name}={value!r} is not a number of seconds; set it to an integer such "
                    "as 60 or unset it"
                ) from None
            if seconds > 0:
                return seconds
    return DAGSTER_SENSOR_TIMEOUT_SECONDS


def _reached(chunk: Sequence[Submission], polled_ids: set[str]) -> int:
    """How many leading rows of ``chunk`` were polled: the next poll starts after them."""
    for index, row in enumerate(chunk):
        if row.job_id and row.job_id not in polled_ids:
            return index
    return len(chunk)


_UNFINISHED_RUN_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _run_status(context: dg.SensorEvaluationContext, run_id: str | None) -> Any:
    """The status of run ``run_id`` (None: no run id, or a run this instance does not know)."""
    if not run_id:
        return None
    run = context.instance.get_run_by_id(run_id)
    return None if run is None else run.status


def _collecting(context: dg.SensorEvaluationContext, slot: str) -> bool:
    """Whether a run this sensor requested for the step's batch ``slot`` has not finished yet
    (found by its tag in the instance, whatever the cursor remembers)."""
    runs = context.instance.get_runs(
        filters=dg.RunsFilter(tags={COLLECTS_TAG: slot}, statuses=_UNFINISHED_RUN_STATUSES),
        limit=1,
    )
    return bool(runs)


def _progress_state(row: Submission) -> str:
    if row.is_unresolved:
        return "unresolved"
    if row.state in (JobStatus.COMPLETED,):
        return "completed"
    if row.is_terminal:
        return "failed"
    return "pending"


def _handle_poll_timeouts(
    context: dg.SensorEvaluationContext,
    assets: KreaNodeAssets,
    krea: KreaResource,
    pending: Sequence[Submission],
    deadline: float | None = None,
) -> set[tuple[str, str]]:
    """Jobs pending longer than poll_timeout: cancelled or reported, per the resource. Returns
    the (scope, batch) of every cancelled job.

    The cancels stop at ``deadline`` (monotonic); the rest wait for the next tick.

    ``pending`` is the tick's own list minus what its polls saw finish: reading every pending
    row from the ledger a second time was a quarter of a 10,000-job tick.
    """
    by_scope = {step.pipeline.scope: step.pipeline for step in assets.step_assets}
    now = utcnow()
    touched: set[tuple[str, str]] = set()
    for scope, pipeline in by_scope.items():
        timeout = timedelta(seconds=krea.poll_timeout or pipeline.default_wait_timeout)
        overdue = [
            row
            for row in pending
            if row.scope == scope and now - (row.krea_created_at or row.intent_at) > timeout
        ]
        if not overdue:
            continue
        if krea.on_poll_timeout != "cancel":
            context.log.warning(
                f"{len(overdue)} job(s) of {scope} pending longer than {timeout}: "
                + ", ".join(row.job_id or "?" for row in overdue[:20])
            )
            continue
        cancelled = {
            job.job_id for job in pipeline.cancel(krea, overdue, log=context.log, deadline=deadline)
        }
        context.log.warning(
            f"cancelled {len(cancelled)} job(s) of {scope} pending longer than {timeout}"
        )
        touched |= {(scope, row.batch) for row in overdue if row.job_id in cancelled}
    return touched


# -- builder ------------------------------------------------------------------------------------


def build_krea_sensors(
    assets: KreaNodeAssets,
    *,
    discovery: bool = True,
    completion: bool = True,
    deferred: bool = True,
    discovery_target: Sequence[Any] | None = None,
    completion_target: Sequence[Any] | None = None,
    discovery_interval_seconds: int = 30,
    completion_interval_seconds: int = 10,
    tick_budget_seconds: float = DEFAULT_TICK_BUDGET_SECONDS,
    collect_in_tick: bool = True,
    delete_removed_batches: bool = False,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> list[dg.SensorDefinition]:
    """The discovery and completion sensors of one node.

    Args:
        deferred: no run waits for Krea: discovery launches the first step's prompts and jobs,
            and the completion sensor launches, once a step's batch is done, the run that
            collects it and submits the next step. With False, discovery launches the whole
            chain and each outputs step polls inline.
        discovery_target: what discovery's runs materialize (default: as above).
        completion_target: what the run of the last step's finished batch materializes, to add
            your own downstream assets (default: the last step's outputs).
        tick_budget_seconds: time a completion tick may spend calling Krea (polls, poll-timeout
            cancels and the downloads of ``collect_in_tick``), capped at half of Dagster's
            sensor deadline (60 s unless ``DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS`` says
            otherwise). Every request of the tick is bounded by it.
        collect_in_tick: with ``deferred``, the completion tick also downloads, verifies and
            stores the outputs of the jobs it saw complete, within the same budget, so a
            finished batch's run has (nearly) nothing left to download. False leaves every
            download to the outputs runs (a sensor process that should not fetch images).
    """
    if not tick_budget_seconds > 0:
        raise ValueError(
            f"tick_budget_seconds must be a positive number of seconds, got "
            f"{tick_budget_seconds!r}; the default is {DEFAULT_TICK_BUDGET_SECONDS:g}"
        )
    prefix = assets.prefix
    steps = assets.step_assets
    everything = [asset for step in steps for asset in step.assets]
    first = [steps[0].prompts, steps[0].jobs] if deferred else everything
    discovery_assets = list(discovery_target or first)
    # The run of step i's finished batch: its outputs, then the next step's submission (or, not
    # deferred, the rest of the chain); the last step's run is the completion target.
    selections: list[list[dg.AssetKey]] = []
    for index, step in enumerate(steps):
        if index == len(steps) - 1:
            selections.append(_keys(completion_target or [step.images]))
        elif deferred:
            following = steps[index + 1]
            selections.append(_keys([step.images, following.prompts, following.jobs]))
        else:
            later = [asset for rest in steps[index + 1 :] for asset in rest.assets]
            selections.append(_keys([step.images, *later]))
    sensors: list[dg.SensorDefinition] = []
    if discovery:
        discovery_keys = _keys(discovery_assets)
        where = (
            assets.node.files.directory
            if assets.source is not None
            else f"the table {assets.table_key.to_user_string() if assets.table_key else ''}"
        )

        @dg.sensor(
            name=f"{prefix}_batch_discovery",
            minimum_interval_seconds=discovery_interval_seconds,
            default_status=default_status,
            target=discovery_assets,
            description=f"Adds a partition and launches a run for each new or changed batch in {where}.",
        )
        def batch_discovery(context: dg.SensorEvaluationContext) -> dg.SensorResult:
            return discovery_tick(
                context,
                assets,
                delete_removed=delete_removed_batches,
                run_asset_keys=discovery_keys,
            )

        sensors.append(batch_discovery)
    if completion:
        targets = list(dict.fromkeys(key for selection in selections for key in selection))

        @dg.sensor(
            name=f"{prefix}_completion",
            minimum_interval_seconds=completion_interval_seconds,
            default_status=default_status,
            target=targets,
            required_resource_keys=assets.krea.required_keys,
            description=(
                "Polls the pending Krea jobs of every step from the ledger and launches the run "
                "of each finished batch (its outputs, then the next step)."
            ),
        )
        def completion_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
            krea = assets.krea.get(context)
            return completion_tick(
                context,
                assets,
                krea,
                budget_seconds=tick_budget_seconds,
                run_selections=selections,
                store_images=deferred and collect_in_tick,
            )

        sensors.append(completion_sensor)
    return sensors


def _keys(targets: Sequence[Any]) -> list[dg.AssetKey]:
    keys: list[dg.AssetKey] = []
    for target in targets:
        if isinstance(target, dg.AssetsDefinition):
            keys.extend(target.keys)
        elif isinstance(target, dg.AssetSpec):
            keys.append(target.key)
        else:
            keys.append(dg.AssetKey.from_coercible(target))
    return keys
