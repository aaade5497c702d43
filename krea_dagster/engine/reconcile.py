"""Resolve submissions whose outcome is unknown, without guessing and without paying twice.

A POST that timed out, lost its connection, got a 5xx, or whose worker was killed between the
POST and the ledger write, may or may not have created a (billable) job at Krea. Krea has no
idempotency key and its job objects do not echo the request, so the only evidence is *time*:
the job, if it exists, was created while the request was in flight. ``GET /jobs`` lists jobs
with their ``created_at``; every job the ledger already knows is excluded, and what is left is
matched to the unresolved rows by their time windows.

Windows are in Krea's clock. The offset between our clock and Krea's is bounded from rows that
did get an answer: such a job was created between our intent time and our answer time, so
``created_at - submitted_at <= offset <= created_at - intent_at``; intersecting those bounds
over recent rows gives a tight offset without trusting either clock.

Matching is unique or nothing. It rests on one assumption, stated here because everything
depends on it: the account's API jobs are submitted through this ledger, so a job nobody knows
that was created inside a window was created by one of the unresolved rows.

- a row whose window holds exactly one candidate that no other window holds gets it; a
  candidate that only one window holds goes to that row when it is the row's only such
  candidate (each row created at most one job); repeated until nothing changes;
- a window that closed with no candidate proves nothing was created: the row is
  ``not_created`` and its prompt may be submitted again;
- whatever is left is ambiguous: its candidates are cancelled while still pending (Krea does
  not bill cancelled jobs) and the rows become ``cancelled``; a candidate that already
  completed is reported with its job id and its rows stay ``unknown``. Nothing is re-submitted
  on a guess.

Rows of workers that are still alive are contenders (their candidates are not taken from
them) but are never resolved here.
"""

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from krea_dagster.engine.ledger import Submission

__all__ = [
    "Candidate",
    "ClockBounds",
    "Matching",
    "Tangle",
    "Window",
    "clock_bounds",
    "match_windows",
    "owner_is_alive",
    "window_for",
]

DEFAULT_SKEW = timedelta(seconds=5)
# A window whose end is this far in the past is closed: a job created in it would be listed.
LISTING_LAG = timedelta(seconds=2)


@dataclass(frozen=True)
class ClockBounds:
    """Bounds on Krea's clock minus ours."""

    low: timedelta
    high: timedelta

    @classmethod
    def unknown(cls, skew: timedelta = DEFAULT_SKEW) -> "ClockBounds":
        return cls(-skew, skew)


@dataclass(frozen=True)
class Window:
    """When (in Krea's clock) the job of an unresolved row would have been created."""

    submission_id: str
    start: datetime
    end: datetime
    resolvable: bool  # False for rows of a live worker: contenders only


@dataclass(frozen=True)
class Candidate:
    """A job at Krea that the ledger does not know."""

    job_id: str
    created_at: datetime
    status: str
    is_terminal: bool


@dataclass
class Tangle:
    """Rows and candidates that fall in each other's windows with no certain pairing."""

    submission_ids: list[str]
    candidates: list[Candidate]


@dataclass
class Matching:
    """The outcome of matching windows and candidates."""

    found: dict[str, Candidate] = field(default_factory=dict)
    not_created: list[str] = field(default_factory=list)
    tangles: list[Tangle] = field(default_factory=list)
    # Rows that must wait: their window is still open, or a live worker shares their candidates.
    waiting: list[str] = field(default_factory=list)


def clock_bounds(rows: Iterable[Submission], skew: timedelta = DEFAULT_SKEW) -> ClockBounds:
    """Tightest offset bounds that answered rows allow; ``skew`` either way when there are none."""
    low, high = -skew, skew
    seen = False
    for row in rows:
        if row.krea_created_at is None or row.submitted_at is None:
            continue
        row_low = row.krea_created_at - row.submitted_at
        row_high = row.krea_created_at - row.intent_at
        low, high = (row_low, row_high) if not seen else (max(low, row_low), min(high, row_high))
        seen = True
    if low > high:  # clocks moved (NTP step): fall back to the plain skew around the middle
        middle = (low + high) / 2
        return ClockBounds(middle - skew, middle + skew)
    return ClockBounds(low, high)


def window_for(
    row: Submission,
    bounds: ClockBounds,
    *,
    max_request_seconds: float,
    resolvable: bool,
) -> Window:
    """The creation window of an unresolved row.

    The request left after ``intent_at``; it ended when the client saw the failure
    (``ambiguous_at``) or, for a worker that died, at the latest when its request would have
    timed out.
    """
    end = row.ambiguous_at or row.intent_at + timedelta(seconds=max_request_seconds)
    return Window(
        submission_id=row.submission_id,
        start=row.intent_at + bounds.low,
        end=end + bounds.high,
        resolvable=resolvable,
    )


def match_windows(
    windows: Sequence[Window], candidates: Sequence[Candidate], *, now: datetime
) -> Matching:
    """Pair unresolved rows with unknown jobs where, and only where, the pairing is certain."""
    inside: dict[str, set[str]] = {
        w.submission_id: {c.job_id for c in candidates if w.start <= c.created_at <= w.end}
        for w in windows
    }
    by_job = {c.job_id: c for c in candidates}
    owners: dict[str, set[str]] = {c.job_id: set() for c in candidates}
    for submission_id, jobs in inside.items():
        for job_id in jobs:
            owners[job_id].add(submission_id)

    found: dict[str, Candidate] = {}

    def assign(submission_id: str, job_id: str) -> None:
        found[submission_id] = by_job[job_id]
        for other in inside.pop(submission_id):
            owners[other].discard(submission_id)
        for other in owners.pop(job_id):
            inside[other].discard(job_id)

    changed = True
    while changed:
        changed = False
        for submission_id, jobs in list(inside.items()):
            # The row's only candidate, wanted by no other row.
            if len(jobs) == 1 and owners[next(iter(jobs))] == {submission_id}:
                assign(submission_id, next(iter(jobs)))
                changed = True
        for job_id, rows in list(owners.items()):
            # A job only one row could have created; that row has no other such job.
            if job_id not in owners or len(rows) != 1:
                continue
            (submission_id,) = rows
            exclusive = [job for job in inside[submission_id] if owners[job] == {submission_id}]
            if exclusive == [job_id]:
                assign(submission_id, job_id)
                changed = True

    by_window = {w.submission_id: w for w in windows}
    result = Matching(found={k: v for k, v in found.items() if by_window[k].resolvable})
    seen: set[str] = set()
    for submission_id, jobs in inside.items():
        window = by_window[submission_id]
        if submission_id in seen:
            continue
        if not jobs:
            seen.add(submission_id)
            if not window.resolvable:
                continue
            if window.end + LISTING_LAG < now:
                result.not_created.append(submission_id)
            else:
                result.waiting.append(submission_id)
            continue
        rows, job_ids = _component(submission_id, inside, owners)
        seen |= rows
        resolvable_rows = sorted(row for row in rows if by_window[row].resolvable)
        if len(resolvable_rows) != len(rows):
            result.waiting.extend(resolvable_rows)  # a live worker may own these jobs
        elif resolvable_rows:
            result.tangles.append(
                Tangle(
                    resolvable_rows,
                    sorted((by_job[job] for job in job_ids), key=lambda c: c.created_at),
                )
            )
    return result


def _component(
    start: str, inside: dict[str, set[str]], owners: dict[str, set[str]]
) -> tuple[set[str], set[str]]:
    """Rows and jobs connected to ``start`` through shared windows."""
    rows, jobs = {start}, set()
    frontier = [start]
    while frontier:
        row = frontier.pop()
        for job in inside.get(row, ()):
            if job in jobs:
                continue
            jobs.add(job)
            for other in owners.get(job, ()):
                if other not in rows:
                    rows.add(other)
                    frontier.append(other)
    return rows, jobs


def owner_is_alive(
    row: Submission,
    *,
    run_is_active: Callable[[str], bool] | None = None,
    stale_after: timedelta,
    now: datetime,
) -> bool:
    """Whether the worker that wrote an unresolved row may still be sending its request.

    Same machine: the process id tells. Another machine: the Dagster run status when the
    instance knows it, else the row's age.
    """
    if row.owner_host == socket.gethostname() and row.owner_pid is not None:
        if row.owner_pid == os.getpid():
            return False  # our own earlier request: it has returned, we are past it
        try:
            os.kill(row.owner_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return now - row.intent_at < stale_after
    if run_is_active is not None and row.run_id:
        return run_is_active(row.run_id)
    return now - row.intent_at < stale_after
