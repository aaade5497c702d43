"""Finding out whether an ambiguous submission created a job, without ever resubmitting.

After an ``AmbiguousSubmitError`` a job may exist (and will be billed if it completes). Krea has
no idempotency key and jobs do not echo the request, so the only evidence is ``GET /jobs``: a
job created in the submission's time window that the caller does not already know. This module
holds the window, the outcome, and the pure decision; the clients do the listing.

A node app's execution creates several jobs at once (``SubmissionWindow.jobs``): they are
attributed together, only once the window has closed (so none is still to appear), and only
when their number is the app's (when known).

Several submissions of one account may be in flight at once (submit lanes), so their windows can
overlap: ``decide_cluster`` decides the unresolved submissions whose windows overlap (a
*cluster*) together, from the jobs created in them before a *horizon* (every job created before
it is listed, and none can be a submission still being sent). It attributes only what the
windows force, and a cluster of one is ``decide_reconciliation`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from krea_dagster.api.errors import AmbiguousSubmitError
from krea_dagster.api.models import Job, JobStatus

__all__ = [
    "ClusterDecision",
    "Reconciliation",
    "ReconciliationOutcome",
    "SubmissionWindow",
    "decide_cluster",
    "decide_reconciliation",
]


@dataclass(frozen=True)
class SubmissionWindow:
    """When a possibly-created job could have been created.

    ``start`` is ``submitted_at - skew``; ``end`` is ``submitted_at + request_timeout + skew``
    (the server cannot create it after the client gave up waiting, give or take clock skew),
    or None when the request had no timeout, in which case the window never closes.
    """

    submitted_at: datetime
    start: datetime
    end: datetime | None
    model: str | None = None
    kind: str = "image"
    submission_id: str | None = None
    #: How far around the window to look for jobs the caller does not know. One there means
    #: somebody else submits on this account, so a lone job in the window may be theirs.
    guard: timedelta = timedelta(0)
    #: How many jobs the submission creates: 1 for ``/generate``; a node app's count, or None
    #: when it is not known yet (at least one).
    jobs: int | None = 1

    @classmethod
    def from_submission(
        cls,
        submitted_at: datetime,
        *,
        request_timeout: float | None,
        skew: float,
        model: str | None = None,
        kind: str = "image",
        submission_id: str | None = None,
    ) -> SubmissionWindow:
        """The window of a submission sent at ``submitted_at``."""
        margin = timedelta(seconds=skew)
        end = None
        if request_timeout is not None and math.isfinite(request_timeout):
            end = submitted_at + timedelta(seconds=request_timeout) + margin
        return cls(submitted_at, submitted_at - margin, end, model, kind, submission_id)

    @classmethod
    def from_error(cls, error: AmbiguousSubmitError, *, skew: float) -> SubmissionWindow:
        """The window of the submission behind an ``AmbiguousSubmitError``."""
        return cls.from_submission(
            error.submitted_at,
            request_timeout=error.request_timeout,
            skew=skew,
            model=error.model,
            kind=error.kind,
            submission_id=error.submission_id,
        )

    def contains(self, moment: datetime) -> bool:
        """Whether a job created at ``moment`` could be the submission's."""
        return self.start <= moment and (self.end is None or moment <= self.end)

    def is_guarded(self, moment: datetime) -> bool:
        """Whether ``moment`` is outside the window but inside its guard band."""
        if self.contains(moment) or self.guard <= timedelta(0):
            return False
        after_start = moment >= self.start - self.guard
        before_end = self.end is None or moment <= self.end + self.guard
        return after_start and before_end

    def is_closed(self, now: datetime) -> bool:
        """Whether no job of this submission can appear any more."""
        return self.end is not None and now > self.end


class ReconciliationOutcome(StrEnum):
    """What reconciliation concluded."""

    FOUND = "found"
    NOT_CREATED = "not_created"
    UNDECIDABLE = "undecidable"


@dataclass(frozen=True)
class Reconciliation:
    """The outcome, the job when found, the candidates seen, and why."""

    outcome: ReconciliationOutcome
    job: Job | None
    candidates: tuple[Job, ...]
    reason: str
    window: SubmissionWindow | None = None

    @classmethod
    def found(
        cls, job: Job, reason: str = "", window: SubmissionWindow | None = None
    ) -> Reconciliation:
        """Exactly one unknown job was created in the window: it is the submission's."""
        return cls(ReconciliationOutcome.FOUND, job, (job,), reason, window)

    @classmethod
    def found_all(
        cls, jobs: Iterable[Job], reason: str = "", window: SubmissionWindow | None = None
    ) -> Reconciliation:
        """Every unknown job of a closed window is the (node-app) submission's, oldest first."""
        ordered = tuple(sorted(jobs, key=lambda job: (job.created_at, job.job_id)))
        return cls(ReconciliationOutcome.FOUND, ordered[0], ordered, reason, window)

    @property
    def jobs(self) -> tuple[Job, ...]:
        """The jobs the submission created, when found (several for a node app)."""
        return self.candidates if self.is_found else ()

    @classmethod
    def not_created(
        cls, reason: str = "", window: SubmissionWindow | None = None
    ) -> Reconciliation:
        """The window has closed without an unknown job: submitting again is safe."""
        return cls(ReconciliationOutcome.NOT_CREATED, None, (), reason, window)

    @classmethod
    def undecidable(
        cls, candidates: Iterable[Job], reason: str, window: SubmissionWindow | None = None
    ) -> Reconciliation:
        """The evidence does not say; ``reason`` explains, ``candidates`` lists what was seen."""
        return cls(ReconciliationOutcome.UNDECIDABLE, None, tuple(candidates), reason, window)

    @property
    def is_found(self) -> bool:
        return self.outcome is ReconciliationOutcome.FOUND

    @property
    def is_not_created(self) -> bool:
        return self.outcome is ReconciliationOutcome.NOT_CREATED

    @property
    def is_undecidable(self) -> bool:
        return self.outcome is ReconciliationOutcome.UNDECIDABLE


def decide_reconciliation(
    window: SubmissionWindow,
    candidates: Iterable[Job],
    *,
    now: datetime,
    complete: bool = True,
    neighbours: Iterable[Job] = (),
) -> Reconciliation:
    """Decide from the unknown jobs created in the window (``complete``: every page was read).

    ``neighbours`` are unknown jobs of the window's guard band: with any, a lone job in the
    window proves nothing (another client submits on the account), so it is not attributed.
    A window that closed empty still proves "not created": the job would be inside it.
    """
    found = tuple(candidates)
    others = tuple(neighbours)
    span = f"{window.start.isoformat()} .. {window.end.isoformat() if window.end else 'now'}"
    if window.jobs != 1:
        return _decide_several(window, found, others, span, now=now, complete=complete)
    if len(found) == 1 and others:
        ids = ", ".join(job.job_id for job in others[:5])
        return Reconciliation.undecidable(
            (*found, *others),
            f"one unknown job ({found[0].job_id}) was created in {span}, but {len(others)} "
            f"more the caller does not know were created around it ({ids}): another client or "
            "ledger submits on this Krea account, so the job may be theirs",
            window,
        )
    if len(found) == 1:
        return Reconciliation.found(
            found[0], f"exactly one unknown job was created in {span}", window
        )
    if len(found) > 1:
        ids = ", ".join(job.job_id for job in found)
        return Reconciliation.undecidable(
            found,
            f"{len(found)} jobs unknown to the caller were created in {span} ({ids}); any of "
            "them could be the submission's. Add the ids you own to known_job_ids, or cancel "
            "the ones that are not yours while they are pending",
            window,
        )
    if not complete:
        return Reconciliation.undecidable(
            (), f"the job list could not be read back to {window.start.isoformat()}", window
        )
    if not window.is_closed(now):
        until = window.end.isoformat() if window.end else "never (the request had no timeout)"
        return Reconciliation.undecidable(
            (),
            f"no unknown job in {span} yet, but the window is still open until {until}: "
            "Krea could still create it; reconcile again after that",
            window,
        )
    return Reconciliation.not_created(
        f"no unknown job was created in {span} and the window has closed", window
    )


def _decide_several(
    window: SubmissionWindow,
    found: tuple[Job, ...],
    others: tuple[Job, ...],
    span: str,
    *,
    now: datetime,
    complete: bool,
) -> Reconciliation:
    """A submission that creates several jobs (a node app): all of them, or nothing decided.

    Under one open window the jobs may still be appearing, so nothing is concluded (and no
    candidate returned) until it closes.
    """
    if not complete:
        return Reconciliation.undecidable(
            (), f"the job list could not be read back to {window.start.isoformat()}", window
        )
    if not window.is_closed(now):
        return Reconciliation.undecidable(
            (), f"the window {span} is still open: the execution's jobs may still appear", window
        )
    if not found:
        return Reconciliation.not_created(
            f"no unknown job was created in {span} and the window has closed", window
        )
    ids = ", ".join(job.job_id for job in (*found, *others)[:8])
    if others:
        return Reconciliation.undecidable(
            (*found, *others),
            f"{len(found)} unknown job(s) were created in {span}, and {len(others)} more the "
            f"caller does not know around it ({ids}): another client or ledger submits on this "
            "Krea account, so the jobs may be theirs",
            window,
        )
    if window.jobs is not None and len(found) != window.jobs:
        return Reconciliation.undecidable(
            found,
            f"{len(found)} unknown job(s) were created in {span} ({ids}), but one execution "
            f"creates {window.jobs}: they cannot all be this submission's",
            window,
        )
    return Reconciliation.found_all(
        found, f"{len(found)} unknown job(s) were created in {span}: the execution's", window
    )


@dataclass(frozen=True)
class ClusterDecision:
    """What the evidence decides for the submissions of one cluster of overlapping windows.

    ``decided``: by submission id, ``FOUND`` (its jobs: attribute them), ``NOT_CREATED`` (send
    it again) or ``UNDECIDABLE`` (report it, never re-send it on a guess), each with its reason.
    ``waiting``: the submissions nothing can be concluded for yet, and why (list again later).
    ``doubtful``: unknown jobs several of the submissions could each have made, with no other
    submitter's job around: the cluster's own, but whose is unknown. Cancelled before they
    complete, they cost nothing, and once the windows have closed the submissions they could
    belong to are sent again (``unbilled``) instead of reported.
    ``unbilled``: submissions decided ``FOUND`` with a cancelled job that several of them could
    each have made: the pairing is one the windows allow, not a proven one, and nothing was
    billed for it, so the prompt is sent again.
    """

    decided: Mapping[str, Reconciliation] = field(default_factory=dict)
    waiting: Mapping[str, str] = field(default_factory=dict)
    doubtful: tuple[Job, ...] = ()
    unbilled: frozenset[str] = frozenset()


def decide_cluster(
    windows: Sequence[SubmissionWindow],
    jobs: Iterable[Job],
    *,
    horizon: datetime,
    neighbours: Iterable[Job] = (),
    complete: bool = True,
) -> ClusterDecision:
    """Decide a cluster of unresolved submissions whose windows overlap, together.

    ``jobs``: the unknown jobs (the caller's own left out) created in the cluster's windows;
    ``neighbours``: unknown jobs created in the guard band around them and in no unresolved
    window. Only jobs created before ``horizon`` count: every job created before it is listed
    (``complete``) and none is the job of a submission still being sent, so each is the job of
    a submission of the cluster, or another submitter's. A window has closed once the horizon is
    past its end.

    - a cluster of one is ``decide_reconciliation`` (today's single window);
    - an unknown job in the guard band: another client or ledger submits on the account, so any
      job in the windows may be theirs: every submission is reported;
    - a job only one submission could have made is that submission's (each ``/generate``
      submission makes at most one job), and taking it out may leave another job with only one
      possible submission: pairs are attributed while the windows force them, never guessed;
    - a job that no submission left can have made, or more jobs than submissions that make one
      each, contradict the evidence: every submission is reported;
    - once every window has closed, no job left means none of the rest was created; jobs left
      that several submissions could each have made mean they are reported;
    - a node app's submission (several jobs) is attributed its jobs once its window has closed
      when no other submission could have made them, as ``decide_reconciliation`` does.
    """
    cluster = list(windows)
    found = [job for job in jobs if job.created_at < horizon]
    others = [job for job in neighbours if job.created_at < horizon]
    if len(cluster) == 1:
        return _decide_alone(cluster[0], found, others, horizon=horizon, complete=complete)
    rows = {_row_id(window): window for window in cluster}
    span = _span(cluster)
    if not complete:
        reason = f"the job list could not be read back over {span}"
        return ClusterDecision(waiting=dict.fromkeys(rows, reason))
    if others:
        ids = ", ".join(job.job_id for job in others[:5])
        return _report_all(
            rows,
            f"{len(others)} job(s) this ledger does not know were created around the "
            f"overlapping windows {span} ({ids}): another client or ledger submits on this "
            "Krea account, so the jobs in the windows may be theirs",
            (*found, *others),
        )
    possible = {
        job.job_id: {row for row, window in rows.items() if window.contains(job.created_at)}
        for job in found
    }
    single = {row for row, window in rows.items() if window.jobs == 1}
    left = set(rows)
    unassigned = {job.job_id: job for job in found if possible[job.job_id]}
    attributed: dict[str, Reconciliation] = {}
    forcing = True
    while forcing:
        forcing = False
        for job_id, job in sorted(unassigned.items(), key=lambda item: item[1].created_at):
            owners = possible[job_id] & left
            if not owners:
                return _report_all(
                    rows,
                    f"job {job_id} was created in the overlapping windows {span}, but each "
                    "submission that could have made it is matched to another job: one of "
                    "them is another submitter's, or a submission made two",
                    found,
                )
            if len(owners) == 1 and owners <= single:
                (owner,) = owners
                attributed[owner] = Reconciliation.found(
                    job,
                    f"job {job_id} was created in {span} where only this submission's "
                    "window, of those still unresolved, could hold it",
                    rows[owner],
                )
                left.discard(owner)
                del unassigned[job_id]
                forcing = True
                break
        if forcing:
            continue
        for row in sorted(left - single):
            # A node app's execution makes as many jobs as its last answered one: once its
            # window has closed, exactly that many only it could have made are its own, and
            # the others in its window are somebody else's.
            window = rows[row]
            if window.jobs is None or not window.is_closed(horizon):
                continue
            own = [job for job in unassigned.values() if possible[job.job_id] & left == {row}]
            if len(own) == window.jobs:
                attributed[row] = Reconciliation.found_all(
                    own,
                    f"{len(own)} job(s) were created in {span} where only this execution's "
                    "window, of those still unresolved, could hold them: as many as it makes",
                    window,
                )
                left.discard(row)
                for job in own:
                    del unassigned[job.job_id]
                forcing = True
                break
    residual = list(unassigned.values())
    if left <= single and len(residual) > len(left):
        return _report_all(
            rows,
            f"{len(residual)} unknown job(s) were created in the overlapping windows {span} "
            f"for {len(left)} submission(s) that make one job each: one is another "
            "submitter's",
            found,
        )
    decided: dict[str, Reconciliation] = dict(attributed)
    waiting: dict[str, str] = {}
    for row in sorted(left - single):
        # A node app's execution whose jobs no other submission could have made: as alone.
        own = [job for job in residual if possible[job.job_id] == {row}]
        if len(own) == len([job for job in residual if row in possible[job.job_id]]):
            alone = _decide_alone(rows[row], own, (), horizon=horizon, complete=True)
            decided.update(alone.decided)
            waiting.update(alone.waiting)
            residual = [job for job in residual if job not in own]
            left.discard(row)
    if not left:
        return ClusterDecision(decided, waiting)
    closed = all(rows[row].is_closed(horizon) for row in left)
    ids = ", ".join(job.job_id for job in residual[:8])
    if not closed:
        reason = (
            f"{len(residual)} unknown job(s) ({ids}) could each be one of several of these "
            "submissions, and their windows are still open"
            if residual
            else f"no unknown job in the overlapping windows {span} yet, but they are still open"
        )
        waiting.update(dict.fromkeys(left, reason))
        return ClusterDecision(decided, waiting, doubtful=tuple(residual))
    if not residual:
        reason = f"no unknown job was created in the overlapping windows {span}, all closed"
        decided.update({row: Reconciliation.not_created(reason, rows[row]) for row in left})
        return ClusterDecision(decided, waiting)
    if left <= single and all(job.status == JobStatus.CANCELLED for job in residual):
        paired = _pair_unbilled(rows, left, residual, span)
        decided.update(paired)
        unbilled = frozenset(row for row, result in paired.items() if result.is_found)
        return ClusterDecision(decided, waiting, unbilled=unbilled)
    reason = (
        f"{len(residual)} unknown job(s) were created in the overlapping windows {span} "
        f"({ids}) and each could be the job of several of these submissions"
    )
    decided.update(
        {row: Reconciliation.undecidable(residual, reason, rows[row]) for row in sorted(left)}
    )
    return ClusterDecision(decided, waiting, doubtful=tuple(residual))


def _pair_unbilled(
    rows: Mapping[str, SubmissionWindow], left: set[str], residual: Sequence[Job], span: str
) -> dict[str, Reconciliation]:
    """Closed windows whose only doubtful jobs were cancelled (nothing billed): each job is
    recorded on a submission whose window holds it (so the ledger knows it), the others made
    none; which made which no longer matters, since every one of them is sent again."""
    free = sorted(left, key=lambda row: (rows[row].start, row))
    decided: dict[str, Reconciliation] = {}
    for job in sorted(residual, key=lambda job: (job.created_at, job.job_id)):
        holders = [row for row in free if rows[row].contains(job.created_at)] or free
        row = holders[0]
        free.remove(row)
        decided[row] = Reconciliation.found(
            job,
            f"job {job.job_id}, created in the overlapping windows {span}, could be the job of "
            "several of these submissions and was cancelled before it completed: nothing was "
            "billed, so each of them is sent again",
            rows[row],
        )
    reason = (
        f"no unknown job is left for it in the overlapping windows {span} (all closed): the "
        "cancelled ones are recorded on the other submissions"
    )
    decided.update({row: Reconciliation.not_created(reason, rows[row]) for row in free})
    return decided


def _decide_alone(
    window: SubmissionWindow,
    found: Sequence[Job],
    others: Sequence[Job],
    *,
    horizon: datetime,
    complete: bool,
) -> ClusterDecision:
    """A cluster of one: ``decide_reconciliation`` at the horizon. Nothing found in an open
    window (or an unread list) waits; any other undecidable result is a report."""
    row = _row_id(window)
    inside = [job for job in found if window.contains(job.created_at)]
    result = decide_reconciliation(
        window, inside, now=horizon, complete=complete, neighbours=others
    )
    if (
        result.is_undecidable
        and not result.candidates
        and (not complete or not window.is_closed(horizon))
    ):
        return ClusterDecision(waiting={row: result.reason})
    return ClusterDecision(decided={row: result})


def _report_all(
    rows: Mapping[str, SubmissionWindow], reason: str, candidates: Sequence[Job]
) -> ClusterDecision:
    return ClusterDecision(
        decided={
            row: Reconciliation.undecidable(candidates, reason, window)
            for row, window in rows.items()
        }
    )


def _row_id(window: SubmissionWindow) -> str:
    if window.submission_id is None:
        raise ValueError("decide_cluster needs every window's submission_id")
    return window.submission_id


def _span(windows: Sequence[SubmissionWindow]) -> str:
    start = min(window.start for window in windows)
    ends = [window.end for window in windows]
    end = "now" if any(e is None for e in ends) else max(e for e in ends if e).isoformat()
    return f"{start.isoformat()} .. {end}"
