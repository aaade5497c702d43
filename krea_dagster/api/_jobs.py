"""Flows over jobs shared by both clients: wait, poll_many, reconcile, and the job pager."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from krea_dagster.api import catalog
from krea_dagster.api._core import Flow, Notify, RequestCore, Sleep
from krea_dagster.api.config import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_EXTERNAL_WAIT_TIMEOUT,
    POLL_MANY_DIRECT_THRESHOLD,
    POLL_MANY_PAGE_SIZE,
)
from krea_dagster.api.errors import (
    AmbiguousSubmitError,
    APIConnectionError,
    APIStatusError,
    DeadlineExceededError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    KreaError,
    UnknownModelError,
)
from krea_dagster.api.models import Job, JobList, JobStatus, as_aware
from krea_dagster.api.reconcile import Reconciliation, SubmissionWindow, decide_reconciliation

__all__: list[str] = []

logger = logging.getLogger("krea_dagster.api")


def default_wait_timeout(model: str | None, kind: str) -> float:
    """Krea's automatic-failure limit for the model plus a margin; unknown -> the external one."""
    if model is None:
        return DEFAULT_EXTERNAL_WAIT_TIMEOUT
    try:
        return catalog.get_model(model, kind).default_wait_timeout
    except UnknownModelError:
        return DEFAULT_EXTERNAL_WAIT_TIMEOUT


def is_transient(error: KreaError) -> bool:
    """Whether a failed poll says nothing about the job (the API was briefly unavailable)."""
    if isinstance(error, APIConnectionError):
        return True
    if isinstance(error, APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


def wait(
    core: RequestCore,
    job_id: str,
    *,
    timeout: float | None,
    model: str | None,
    kind: str,
    poll_interval: float,
    max_interval: float,
    backoff_factor: float,
    on_update: Callable[[Job], object] | None,
    cancel_on_timeout: bool,
    raise_on_failure: bool,
    max_retries: int | None,
) -> Flow[Job]:
    """Poll until terminal or the monotonic deadline; the interval grows from fast to patient."""
    if poll_interval <= 0 or max_interval < poll_interval or backoff_factor < 1:
        raise ValueError("need 0 < poll_interval <= max_interval and backoff_factor >= 1")
    limit = default_wait_timeout(model, kind) if timeout is None else float(timeout)
    if limit <= 0 or math.isnan(limit):
        raise ValueError("timeout must be positive (math.inf waits forever)")
    started = core.clock.monotonic()
    deadline = started + limit
    interval = poll_interval
    last_status: JobStatus | None = None
    log_extra = {"krea_job_id": job_id}
    logger.info("waiting for job %s (timeout %.0f s)", job_id, limit, extra=log_extra)
    while True:
        hinted = 0.0
        try:
            job = yield from core.get_job(job_id, max_retries=max_retries)
        except (APIConnectionError, APIStatusError) as error:
            # The per-request retries are spent; the job itself is fine as far as we know, so
            # keep polling until the deadline rather than lose a long wait to a short outage.
            if not is_transient(error):
                raise
            logger.warning(
                "poll of job %s failed (%s); still waiting",
                job_id,
                type(error).__name__,
                extra=log_extra,
            )
            hinted = getattr(error, "retry_after", None) or 0.0
        else:
            if job.status.value != (last_status.value if last_status else None):
                logger.info("job %s is %s", job_id, job.status.value, extra=log_extra)
                last_status = job.status
                if on_update is not None:
                    yield Notify(on_update, job)
            if job.is_terminal:
                return _outcome(job, raise_on_failure)
        now = core.clock.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            if cancel_on_timeout:
                yield from _cancel_quietly(core, job_id, max_retries)
            raise JobTimeoutError(
                job_id,
                last_status.value if last_status else None,
                now - started,
                cancel_requested=cancel_on_timeout,
            )
        yield Sleep(min(max(interval, hinted), remaining))
        interval = min(interval * backoff_factor, max_interval)


def _outcome(job: Job, raise_on_failure: bool) -> Job:
    if raise_on_failure and job.is_failed:
        error = job.error
        raise JobFailedError(job, error.code if error else None, error.message if error else None)
    if raise_on_failure and job.is_cancelled:
        raise JobCancelledError(job)
    return job


def _cancel_quietly(core: RequestCore, job_id: str, max_retries: int | None) -> Flow[bool]:
    """DELETE /jobs/{id}, best effort: a failed cancel must not hide the timeout."""
    try:
        yield from core.cancel_job(job_id, max_retries=max_retries)
    except KreaError as error:
        logger.warning(
            "cancel of job %s after the wait timed out failed: %s",
            job_id,
            type(error).__name__,
            extra={"krea_job_id": job_id},
        )
        return False
    return True


class JobPager:
    """Walks ``GET /jobs`` pages newest first; stops at the end or past ``created_after``."""

    def __init__(
        self,
        *,
        limit: int,
        status: JobStatus | str | None = None,
        types: Sequence[str] | str | None = None,
        created_after: datetime | None = None,
        cursor: str | datetime | None = None,
    ) -> None:
        self.limit = limit
        self.status = status
        self.types = types
        # Naive datetimes are taken as UTC so they compare with Krea's aware created_at.
        self.created_after = as_aware(created_after) if created_after is not None else None
        self.cursor = cursor
        self.pages = 0
        self.done = False

    def accept(self, page: JobList) -> list[Job]:
        """The jobs of ``page`` to hand out, and whether another page is needed."""
        self.pages += 1
        emitted = []
        for job in page.items:
            if self.created_after is not None and job.created_at < self.created_after:
                self.done = True  # newest first: everything after this is older still
                break
            emitted.append(job)
        if page.next_cursor is None or not page.items:
            self.done = True
        self.cursor = page.next_cursor
        return emitted

    def next_page(
        self, core: RequestCore, max_retries: int | None, deadline: float | None = None
    ) -> Flow[JobList]:
        page = yield from core.list_jobs(
            cursor=self.cursor,
            limit=self.limit,
            status=self.status,
            types=self.types,
            max_retries=max_retries,
            deadline=deadline,
        )
        return page


def poll_many(
    core: RequestCore,
    job_ids: Iterable[str],
    *,
    created_after: datetime | None,
    max_retries: int | None,
    deadline: float | None = None,
    created_before: datetime | None = None,
) -> Flow[list[Job]]:
    """The current state of many jobs at about one request per 1000 jobs.

    Up to ``POLL_MANY_DIRECT_THRESHOLD`` distinct ids: ``GET /jobs/{id}`` each. More: page
    ``GET /jobs?limit=1000`` newest first while more than the threshold are still unseen,
    stopping early once the pages reach jobs older than ``created_after`` minus the clock skew,
    or once another page would cost more than the GETs it saves; then ``GET /jobs/{id}`` for the
    ids the pages did not show. The result follows the order of ``job_ids``.
    ``created_before`` (the newest job's ``created_at`` as Krea reported it) starts the pages
    just above it instead of at the account's newest job, so jobs created since, by other
    batches or users, cost no pages.

    ``deadline`` (the clock's monotonic seconds): every request's timeouts are clipped to the
    time left and nothing is sent once it has passed; the result is then partial, the jobs
    seen so far (still in ``job_ids`` order) without the ones not reached.
    """
    order = list(job_ids)
    seen: dict[str, Job] = {}
    wanted = set(order)
    try:
        if len(wanted) > POLL_MANY_DIRECT_THRESHOLD:
            floor = (
                as_aware(created_after) - timedelta(seconds=DEFAULT_CLOCK_SKEW)
                if created_after is not None
                else None
            )
            # Krea's own timestamp, so no skew: just past it (the cursor is "created before").
            ceiling = (
                as_aware(created_before) + timedelta(milliseconds=1)
                if created_before is not None
                else None
            )
            pager = JobPager(limit=POLL_MANY_PAGE_SIZE, created_after=floor, cursor=ceiling)
            try:
                while not pager.done:
                    missing = len(wanted) - len(seen)
                    # Stop paging when the GETs for what is missing are cheaper than more pages.
                    if missing <= POLL_MANY_DIRECT_THRESHOLD or pager.pages >= missing:
                        break
                    page = yield from pager.next_page(core, max_retries, deadline)
                    for job in pager.accept(page):
                        if job.job_id in wanted:
                            seen[job.job_id] = job
            finally:
                logger.info(
                    "poll_many: %d of %d jobs found in %d list pages",
                    len(seen),
                    len(wanted),
                    pager.pages,
                )
        for job_id in dict.fromkeys(order):
            if job_id not in seen:
                seen[job_id] = yield from core.get_job(
                    job_id, max_retries=max_retries, deadline=deadline
                )
    except DeadlineExceededError as error:
        logger.warning(
            "poll_many stopped at its deadline with %d of %d jobs polled: %s",
            len(seen),
            len(wanted),
            error,
        )
    return [seen[job_id] for job_id in order if job_id in seen]


def reconcile(
    core: RequestCore,
    target: AmbiguousSubmitError | SubmissionWindow,
    *,
    known_job_ids: Iterable[str],
    skew: float,
    types: Sequence[str] | str | None,
    max_retries: int | None,
) -> Flow[Reconciliation]:
    """List the jobs created in the submission's window that the caller does not know; decide."""
    window = (
        SubmissionWindow.from_error(target, skew=skew)
        if isinstance(target, AmbiguousSubmitError)
        else target
    )
    known = set(known_job_ids)
    now = core.clock.now()
    # Start just after the window (a cursor returns jobs created before it) to skip newer jobs;
    # the guard band widens the look on both sides.
    cursor = window.end + window.guard + timedelta(milliseconds=1) if window.end else None
    pager = JobPager(
        limit=POLL_MANY_PAGE_SIZE,
        types=types,
        created_after=window.start - window.guard,
        cursor=cursor,
    )
    candidates: list[Job] = []
    neighbours: list[Job] = []
    while not pager.done:
        page = yield from pager.next_page(core, max_retries)
        for job in pager.accept(page):
            if job.job_id in known:
                continue
            if window.contains(job.created_at):
                candidates.append(job)
            elif window.is_guarded(job.created_at):
                neighbours.append(job)
    result = decide_reconciliation(window, candidates, now=now, neighbours=neighbours)
    logger.info(
        "reconciled submission %s: %s (%d candidates)",
        window.submission_id,
        result.outcome.value,
        len(result.candidates),
        extra={"krea_submission_id": window.submission_id},
    )
    return result


def confirm_webhook(core: RequestCore, claimed: Job, max_retries: int | None) -> Flow[Job]:
    """Re-fetch the job a webhook names; the API's answer is the truth, the post only a hint."""
    job = yield from core.get_job(claimed.job_id, max_retries=max_retries)
    if job.status.value != claimed.status.value:
        logger.warning(
            "webhook for job %s claimed %s but the API says %s; using the API's answer",
            job.job_id,
            claimed.status.value,
            job.status.value,
            extra={"krea_job_id": job.job_id},
        )
    return job
