"""Submit a batch of prompts to Krea: each prompt at most once, as fast as the account allows.

For every planned prompt the submitter writes the intent to the ledger, sends one POST, and
records the job id (or what went wrong) right after. ``max_inflight_submits`` POSTs are in
flight at once; those are the only rows whose outcome a crash can leave unknown, and with the
default of 1 every unknown row has a creation window of its own, which makes reconciliation
exact. One POST takes milliseconds to a fraction of a second while a job renders for seconds
to minutes, and Krea starts backlogged jobs in order, so a single lane of POSTs is not what
limits a batch: the account's concurrency is.

``max_concurrent_submits`` (0 = no limit) caps the jobs this batch keeps live at Krea; when it
is reached the submitter polls its own live jobs (one ``GET /jobs`` page for up to 1000 jobs)
until a slot frees. Use it when the account's backlog is smaller than your batches.

Outcomes per POST:

======================================  ============================  ======================
what happened                           ledger row                    the batch
======================================  ============================  ======================
200                                     Krea's status + job id        goes on
connection lost after send, 5xx, read   ``unknown``                   goes on; reconciled
timeout                                                               after the batch
400 / 422 (Krea refused the body)       ``not_created`` (rejected)    goes on
402 (balance exhausted)                 ``not_created``               stops; Failure
401 / 403                               ``not_created``               stops; Failure
429 beyond the client's budget          ``not_created``               stops; Failure
never reached Krea (connect errors)     ``not_created``               stops; Failure
======================================  ============================  ======================
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from krea_dagster.api import (
    AmbiguousSubmitError,
    APIConnectionError,
    APIStatusError,
    AsyncKreaClient,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    Job,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    UnprocessableEntityError,
)
from krea_dagster.engine.crashpoints import crash_point
from krea_dagster.engine.ledger import REJECTED, JobUpdate, Ledger, Submission

__all__ = ["BatchSubmitter", "PlannedPrompt", "SubmitReport", "job_update"]

PROGRESS_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class PlannedPrompt:
    """A validated prompt and the exact request to send for it."""

    prompt_key: str
    request: dict[str, Any]
    request_hash: str
    estimated_usd: float | None


@dataclass
class SubmitReport:
    """What one pass over a batch did."""

    planned: int = 0
    submitted: int = 0
    skipped: int = 0
    not_created: int = 0
    unknown: list[str] = field(default_factory=list)
    submitted_usd: float = 0.0
    stopped_by: BaseException | None = None
    elapsed: float = 0.0

    @property
    def stopped(self) -> bool:
        return self.stopped_by is not None


def job_update(job: Job) -> JobUpdate:
    """The ledger facts of a job as the client returned it."""
    error = job.error
    return JobUpdate(
        job_id=job.job_id,
        status=str(job.status),
        error_code=error.code if error else None,
        error_message=error.message if error else None,
        result_url=job.result_urls[0] if job.result_urls else None,
        completed_at=job.completed_at,
        created_at=job.created_at,
    )


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
        max_inflight: int = 1,
        max_live: int = 0,
        max_attempts: int = 3,
        poll_interval: float = 2.0,
        log: logging.Logger | Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight_submits must be at least 1")
        self.client = client
        self.ledger = ledger
        self.scope = scope
        self.batch = batch
        self.generation = generation
        self.model = model
        self.run_id = run_id
        self.max_inflight = max_inflight
        self.max_live = max_live
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.log = log or logging.getLogger("krea_dagster")
        self.clock = clock
        self._live: dict[str, Submission] = {}
        self._report = SubmitReport()

    async def run(self, prompts: Sequence[PlannedPrompt]) -> SubmitReport:
        report = self._report = SubmitReport(planned=len(prompts))
        started = self.clock()
        lanes = asyncio.Semaphore(self.max_inflight)
        progress = asyncio.create_task(self._log_progress(started))
        if self.max_live:
            self._live = {
                row.job_id: row
                for row in await asyncio.to_thread(self.ledger.pending, self.scope, self.batch)
                if row.job_id
            }
        tasks: list[asyncio.Task[None]] = []
        try:
            for prompt in prompts:
                if report.stopped:
                    break
                await lanes.acquire()
                if report.stopped:
                    lanes.release()
                    break
                if self.max_live:
                    await self._wait_for_live_slot()
                tasks.append(asyncio.create_task(self._submit_one(prompt, lanes)))
            await asyncio.gather(*tasks)
        finally:
            progress.cancel()
            report.elapsed = self.clock() - started
        return report

    async def _submit_one(self, prompt: PlannedPrompt, lanes: asyncio.Semaphore) -> None:
        report = self._report
        try:
            submission_id = str(uuid.uuid4())
            claimed = await asyncio.to_thread(
                self.ledger.claim,
                scope=self.scope,
                batch=self.batch,
                generation=self.generation,
                prompt_key=prompt.prompt_key,
                model=self.model,
                request=prompt.request,
                request_hash=prompt.request_hash,
                submission_id=submission_id,
                estimated_usd=prompt.estimated_usd,
                run_id=self.run_id,
                max_attempts=self.max_attempts,
            )
            if claimed is None:
                report.skipped += 1
                return
            await self._send(claimed, prompt)
        finally:
            lanes.release()

    async def _send(self, row: Submission, prompt: PlannedPrompt) -> None:
        report = self._report
        crash_point("submit.after_intent")
        try:
            job = await self.client.submit(self.model, prompt.request)
        except AmbiguousSubmitError as error:
            await asyncio.to_thread(self.ledger.mark_unknown, row.submission_id, message=str(error))
            report.unknown.append(row.submission_id)
            self.log.warning(
                f"submission {row.submission_id} for prompt {prompt.prompt_key}: outcome "
                "unknown (will be reconciled through GET /jobs, never re-sent blindly)"
            )
        except (BadRequestError, UnprocessableEntityError, RequestValidationError) as error:
            await self._not_created(row, REJECTED, error)
        except InsufficientCreditsError as error:
            await self._not_created(row, "insufficient_credits", error, stop=True)
        except (AuthenticationError, PermissionDeniedError) as error:
            await self._not_created(row, "unauthorized", error, stop=True)
        except RateLimitError as error:
            await self._not_created(row, "rate_limited", error, stop=True)
        except APIConnectionError as error:
            await self._not_created(row, "not_sent", error, stop=True)
        except APIStatusError as error:
            await self._not_created(row, f"http_{error.status_code}", error, stop=True)
        except BaseException as error:
            # Interrupted (run terminated) or a bug while the POST may be on the wire: the
            # only honest state is "unknown"; reconciliation decides later.
            await asyncio.shield(
                asyncio.to_thread(
                    self.ledger.mark_unknown,
                    row.submission_id,
                    message=f"interrupted during submit: {type(error).__name__}",
                )
            )
            raise
        else:
            crash_point("submit.after_post")
            await asyncio.to_thread(
                self.ledger.mark_submitted,
                row.submission_id,
                job_id=job.job_id,
                status=str(job.status),
                created_at=job.created_at,
            )
            report.submitted += 1
            report.submitted_usd += prompt.estimated_usd or 0.0
            if self.max_live:
                self._live[job.job_id] = row

    async def _not_created(
        self, row: Submission, code: str, error: BaseException, *, stop: bool = False
    ) -> None:
        await asyncio.to_thread(
            self.ledger.mark_not_created, row.submission_id, code=code, message=str(error)
        )
        self._report.not_created += 1
        if stop and self._report.stopped_by is None:
            self._report.stopped_by = error
            self.log.error(f"stopping the batch: {error}")

    async def _wait_for_live_slot(self) -> None:
        """Poll this batch's live jobs until fewer than ``max_live`` remain."""
        while len(self._live) >= self.max_live:
            jobs = await self.client.poll_many(list(self._live))
            updates = [job_update(job) for job in jobs]
            await asyncio.to_thread(self.ledger.update_jobs, updates)
            for job in jobs:
                if job.is_terminal:
                    self._live.pop(job.job_id, None)
            if len(self._live) >= self.max_live:
                await asyncio.sleep(self.poll_interval)

    async def _log_progress(self, started: float) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_SECONDS)
            report = self._report
            done = report.submitted + report.skipped + report.not_created + len(report.unknown)
            elapsed = max(self.clock() - started, 1e-9)
            self.log.info(
                f"{self.batch}: submitted {report.submitted}/{report.planned} "
                f"({report.skipped} already covered), est. ${report.submitted_usd:.4f}, "
                f"{done / elapsed:.1f} prompts/s"
            )
