"""Submit a batch of prompts to Krea: each prompt at most once, as fast as the account allows.

For every planned prompt the submitter writes the intent to the ledger, takes one of the
account's submit lanes and records the time of the first attempt (one transaction), records the
time of every later attempt right before it is sent (the client's ``on_send``: 429 waits and
connect retries), and records the job id (or what went wrong) right after, giving the lane
back: two transactions per POST. ``lanes`` (the resource's ``submit_lanes``) POSTs of an
account are in flight at once, across workers, instances and prefixes sharing the ledger
database: one lane sends a POST per round trip, enough for most accounts, since Krea renders
for seconds to minutes and starts backlogged jobs in order; a big account over a slow network
needs a few. A POST whose answer is lost keeps its lane while it is reconciled (its job, if
it made one, is listed and attributed within seconds; otherwise its window must close). With
one lane the account waits meanwhile: no job is ever doubtful. With several, an undecided row
gives its lane back after a few seconds and is reconciled beside the lanes, so only its own
prompt waits (the first execution of a node app, whose job count is not known yet, keeps it).

``max_concurrent_submits`` (0 = no limit) caps the jobs this batch keeps live at Krea; when it
is reached the submitter polls its own live jobs (one ``GET /jobs`` page for up to 1000 jobs)
until a slot frees. Use it when the account's backlog is smaller than your batches.

Outcomes per POST:

======================================  ============================  ======================
what happened                           ledger row                    the batch
======================================  ============================  ======================
200                                     Krea's status + job id        goes on
connection lost after send, 5xx, read   ``unknown``, reconciled       goes on; the prompt is
timeout                                 beside the lanes              re-sent if not created
400 / 422 (Krea refused the body)       ``not_created`` (rejected)    goes on
400 / 422 naming an upload Krea no      ``not_created``               goes on; the file is
longer has (its asset was deleted)      (``stale_upload``)            uploaded again and the
                                                                      prompt re-sent
402 (balance exhausted)                 ``not_created``               stops
401 / 403                               ``not_created``               stops
429 beyond the client's budget          ``not_created``               stops (transient)
never reached Krea (connect errors)     ``not_created``               stops (transient)
base URL never answered (no server,     ``not_created``               stops (no retry unless
no such host, a web server's 404)                                     Krea answered the
                                                                      batch before)
======================================  ============================  ======================
"""

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from krea_dagster.api import (
    AmbiguousSubmitError,
    APIConnectionError,
    APIStatusError,
    AsyncKreaClient,
    AuthenticationError,
    BackendUnreachableError,
    BadRequestError,
    InsufficientCreditsError,
    Job,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    SendAttempt,
    SendDeadlineError,
    UnprocessableEntityError,
    catalog,
)
from krea_dagster.api.catalog import ModelCatalog
from krea_dagster.engine.crashpoints import crash_point
from krea_dagster.engine.errors import BatchStoppedError, ErrorCode, LeaseUnavailableError
from krea_dagster.engine.ledger import Claim, JobUpdate, Lease, Ledger, Submission, utcnow
from krea_dagster.engine.reconcile import (
    SEND_SLACK,
    ClockBounds,
    Outcome,
    measured_offset,
    reconcile,
    window_seconds,
)
from krea_dagster.engine.references import forget_gone_uploads

__all__ = ["BatchSubmitter", "PlannedPrompt", "SubmitReport"]

PROGRESS_EVERY_SECONDS = 5.0
#: A lease outlives the window of its send by this much: the wall clocks of the hosts that
#: share a ledger may disagree by up to this before a live sender's lease looks expired.
LEASE_MARGIN_SECONDS = 10.0
#: How many times a slow ``sent_at`` write is redone before the send is given up.
MAX_SEND_RECORDS = 5
#: How long a submitter waits for a live lease held by another worker before giving up.
DEFAULT_LEASE_WAIT = 600.0
#: How long a row whose answer was lost keeps its lane while its job may still be listed
#: (``reconcile.LISTING_LAG`` and a few listings).
LOST_ANSWER_PATIENCE = 6.0
#: How many times one prompt is claimed again after its send was stopped unsent (the lease
#: expired during a pause) before the batch stops.
MAX_UNSENT_RETRIES = 1


class _LeaseLost(Exception):
    """The lease expired before the send; nothing was sent."""


def send_budget(connect_timeout: float | None) -> float:
    """How long after ``sent_at`` a POST may still be written, in seconds.

    ``window_seconds`` counts from ``sent_at``: ``SEND_SLACK`` for the ``sent_at`` write, then a
    request window (connect + write + read), then one more for a server still working when the
    client gave up. A request written by ``sent_at + SEND_SLACK + connect`` has its write and
    read (and the server's extra window) left inside that, so any job it makes is created in
    the window, and the window closes ``LEASE_MARGIN_SECONDS`` before the lease expires. The
    client checks this deadline right before the request's bytes go out
    (``api.SendAttempt``): a process paused after recording ``sent_at`` wakes up and sends
    nothing.
    """
    return SEND_SLACK.total_seconds() + (connect_timeout or 0.0)


@dataclass(frozen=True)
class PlannedPrompt:
    """A validated prompt and the exact request to send for it."""

    prompt_key: str
    request: dict[str, Any]
    request_hash: str
    estimated_usd: float | None
    #: The files the request names by upload token (token -> where the file is): uploaded,
    #: and the token replaced by the asset URL, just before the prompt is sent.
    files: Mapping[str, str] = field(default_factory=dict)


@dataclass
class SubmitReport:
    """What one pass over a batch did."""

    planned: int = 0
    submitted: int = 0
    skipped: int = 0
    not_created: int = 0
    reconciled: list[Outcome] = field(default_factory=list)
    submitted_usd: float = 0.0
    #: Submitted prompts whose model has no known price (not in ``submitted_usd``).
    submitted_unpriced: int = 0
    stopped_by: BaseException | None = None
    elapsed: float = 0.0

    @property
    def stopped(self) -> bool:
        return self.stopped_by is not None


class BatchSubmitter:
    """Claims, POSTs and records every planned prompt of one batch generation."""

    def __init__(
        self,
        client: AsyncKreaClient,
        ledger: Ledger,
        *,
        scope: str,
        batch: str,
        generation: int,
        model: str,
        run_id: str | None,
        account: str,
        request_window: float,
        lease_wait: float = DEFAULT_LEASE_WAIT,
        max_live: int = 0,
        lanes: int = 1,
        max_attempts: int = 3,
        poll_interval: float = 2.0,
        log: logging.Logger | Any = None,
        clock: Callable[[], float] = time.monotonic,
        catalog: ModelCatalog | None = None,
    ) -> None:
        self.client = client
        #: The catalog the batch was validated with: the client checks each body against it.
        self.catalog = catalog
        self.ledger = ledger
        self.scope = scope
        self.batch = batch
        self.generation = generation
        self.model = model
        self.run_id = run_id
        self.account = account
        self.request_window = request_window
        self.lease_wait = lease_wait
        self.max_live = max_live
        self.lanes = lanes
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.log = log or logging.getLogger("krea_dagster")
        self.clock = clock
        self._live: dict[str, Submission] = {}
        self._report = SubmitReport()
        #: The lease this submitter is waiting for (another worker's), for the progress log.
        self._waiting_for: Lease | None = None
        self._send_budget = send_budget(client.timeouts.connect)
        #: When each claimed row's first send was recorded (the client's monotonic clock, read
        #: before ``sent_at``), until its first attempt goes out.
        self._first_send: dict[str, float] = {}
        #: Rows being reconciled beside the lanes (lost answers, dead workers' rows taken over).
        self._reconciling: list[asyncio.Task[None]] = []
        #: One lane at a time polls the batch's live jobs while ``max_live`` is reached, and
        #: the POSTs in flight count as live.
        self._slot = asyncio.Lock()
        self._sending = 0
        #: A lane raised: the others stop before their next prompt.
        self._lane_failed = False

    @property
    def lease_seconds(self) -> float:
        """How long one send holds the lease: its whole window, and a margin for clocks."""
        return window_seconds(self.request_window) + LEASE_MARGIN_SECONDS

    async def run(self, prompts: Sequence[PlannedPrompt]) -> SubmitReport:
        """Send every prompt over ``lanes`` concurrent lanes; return once each is answered,
        refused, covered or reconciled (a lost answer is reconciled beside the lanes)."""
        report = self._report = SubmitReport(planned=len(prompts))
        started = self.clock()
        progress = asyncio.create_task(self._log_progress(started))
        if self.max_live:
            self._live = {
                row.job_id: row
                for row in await asyncio.to_thread(self.ledger.pending, self.scope, self.batch)
                if row.job_id
            }
        queue = iter(prompts)
        try:
            # A lane that fails stops the others before their next prompt, never mid-POST.
            ended = await asyncio.gather(
                *(self._lane(queue) for _ in range(max(1, self.lanes))), return_exceptions=True
            )
            while not all(task.done() for task in self._reconciling):
                await asyncio.wait([task for task in self._reconciling if not task.done()])
            for error in (*ended, *(task.exception() for task in self._reconciling)):
                if isinstance(error, BaseException):
                    raise error
        finally:
            progress.cancel()
            for task in self._reconciling:
                task.cancel()
            await asyncio.gather(*self._reconciling, return_exceptions=True)
            report.elapsed = self.clock() - started
        return report

    async def _lane(self, queue: Iterator[PlannedPrompt]) -> None:
        """One lane: take the next prompt, send it, and so on (lanes share ``queue``)."""
        try:
            for prompt in queue:
                if self._report.stopped or self._lane_failed:
                    return
                if not self.max_live:
                    await self._submit_one(prompt)
                    continue
                async with self._slot:
                    await self._wait_for_live_slot()
                    self._sending += 1
                try:
                    await self._submit_one(prompt)
                finally:
                    self._sending -= 1
        except Exception:
            self._lane_failed = True
            raise

    def _reconcile_beside(self, row: Submission) -> None:
        """Reconcile ``row`` without holding a lane: only its own prompt waits for it."""

        async def work() -> None:
            outcome = await self._reconcile(row)
            assert outcome is not None  # no patience: decided
            self._report.reconciled.append(outcome)

        self._reconciling.append(asyncio.create_task(work()))

    async def _submit_one(self, prompt: PlannedPrompt) -> None:
        for unsent in range(MAX_UNSENT_RETRIES + 1):
            try:
                claimed = await self._claim(prompt)
            except BackendUnreachableError as error:
                # Krea's clock is measured before the claim, which records the send: a base
                # URL that never answered stops the batch before any intent is written.
                await self._unreachable(error)
                return
            if claimed is None:
                self._report.skipped += 1
                return
            stopped = await self._send(claimed, prompt)
            if stopped is None:
                return
            # Nothing was sent (the lease ran out, most likely while this process was paused);
            # claim again: covered if another worker has sent the prompt meanwhile.
            if unsent == MAX_UNSENT_RETRIES:
                self._report.stopped_by = LeaseUnavailableError(str(stopped))
                self.log.error(f"stopping the batch: {stopped}")

    async def _claim(self, prompt: PlannedPrompt) -> Submission | None:
        """The intent row for ``prompt`` on a submit lane, or None when it is covered.

        While live workers hold every lane of the account this waits for one (a POST takes a
        round trip); a lane whose lease expired is a dead worker's: it is taken over, and that
        worker's row reconciled beside the lanes.
        """
        deadline = self.clock() + self.lease_wait
        pause = 0.005
        while True:
            # The claim records the first attempt's send too (one transaction): where the
            # window lies in Krea's clock is measured first (from the last answers or one GET),
            # and the write deadline counts from a monotonic time read before ``sent_at``.
            offset = await measured_offset(self.client)
            started = self.client.clock.monotonic()
            claim = await asyncio.to_thread(
                self.ledger.claim,
                scope=self.scope,
                batch=self.batch,
                generation=self.generation,
                prompt_key=prompt.prompt_key,
                model=self.model,
                request=prompt.request,
                request_hash=prompt.request_hash,
                submission_id=str(uuid.uuid4()),
                estimated_usd=prompt.estimated_usd,
                run_id=self.run_id,
                max_attempts=self.max_attempts,
                account=self.account,
                lease_seconds=self.lease_seconds,
                sent_at=utcnow(),
                krea_offset=_seconds(offset),
                lanes=self.lanes,
            )
            for gone in claim.taken_over:
                self.log.warning(
                    f"submission {gone.submission_id} (prompt {gone.prompt_key} of "
                    f"{gone.scope}/{gone.batch}) held an expired submit lane: its worker is "
                    "gone; its lane is taken over and the row reconciled"
                )
                self._reconcile_beside(gone)
            if claim.row is not None or claim.covered:
                self._waiting_for = None
                if claim.row is not None:
                    self._first_send[claim.row.submission_id] = started
                return claim.row
            if claim.lease is not None and self._waiting_for is None and not self._own(claim):
                self.log.info(f"{self.batch}: waiting for a submit lane: {_held(claim.lease)}")
            self._waiting_for = None if self._own(claim) else claim.lease
            if self.clock() > deadline:
                self._waiting_for = None
                held = "" if claim.lease is None else f": {_held(claim.lease)}"
                raise LeaseUnavailableError(
                    f"other submissions have held every submit lane ({self.lanes}) of Krea "
                    f"account {self.account} for over {self.lease_wait:.0f} s{held}; retry the "
                    "run later"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _own(self, claim: Claim) -> bool:
        """Whether the lane ``claim`` waits for is held by this process (another of its lanes)."""
        return claim.lease is not None and claim.lease.owner_pid == os.getpid()

    async def _send(self, row: Submission, prompt: PlannedPrompt) -> Exception | None:
        """POST one claimed row and record the answer; the reason when nothing was sent
        because the row's lease ran out (its row is then answered ``not_sent``)."""
        report = self._report
        crash_point("submit.after_intent", self.scope)
        try:
            jobs = await self._post(row, prompt)
        except AmbiguousSubmitError as error:
            await asyncio.to_thread(self.ledger.mark_unknown, row.submission_id, message=str(error))
            self.log.warning(
                f"submission {row.submission_id} for prompt {prompt.prompt_key}: outcome "
                "unknown; reconciling it through GET /jobs (never re-sent blindly)"
            )
            await self._reconcile_lost(await asyncio.to_thread(self.ledger.get, row.submission_id))
        except (BadRequestError, UnprocessableEntityError) as error:
            # Krea refuses a request naming a deleted asset ("Input file rejected"). When an
            # upload this request names is gone, the refusal is the cache's, not the prompt's:
            # the entry is forgotten and the prompt re-sent (nothing was created, nothing owed).
            gone = await forget_gone_uploads(
                self.client, self.ledger.upload_cache(self.account), prompt.request
            )
            await self._not_created(
                row, ErrorCode.STALE_UPLOAD if gone else ErrorCode.REJECTED, error
            )
        except RequestValidationError as error:
            await self._not_created(row, ErrorCode.REJECTED, error)
        except InsufficientCreditsError as error:
            await self._not_created(row, ErrorCode.INSUFFICIENT_CREDITS, error, stop=True)
        except (AuthenticationError, PermissionDeniedError) as error:
            await self._not_created(row, ErrorCode.UNAUTHORIZED, error, stop=True)
        except RateLimitError as error:
            await self._not_created(row, ErrorCode.RATE_LIMITED, error, stop=True, transient=True)
        except BackendUnreachableError as error:
            await self._unreachable(error, row)
        except APIConnectionError as error:
            await self._not_created(row, ErrorCode.NOT_SENT, error, stop=True, transient=True)
        except APIStatusError as error:
            await self._not_created(row, f"http_{error.status_code}", error, stop=True)
        except (_LeaseLost, SendDeadlineError) as error:
            # Nothing was sent: every earlier attempt of the row was refused (429) or never
            # left, and this one was stopped before its bytes went out. Unless another worker
            # resolved the row meanwhile (its lease had expired), answer it so.
            await asyncio.to_thread(
                self.ledger.mark_not_created,
                row.submission_id,
                code=ErrorCode.NOT_SENT,
                message=str(error),
            )
            self.log.warning(f"submission {row.submission_id}: {error}")
            return error
        except BaseException as error:
            # Interrupted (run terminated) or a bug while the POST may be on the wire: the
            # only honest state is "unknown"; the lease stays held until it is reconciled.
            await asyncio.shield(
                asyncio.to_thread(
                    self.ledger.mark_unknown,
                    row.submission_id,
                    message=f"interrupted during submit: {type(error).__name__}",
                )
            )
            raise
        else:
            crash_point("submit.after_post", self.scope)
            job, more = jobs[0], [JobUpdate.from_job(other) for other in jobs[1:]]
            recorded = await asyncio.to_thread(
                partial(
                    self.ledger.mark_submitted,
                    row.submission_id,
                    more_jobs=more,
                    **JobUpdate.from_job(job).answer(),
                )
            )
            if not recorded:
                # Another worker resolved this row first (its lease had expired). When it
                # matched this very job, all is well; otherwise keep the job on record all the
                # same, so it is collected and a double payment shows.
                late = await asyncio.to_thread(
                    self.ledger.record_late_job, row, JobUpdate.from_job(job), more
                )
                if late is None:
                    self.log.info(
                        f"submission {row.submission_id}: Krea's late answer (job "
                        f"{job.job_id}) is the job reconciliation already matched to it"
                    )
                else:
                    self.log.error(
                        f"submission {row.submission_id}: Krea answered after the row was "
                        f"resolved elsewhere; job {job.job_id} is recorded as a late answer "
                        f"(submission {late.submission_id})"
                    )
            report.submitted += 1
            report.submitted_usd += prompt.estimated_usd or 0.0
            report.submitted_unpriced += prompt.estimated_usd is None
            if self.max_live:
                for sent in jobs:
                    self._live[sent.job_id] = row
        return None

    def _answered_before(self) -> bool:
        """Whether Krea answered a POST of this batch generation (in this run or an earlier)."""
        if self._report.submitted:
            return True
        rows = self.ledger.latest(self.scope, self.batch, self.generation)
        return any(row.job_id for row in rows.values())

    async def _post(self, row: Submission, prompt: PlannedPrompt) -> list[Job]:
        """The POST of one row: ``/generate/...`` makes one job, a node app's execute several."""
        app = catalog.node_app_id(self.model)
        try:
            if app is not None:
                return await self.client.execute_node_app(
                    app, prompt.request, submission_id=row.submission_id, on_send=self._on_send
                )
            job = await self.client.submit(
                self.model,
                prompt.request,
                submission_id=row.submission_id,
                on_send=self._on_send,
                catalog=self.catalog,
            )
            return [job]
        finally:
            self._first_send.pop(row.submission_id, None)

    async def _on_send(self, attempt: SendAttempt) -> float | None:
        """Before every POST and every wait: record when, and keep the lease for that long.

        For a send, returns the client's write deadline (``send_budget`` after ``sent_at``, on
        the client's monotonic clock, read before ``sent_at`` is): the client writes the POST
        only before it, so a process paused anywhere after this write sends nothing once the
        job could fall outside its window. The first attempt's send was recorded by the claim;
        every later one (after a 429 wait or a connect retry) is recorded here. When the write
        took longer than ``SEND_SLACK`` (a busy database), it is written again with a fresh
        time.
        """
        if attempt.wait:
            crash_point("submit.during_429_wait")
        slack = SEND_SLACK.total_seconds()
        monotonic = self.client.clock.monotonic
        claimed = self._first_send.pop(attempt.submission_id, None)
        if claimed is not None and not attempt.wait and monotonic() - claimed <= slack:
            crash_point("submit.after_note_send", self.scope)
            return claimed + self._send_budget
        for _ in range(MAX_SEND_RECORDS):
            # Where the window lies in Krea's clock, measured now (from the last answers or
            # one GET): whoever reconciles this row reads it with sent_at.
            offset = await measured_offset(self.client)
            started = monotonic()
            sent_at = utcnow()
            kept = await asyncio.to_thread(
                partial(
                    self.ledger.note_send,
                    attempt.submission_id,
                    sent_at=sent_at,
                    lease_seconds=attempt.wait + self.lease_seconds,
                    krea_offset=_seconds(offset),
                )
            )
            if not kept:
                raise _LeaseLost(
                    f"submission {attempt.submission_id} lost the submit lease before sending "
                    "(it expired); nothing was sent"
                )
            if attempt.wait:
                return None
            if monotonic() - started <= slack:
                crash_point("submit.after_note_send", self.scope)
                return started + self._send_budget
        raise _LeaseLost(
            f"the ledger took over {slack:.0f} s to record each of {MAX_SEND_RECORDS} attempts "
            f"of submission {attempt.submission_id}; nothing was sent"
        )

    async def _reconcile(self, row: Submission, patience: float | None = None) -> Outcome | None:
        """``reconcile`` of ``row``: its outcome, or None when ``patience`` ran out first."""
        return await reconcile(
            self.client,
            self.ledger,
            row,
            request_window=self.request_window,
            log=self.log,
            patience=patience,
        )

    async def _reconcile_lost(self, row: Submission) -> None:
        """Reconcile a row whose answer was lost, on its lane while its job may still show.

        A job the POST made is listed within seconds and attributed while the row keeps its
        lane. Undecided by then (no job yet: its window must close, two request windows after
        the send), the row keeps its lane until it is decided when it is the account's only
        lane: nothing else is sent while a job could still be its, so no job is ever doubtful
        (the account waits). With several lanes it gives its lane back and is reconciled beside
        them (only its own prompt waits; the others are sent meanwhile, so a job of another
        lost answer may turn out doubtful: cancelled if Krea has not completed it, else
        reported). The first execution of a node app always keeps its lane: until an
        execution of the app was answered, how many jobs it makes is unknown, and its jobs
        could not be told from those of a row sent after it.
        """
        app = catalog.node_app_id(row.model)
        count = (
            None
            if app is None
            else await asyncio.to_thread(self.ledger.jobs_per_submission, row.model)
        )
        gives_lane_back = self.lanes > 1 and (app is None or count is not None)
        outcome = await self._reconcile(row, LOST_ANSWER_PATIENCE if gives_lane_back else None)
        if outcome is None:
            await asyncio.to_thread(self.ledger.release_lane, row.submission_id)
            self.log.info(
                f"submission {row.submission_id}: no job in its window yet; its lane goes "
                "on with the batch while its window closes"
            )
            self._reconcile_beside(row)
            return
        self._report.reconciled.append(outcome)

    async def _not_created(
        self,
        row: Submission,
        code: str,
        error: BaseException,
        *,
        stop: bool = False,
        transient: bool = False,
    ) -> None:
        await asyncio.to_thread(
            self.ledger.mark_not_created, row.submission_id, code=code, message=str(error)
        )
        self._report.not_created += 1
        if stop:
            self._stop(code, error, transient=transient)

    async def _unreachable(
        self, error: BackendUnreachableError, row: Submission | None = None
    ) -> None:
        """The base URL never answered this client (measuring Krea's clock before a claim, or
        the POST of ``row``): a setting to fix, so the batch stops at once with no retry, unless
        Krea answered this batch before: then it is an outage (transient)."""
        answered = await asyncio.to_thread(self._answered_before)
        if row is None:
            self._stop(ErrorCode.NOT_SENT, error, transient=answered)
        else:
            await self._not_created(row, ErrorCode.NOT_SENT, error, stop=True, transient=answered)

    def _stop(self, code: str, error: BaseException, *, transient: bool) -> None:
        """Stop the batch for ``error`` (the first reason wins)."""
        if self._report.stopped_by is None:
            self._report.stopped_by = BatchStoppedError(
                f"stopping the batch: {error}", code=code, transient=transient
            )
            self.log.error(f"stopping the batch: {error}")

    async def _wait_for_live_slot(self) -> None:
        """Poll this batch's live jobs until they and the POSTs in flight are fewer than
        ``max_live``."""
        while len(self._live) + self._sending >= self.max_live:
            if not self._live:
                await asyncio.sleep(0.01)  # only POSTs in flight: their answers come first
                continue
            jobs = await self.client.poll_many(list(self._live))
            updates = [JobUpdate.from_job(job) for job in jobs]
            await asyncio.to_thread(self.ledger.update_jobs, updates)
            for job in jobs:
                if job.is_terminal:
                    self._live.pop(job.job_id, None)
            if len(self._live) + self._sending >= self.max_live:
                await asyncio.sleep(self.poll_interval)

    async def _log_progress(self, started: float) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_SECONDS)
            if self._waiting_for is not None:
                self.log.info(
                    f"{self.batch}: waiting for a submit lane: {_held(self._waiting_for)}"
                )
                continue
            report = self._report
            done = report.submitted + report.skipped + report.not_created + len(report.reconciled)
            elapsed = max(self.clock() - started, 1e-9)
            self.log.info(
                f"{self.batch}: submitted {report.submitted}/{report.planned} "
                f"({report.skipped} already covered), est. ${report.submitted_usd:.4f}, "
                f"{done / elapsed:.1f} prompts/s"
            )


def _seconds(offset: ClockBounds | None) -> tuple[float, float] | None:
    """Offset bounds as the ledger stores them (seconds, at least and at most)."""
    return None if offset is None else (offset.low.total_seconds(), offset.high.total_seconds())


def _held(lease: Lease) -> str:
    """Who holds a lease and until when, for the logs of a worker waiting for it."""
    holder = lease.holder
    until = "no expiry" if lease.expires_at is None else lease.expires_at.isoformat()
    left = (
        ""
        if lease.expires_at is None
        else f", {max((lease.expires_at - utcnow()).total_seconds(), 0.0):.0f} s from now"
    )
    return (
        f"submission {holder.submission_id} (prompt {holder.prompt_key} of "
        f"{holder.scope}/{holder.batch}, {holder.state}) holds it on host "
        f"{lease.owner_host or '?'} (pid {lease.owner_pid or '?'}) until {until}{left}"
    )
