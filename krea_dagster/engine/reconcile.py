"""Resolve a submission whose outcome is unknown: the only reconciliation there is.

A POST that timed out, lost its connection, got a 5xx, or whose worker was killed between the
POST and the ledger write, may or may not have created a (billable) job at Krea. Krea has no
idempotency key and its jobs do not echo the request, so the only evidence is *time*: the job,
if it exists, was created while the last attempt of the request was in flight.

The submit lease (``krea_dagster.engine.ledger``) makes this simple: at most one submission per
account is unresolved at any moment, so one window decides it.

- no ``sent_at``: the worker stopped before sending (the time of every attempt is written
  before it goes out): **not created**, at once;
- the window is ``[sent_at, sent_at + 2 request windows]`` (later still after a late
  ``ambiguous_at``: see ``window_seconds``), in Krea's clock through offset bounds *measured*
  from Krea itself (``clock_bounds``): the ``Date`` headers of Krea's answers, recorded with
  the send (``krea_offset_*``), tightened by the rows of the same host Krea answered. Nothing
  is assumed: with no measurement, or with measurements that contradict each other (a clock
  was stepped), the window cannot be placed and the row is **reported**, never "not created";
- once the window has closed, ``GET /jobs`` is read from the window's end back to its start
  (never further: the look-back is bounded by the window), excluding every job the ledger
  knows: none means **not created** (the prompt may be sent again); exactly one means **it is
  ours** (attributed, with its cost when completed); more means **reported**;
- jobs the ledger does not know in a guard band around the window mean somebody else submits
  on this account (another ledger, a script): a lone job in the window may be theirs, so it is
  **reported** too, and the account's foreign-job count is raised. Unknown jobs are never
  cancelled;
- a node app's execution creates several jobs at once: once the window has closed, the unknown
  jobs in it are **all its own** when there are as many as its latest answered execution made
  (any number when none was answered yet), and the row gets an output row per further job.

A reported row is terminal and unpaid, is never re-sent, and fails the batch's check with the
candidate job ids in its message; a person decides.
"""

import asyncio
import logging
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from krea_dagster.api import AsyncKreaClient, BackendUnreachableError, KreaError, catalog
from krea_dagster.api.reconcile import Reconciliation, SubmissionWindow
from krea_dagster.engine.errors import ErrorCode
from krea_dagster.engine.ledger import JobUpdate, Ledger, Submission, utcnow

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
    now: Any = utcnow,
) -> Outcome:
    """Decide whether an unresolved row's POST created a job, and write the answer.

    A job found in the window is attributed at once (the lease means no other submission of
    the account was in flight); "not created" waits for the window to close (at most
    ``window_seconds`` after the send), listing again every ``RELIST_SECONDS``.
    """
    if row.sent_at is None:
        return _written(
            ledger.mark_not_created(
                row.submission_id,
                code=ErrorCode.RECONCILED_NOT_CREATED,
                message="the worker stopped before sending the POST: no job was created",
            ),
            Outcome.NOT_CREATED,
        )
    measured = None
    if row.krea_offset_low is not None and row.krea_offset_high is not None:
        measured = ClockBounds(
            timedelta(seconds=row.krea_offset_low), timedelta(seconds=row.krea_offset_high)
        )
    elif row.owner_host == socket.gethostname():
        measured = await measured_offset(client)  # the sender's clock is this host's
    try:
        bounds = clock_bounds(await asyncio.to_thread(ledger.answered, row.owner_host), measured)
    except WindowUnplaceable as unplaced:
        message = (
            f"{unplaced}, so the POST's window cannot be placed in Krea's clock and an unknown "
            f"job could be this row's: check GET /jobs around {row.sent_at.isoformat()} (the "
            f"clock of host {row.owner_host}) for a job with this request, then resolve the row"
        )
        outcome = _written(
            ledger.mark_reported(row.submission_id, message=message), Outcome.REPORTED
        )
        if outcome is Outcome.REPORTED:
            log.error(f"submission {row.submission_id}: {message}")
        return outcome
    jobs: int | None = 1
    if catalog.node_app_id(row.model) is not None:
        jobs = await asyncio.to_thread(ledger.jobs_per_submission, row.model)
    window = window_for(row, bounds, request_window=request_window, guard=guard, jobs=jobs)
    assert window.end is not None
    while True:
        closed = _now(now) > window.end + LISTING_LAG
        known = await asyncio.to_thread(
            ledger.known_job_ids, window.start - guard, window.end + guard
        )
        result = await client.reconcile_submission(window, known_job_ids=known)
        if closed or result.is_found or result.candidates:
            return await asyncio.to_thread(_apply, ledger, row, window, result, log)
        # Nothing yet and the window still open: the job may still appear.
        left = (window.end + LISTING_LAG - _now(now)).total_seconds()
        await asyncio.sleep(max(0.0, min(RELIST_SECONDS, left)) + 0.01)


def _apply(
    ledger: Ledger,
    row: Submission,
    window: SubmissionWindow,
    result: Reconciliation,
    log: logging.Logger | Any,
) -> Outcome:
    if not ledger.get(row.submission_id).is_unresolved:
        # A neighbour resolved the row while this listing ran: what this one saw is stale
        # (the jobs it matched look unknown here), so it concludes and logs nothing.
        return Outcome.ALREADY_RESOLVED
    # Jobs the ledger learnt of since the listing (a neighbour matched or sent them) are not
    # another submitter's.
    assert window.end is not None
    known = ledger.known_job_ids(window.start - window.guard, window.end + window.guard)
    foreign = [
        job.job_id
        for job in result.candidates
        if not window.contains(job.created_at) and job.job_id not in known
    ]
    if foreign and row.account:
        ledger.note_foreign_jobs(row.account, foreign)
        log.error(
            f"{len(foreign)} job(s) on Krea account {row.account} were not made through this "
            f"ledger ({', '.join(foreign[:5])}): another ledger or tool submits on this account. "
            "Point every krea-dagster instance of one account at one ledger database."
        )
    if result.is_found and result.job is not None:
        job, more = result.job, result.jobs[1:]
        outcome = _written(
            ledger.attribute(
                row.submission_id,
                more_jobs=[JobUpdate.from_job(other) for other in more],
                **JobUpdate.from_job(job).answer(),
            ),
            Outcome.ATTRIBUTED,
        )
        if outcome is Outcome.ATTRIBUTED:
            made = ", ".join(found.job_id for found in result.jobs)
            log.info(f"reconciled submission {row.submission_id}: it created job(s) {made}")
        return outcome
    if result.is_not_created:
        return _written(
            ledger.mark_not_created(
                row.submission_id,
                code=ErrorCode.RECONCILED_NOT_CREATED,
                message=f"no job was created in the request's window: {result.reason}",
            ),
            Outcome.NOT_CREATED,
        )
    outcome = _written(
        ledger.mark_reported(row.submission_id, message=result.reason), Outcome.REPORTED
    )
    if outcome is Outcome.REPORTED:
        log.error(
            f"submission {row.submission_id} (prompt {row.prompt_key}) is reported, not "
            f"re-sent: {result.reason}"
        )
    return outcome


def _written(written: bool, outcome: Outcome) -> Outcome:
    return outcome if written else Outcome.ALREADY_RESOLVED


def _now(now: Any) -> datetime:
    value: datetime = now()
    return value
