"""Resolve submissions whose outcome is unknown: the only reconciliation there is.

A POST that timed out, lost its connection, got a 5xx, or whose worker was killed between the
POST and the ledger write, may or may not have created a (billable) job at Krea. Krea has no
idempotency key and its jobs do not echo the request, so the only evidence is *time*: the job,
if it exists, was created while the last attempt of the request was in flight.

- no ``sent_at``: the worker stopped before sending (the time of every attempt is written
  before it goes out): **not created**, at once;
- a row's window is ``[sent_at, sent_at + 2 request windows]`` (later still after a late
  ``ambiguous_at``: see ``window_seconds``), in Krea's clock through offset bounds *measured*
  from Krea itself (``clock_bounds``): the ``Date`` headers of Krea's answers, recorded with
  the send (``krea_offset_*``), tightened by the rows of the same host Krea answered. Nothing
  is assumed: with no measurement, or with measurements that contradict each other (a clock
  was stepped), the window cannot be placed and the row is **reported**, never "not created";
- the unresolved rows of an account whose windows overlap form a **cluster**, decided together
  (``api.reconcile.decide_cluster``) from ``GET /jobs`` read over the cluster's windows and a
  guard band around them, never further back, minus every job the ledger knows;
- only jobs created before the **settled horizon** count: the earliest send of a row a live
  worker is sending right now (its job may be listed before its answer is recorded), and never
  later than Krea's clock now minus ``LISTING_LAG`` (a newer job may not be listed yet). Every
  job created before it belongs to a row of a cluster, to a row the ledger knows, or to another
  submitter. A window has closed once the horizon has passed its end;
- a job only one row of its cluster could have made is that row's (attributed, with its cost
  when completed), and so on while the windows force pairs; once the horizon has passed every
  window of a cluster, no unknown job left means **not created** (the prompt may be sent
  again), and jobs several rows could each have made mean those rows are **reported**;
- jobs the ledger does not know in the guard band around a cluster mean somebody else submits
  on this account (another ledger, a script): any job in the windows may be theirs, so the
  cluster is **reported** and the account's foreign-job count is raised. Unknown jobs are never
  cancelled;
- a node app's execution creates several jobs at once: once its window has closed, the unknown
  jobs in it (that no other row could have made) are **all its own** when there are as many as
  its latest answered execution made (any number when none was answered yet), and the row gets
  an output row per further job.

A cluster of one row is the single window of one submission: a lone unknown job in it is
attributed as soon as it is listed; nothing in it is "not created" once it has closed.

A reported row is terminal and unpaid, is never re-sent, and fails the batch's check with the
candidate job ids in its message; a person decides.
"""

import asyncio
import logging
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from krea_dagster.api import (
    AsyncKreaClient,
    BackendUnreachableError,
    Job,
    JobStatus,
    KreaError,
    catalog,
)
from krea_dagster.api.reconcile import ClusterDecision, SubmissionWindow, decide_cluster
from krea_dagster.engine.errors import ErrorCode
from krea_dagster.engine.ledger import JobUpdate, Ledger, Submission, SubmissionState, utcnow

__all__ = [
    "GUARD_BAND",
    "LISTING_LAG",
    "MEASUREMENT_MAX_AGE",
    "SEND_SLACK",
    "ClockBounds",
    "Outcome",
    "WindowUnplaceable",
    "clock_bounds",
    "measured_offset",
    "reconcile",
    "settle",
    "window_for",
    "window_seconds",
]

#: A measurement of Krea's clock older than this is taken again before it is relied on.
MEASUREMENT_MAX_AGE = 60.0
#: A window whose end is this far in the past is closed: a job created in it would be listed.
LISTING_LAG = timedelta(seconds=2)
#: While a window is open and shows no job, list it again this often.
RELIST_SECONDS = 1.0
#: How far around a window unknown jobs count as another submitter on the account.
GUARD_BAND = timedelta(seconds=30)
#: The most ``sent_at`` may precede the real send: the submitter writes it, and sends only if
#: the write took less than this (a slow database would otherwise push the real send, and the
#: job, past the window).
SEND_SLACK = timedelta(seconds=1)


def window_seconds(request_window: float) -> float:
    """How long after ``sent_at`` a job of that attempt can still appear at Krea.

    The request itself may take ``request_window`` (connect + write + read), and a server that
    is still working when the client gives up (a read timeout, a dropped connection, a killed
    worker) may create the job up to one more request window later: nothing the client sees
    proves the server has finished. So the window is twice the request window, plus the slack
    of the ``sent_at`` write. The submit lease lasts at least this long, so nobody reconciles a
    row whose job may still appear.
    """
    return 2 * request_window + SEND_SLACK.total_seconds()


@dataclass(frozen=True)
class ClockBounds:
    """Bounds on Krea's clock minus ours."""

    low: timedelta
    high: timedelta


class WindowUnplaceable(Exception):
    """The evidence does not place a row's window in Krea's clock; the message says why."""


async def measured_offset(client: AsyncKreaClient) -> ClockBounds | None:
    """Krea's clock minus this host's, from the ``Date`` of Krea's recent answers.

    Asks Krea once (``GET /jobs?limit=1``) when no answer is recent; None when it cannot,
    and ``BackendUnreachableError`` when the base URL never answered as Krea: the POST this
    measurement precedes is then never sent.
    """

    def recent() -> ClockBounds | None:
        bounds = client.clock_offset.bounds(now=client.clock.now(), max_age=MEASUREMENT_MAX_AGE)
        return None if bounds is None else ClockBounds(bounds.low, bounds.high)

    if recent() is None:
        try:
            await client.list_jobs(limit=1)
        except BackendUnreachableError:
            raise  # no Krea at the base URL: what would be sent next cannot reach it either
        except KreaError:
            return None
    return recent()


def clock_bounds(rows: list[Submission], measured: ClockBounds | None = None) -> ClockBounds:
    """The offset bounds all the evidence allows: ``measured`` (Krea's ``Date`` headers around
    the send) and the rows Krea answered from the same host.

    A job answered by Krea was created after its last attempt was sent and before the answer
    was recorded, so ``created_at - submitted_at <= offset <= created_at - sent_at``. Raises
    ``WindowUnplaceable`` when there is no evidence at all (nothing is assumed) or when the
    pieces contradict each other (a clock was stepped): no bound can be trusted then.
    """
    bounds = [measured] if measured is not None else []
    for row in rows:
        if row.krea_created_at is None or row.submitted_at is None or row.sent_at is None:
            continue
        bounds.append(
            ClockBounds(row.krea_created_at - row.submitted_at, row.krea_created_at - row.sent_at)
        )
    if not bounds:
        raise WindowUnplaceable(
            "the offset between this host's clock and Krea's was never measured for it (no "
            "Date header recorded with the send, no answered submission)"
        )
    low, high = max(b.low for b in bounds), min(b.high for b in bounds)
    if low > high:
        raise WindowUnplaceable(
            "the measurements of the offset between the sender's clock and Krea's contradict "
            "each other (a clock was stepped)"
        )
    # A little slack either way: the bounds come from a finite sample.
    margin = timedelta(milliseconds=250)
    return ClockBounds(low - margin, high + margin)


def window_for(
    row: Submission,
    bounds: ClockBounds,
    *,
    request_window: float,
    guard: timedelta,
    jobs: int | None = 1,
) -> SubmissionWindow:
    """The creation window of a sent, unresolved row, in Krea's clock (see ``window_seconds``)."""
    assert row.sent_at is not None
    end = row.sent_at + timedelta(seconds=window_seconds(request_window))
    if row.ambiguous_at is not None:
        # The client saw the failure then; the server may still create the job a request
        # window later. Never earlier than the plain window, though: ambiguous_at is written
        # after the fact and only ever widens what is known.
        end = max(end, row.ambiguous_at + timedelta(seconds=request_window) + SEND_SLACK)
    return SubmissionWindow(
        submitted_at=row.sent_at,
        start=row.sent_at + bounds.low,
        end=end + bounds.high,
        model=row.model,
        submission_id=row.submission_id,
        guard=guard,
        jobs=jobs,
    )


class Outcome(StrEnum):
    """What reconciling one row concluded."""

    ATTRIBUTED = "attributed"
    NOT_CREATED = "not_created"
    REPORTED = "reported"
    #: Somebody else resolved the row first (two reconcilers of one dead worker's row).
    ALREADY_RESOLVED = "already_resolved"


async def reconcile(
    client: AsyncKreaClient,
    ledger: Ledger,
    row: Submission,
    *,
    request_window: float,
    log: logging.Logger | Any,
    guard: timedelta = GUARD_BAND,
    patience: float | None = None,
) -> Outcome | None:
    """Decide whether an unresolved row's POST created a job, and write the answer.

    The row is decided with every unresolved row of its account whose window overlaps its own
    (its cluster). A job only it could have made is attributed as soon as it is listed; "not
    created" waits until the settled horizon has passed every window of the cluster (at least
    ``window_seconds`` after the send), listing again every ``RELIST_SECONDS``. With
    ``patience`` (seconds), None once that has passed undecided.
    """
    give_up = None if patience is None else client.clock.monotonic() + patience
    while True:
        outcomes = await reconcile_pass(
            client,
            ledger,
            row.account,
            request_window=request_window,
            log=log,
            guard=guard,
            focus={row.submission_id},
        )
        if row.submission_id in outcomes:
            return outcomes[row.submission_id]
        current = await asyncio.to_thread(ledger.get, row.submission_id)
        if not current.is_unresolved:
            return Outcome.ALREADY_RESOLVED
        if give_up is not None and client.clock.monotonic() > give_up:
            return None
        await asyncio.sleep(RELIST_SECONDS)


async def settle(
    client: AsyncKreaClient,
    ledger: Ledger,
    account: str,
    *,
    request_window: float,
    log: logging.Logger | Any,
    guard: timedelta = GUARD_BAND,
) -> list[Outcome]:
    """Reconcile the account's unresolved rows that no live worker holds (a dead worker's), each
    with its cluster, until every one of them is decided."""
    unresolved = await asyncio.to_thread(ledger.unresolved)
    held = await asyncio.to_thread(ledger.live_holders, account)
    targets = {
        row.submission_id
        for row in unresolved
        if row.account in (None, account) and row.submission_id not in held
    }
    outcomes: list[Outcome] = []
    while targets:
        decided = await reconcile_pass(
            client,
            ledger,
            account,
            request_window=request_window,
            log=log,
            guard=guard,
            focus=targets,
        )
        outcomes.extend(decided[sid] for sid in targets & decided.keys())
        left = await asyncio.to_thread(ledger.get_many, sorted(targets - decided.keys()))
        targets = {row.submission_id for row in left if row.is_unresolved}
        if targets:
            await asyncio.sleep(RELIST_SECONDS)
    return outcomes


@dataclass(frozen=True)
class _Placed:
    """An unresolved row and its window in Krea's clock."""

    row: Submission
    window: SubmissionWindow


async def reconcile_pass(
    client: AsyncKreaClient,
    ledger: Ledger,
    account: str | None,
    *,
    request_window: float,
    log: logging.Logger | Any,
    guard: timedelta = GUARD_BAND,
    focus: Collection[str],
) -> dict[str, Outcome]:
    """One look at Krea for the clusters of the account that hold a ``focus`` row: every row
    the evidence decides now is written; the outcomes by submission id."""
    started = client.clock.now()
    offset = await measured_offset(client)
    unresolved = [
        row for row in await asyncio.to_thread(ledger.unresolved) if row.account in (None, account)
    ]
    # Read after the rows: a row claimed in between is not in the list, and is sent (so its
    # job created) after ``started``, past the horizon. A ``focus`` row is not being sent,
    # whatever its lease says: its caller knows (its own lost answer, a dead worker's row).
    sending = await asyncio.to_thread(_sending, ledger, account) - set(focus)
    outcomes: dict[str, Outcome] = {}
    placed: list[_Placed] = []
    sending_starts: list[datetime] = []
    answered: dict[str | None, list[Submission]] = {}
    for row in unresolved:
        if row.submission_id in sending:
            if row.sent_at is None:
                continue
            try:
                window = await _place(client, ledger, row, request_window, guard, answered)
            except WindowUnplaceable:
                return outcomes  # a live send that cannot be placed: nothing is settled yet
            sending_starts.append(window.start)
            continue
        if row.sent_at is None:
            outcomes[row.submission_id] = await asyncio.to_thread(_never_sent, ledger, row)
            continue
        try:
            window = await _place(client, ledger, row, request_window, guard, answered)
        except WindowUnplaceable as unplaced:
            outcomes[row.submission_id] = await asyncio.to_thread(
                _unplaceable, ledger, row, unplaced, log
            )
            continue
        placed.append(_Placed(row, window))
    if offset is None:
        return outcomes  # Krea's clock could not be read: nothing is settled yet
    horizon = min([started + offset.low - LISTING_LAG, *sending_starts])
    for cluster in _clusters(placed):
        if not any(item.row.submission_id in focus for item in cluster):
            continue
        others = [item.window for item in placed if item not in cluster]
        outcomes.update(
            await _reconcile_cluster(
                client, ledger, cluster, others, horizon=horizon, guard=guard, log=log
            )
        )
    return outcomes


async def _place(
    client: AsyncKreaClient,
    ledger: Ledger,
    row: Submission,
    request_window: float,
    guard: timedelta,
    answered: dict[str | None, list[Submission]],
) -> SubmissionWindow:
    """The row's window in Krea's clock (``WindowUnplaceable`` when the evidence cannot say)."""
    measured = None
    if row.krea_offset_low is not None and row.krea_offset_high is not None:
        measured = ClockBounds(
            timedelta(seconds=row.krea_offset_low), timedelta(seconds=row.krea_offset_high)
        )
    elif row.owner_host == socket.gethostname():
        measured = await measured_offset(client)  # the sender's clock is this host's
    if row.owner_host not in answered:
        answered[row.owner_host] = await asyncio.to_thread(ledger.answered, row.owner_host)
    bounds = clock_bounds(answered[row.owner_host], measured)
    jobs: int | None = 1
    if catalog.node_app_id(row.model) is not None:
        jobs = await asyncio.to_thread(ledger.jobs_per_submission, row.model)
    return window_for(row, bounds, request_window=request_window, guard=guard, jobs=jobs)


def _clusters(placed: Sequence[_Placed]) -> list[list[_Placed]]:
    """The rows whose windows overlap, transitively: each cluster's windows cover one span."""
    clusters: list[list[_Placed]] = []
    end: datetime | None = None
    for item in sorted(placed, key=lambda item: item.window.start):
        assert item.window.end is not None
        if clusters and end is not None and item.window.start <= end:
            clusters[-1].append(item)
            end = max(end, item.window.end)
        else:
            clusters.append([item])
            end = item.window.end
    return clusters


async def _reconcile_cluster(
    client: AsyncKreaClient,
    ledger: Ledger,
    cluster: list[_Placed],
    others: Sequence[SubmissionWindow],
    *,
    horizon: datetime,
    guard: timedelta,
    log: logging.Logger | Any,
) -> dict[str, Outcome]:
    """List the jobs around one cluster, decide it, and write what is decided."""
    windows = [item.window for item in cluster]
    start = min(window.start for window in windows) - guard
    end = max(window.end for window in windows if window.end is not None) + guard
    listed = [
        job
        async for job in client.iter_jobs(
            created_after=start,
            created_before=min(end, horizon) + timedelta(milliseconds=1),
        )
        if job.created_at < horizon
    ]
    # Jobs the ledger learnt of since (a neighbour answered them) are known too; a row resolved
    # meanwhile makes the listing stale for its cluster: look again next time.
    known = await asyncio.to_thread(ledger.known_job_ids, start, end)
    rows = await asyncio.to_thread(ledger.get_many, [item.row.submission_id for item in cluster])
    now = {row.submission_id: _evidence(row) for row in rows}
    if any(now.get(item.row.submission_id) != _evidence(item.row) for item in cluster):
        return {}  # a row was answered, lost its answer or sent again since it was placed
    inside: list[Job] = []
    around: list[Job] = []
    for job in listed:
        if job.job_id in known:
            continue
        if any(window.contains(job.created_at) for window in windows):
            inside.append(job)
        elif not any(window.contains(job.created_at) for window in others):
            around.append(job)
    decision = decide_cluster(windows, inside, horizon=horizon, neighbours=around)
    if decision.doubtful:
        # Ours, but whose is unknown: cancelled before they complete they cost nothing, and the
        # rows they could belong to are sent again instead of reported once the windows close.
        now_known = await _cancel(client, decision.doubtful, log)
        inside = [now_known.get(job.job_id, job) for job in inside]
        decision = decide_cluster(windows, inside, horizon=horizon, neighbours=around)
    account = cluster[0].row.account
    if around and account and decision.decided:  # counted once, with the decision
        foreign = [job.job_id for job in around]
        await asyncio.to_thread(ledger.note_foreign_jobs, account, foreign)
        log.error(
            f"{len(foreign)} job(s) on Krea account {account} were not made through this "
            f"ledger ({', '.join(foreign[:5])}): another ledger or tool submits on this account. "
            "Point every krea-dagster instance of one account at one ledger database."
        )
    return await asyncio.to_thread(_apply, ledger, cluster, decision, log)


def _apply(
    ledger: Ledger, cluster: list[_Placed], decision: ClusterDecision, log: logging.Logger | Any
) -> dict[str, Outcome]:
    """Write each decided row (every write is guarded: a row resolved meanwhile is left)."""
    rows = {item.row.submission_id: item.row for item in cluster}
    outcomes: dict[str, Outcome] = {}
    for submission_id, result in decision.decided.items():
        row = rows[submission_id]
        if result.is_found and result.job is not None:
            job, more = result.job, result.jobs[1:]
            answer = JobUpdate.from_job(job).answer()
            if job.status == JobStatus.CANCELLED:
                # Found only once it ended unbilled: the prompt has nothing, and owes nothing.
                answer["error_code"] = ErrorCode.RECONCILED_CANCELLED.value
                answer["error_message"] = (
                    f"{result.reason}; Krea: {answer['error_message'] or 'cancelled'}"
                )
            outcome = _written(
                ledger.attribute(
                    submission_id,
                    more_jobs=[JobUpdate.from_job(other) for other in more],
                    **answer,
                ),
                Outcome.ATTRIBUTED,
            )
            if outcome is Outcome.ATTRIBUTED:
                made = ", ".join(found.job_id for found in result.jobs)
                log.info(f"reconciled submission {submission_id}: it created job(s) {made}")
        elif result.is_not_created:
            outcome = _written(
                ledger.mark_not_created(
                    submission_id,
                    code=ErrorCode.RECONCILED_NOT_CREATED,
                    message=f"no job was created in the request's window: {result.reason}",
                ),
                Outcome.NOT_CREATED,
            )
        else:
            outcome = _written(
                ledger.mark_reported(submission_id, message=result.reason), Outcome.REPORTED
            )
            if outcome is Outcome.REPORTED:
                log.error(
                    f"submission {submission_id} (prompt {row.prompt_key}) is reported, not "
                    f"re-sent: {result.reason}"
                )
        outcomes[submission_id] = outcome
    return outcomes


async def _cancel(
    client: AsyncKreaClient, jobs: Sequence[Job], log: logging.Logger | Any
) -> dict[str, Job]:
    """Cancel the jobs not finished yet and read each back: what Krea says of them now."""
    now_known: dict[str, Job] = {}
    for job in jobs:
        if job.is_terminal:
            continue
        try:
            await client.cancel_job(job.job_id)
        except KreaError as error:  # it finished meanwhile, most likely: read what it is now
            log.info(f"cancelling job {job.job_id} was refused: {error}")
        now_known[job.job_id] = await client.get_job(job.job_id)
        log.warning(
            f"job {job.job_id} could be the job of several unresolved submissions: cancelled "
            f"before it completed (now {now_known[job.job_id].status}), so it costs nothing and "
            "the prompts it could belong to are sent again instead of reported"
        )
    return now_known


def _never_sent(ledger: Ledger, row: Submission) -> Outcome:
    return _written(
        ledger.mark_not_created(
            row.submission_id,
            code=ErrorCode.RECONCILED_NOT_CREATED,
            message="the worker stopped before sending the POST: no job was created",
        ),
        Outcome.NOT_CREATED,
    )


def _unplaceable(
    ledger: Ledger, row: Submission, unplaced: WindowUnplaceable, log: logging.Logger | Any
) -> Outcome:
    assert row.sent_at is not None
    message = (
        f"{unplaced}, so the POST's window cannot be placed in Krea's clock and an unknown "
        f"job could be this row's: check GET /jobs around {row.sent_at.isoformat()} (the "
        f"clock of host {row.owner_host}) for a job with this request, then resolve the row"
    )
    outcome = _written(ledger.mark_reported(row.submission_id, message=message), Outcome.REPORTED)
    if outcome is Outcome.REPORTED:
        log.error(f"submission {row.submission_id}: {message}")
    return outcome


def _sending(ledger: Ledger, account: str | None) -> set[str]:
    """The rows a live worker is sending right now on the account (intents on a submit lane,
    their lease live): their jobs may be listed before their answers are recorded."""
    if account is None:
        return set()
    now = utcnow()
    return {
        lease.holder.submission_id
        for lease in ledger.leases(account)
        if lease.lane is not None
        and not lease.is_expired(now)
        and lease.holder.state == SubmissionState.INTENT
    }


def _evidence(row: Submission) -> tuple[Any, ...]:
    """What a row's window is placed from: when it changed, the window placed is stale."""
    return (row.submission_id, row.state, row.sent_at, row.ambiguous_at)


def _written(written: bool, outcome: Outcome) -> Outcome:
    return outcome if written else Outcome.ALREADY_RESOLVED
