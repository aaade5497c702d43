"""One krea-dagster instance: a prompt source, a model, a store and a ledger, and the steps
that move a batch from prompt file to verified images.

``KreaImagePipeline`` holds no Dagster objects; the assets, sensors and schedules built by
``build_krea_image_assets`` call its steps. Keeping the steps here lets the same code run in a
run worker (assets), in the sensor daemon (deferred completion) and in tests.
"""

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pandas as pd
from PIL import Image

from krea_dagster.api import (
    AsyncKreaClient,
    DeadlineExceededError,
    Job,
    KreaClient,
    KreaError,
    catalog,
)
from krea_dagster.collect import BatchCollector, CollectReport, Thumbnail, thumbnail_data_uri
from krea_dagster.ledger import Ledger, Submission, may_submit, utcnow
from krea_dagster.manifest import build_manifest
from krea_dagster.prompts import PreparedBatch, prepare_batch, request_hash
from krea_dagster.reconcile import (
    Candidate,
    clock_bounds,
    match_windows,
    owner_is_alive,
    window_for,
)
from krea_dagster.resource import KreaResource
from krea_dagster.source import PromptSource
from krea_dagster.store import ImageStore
from krea_dagster.submit import BatchSubmitter, PlannedPrompt, SubmitReport, job_update

__all__ = ["BudgetExceededError", "KreaImagePipeline", "ReconcileReport", "SubmitSummary"]

SEED_MODULUS = 2**31 - 1
# How long a dead worker's intent row may still be "in flight" when we cannot tell otherwise.
DEFAULT_STALE_AFTER = timedelta(minutes=10)
# Rounds of one run: the first submits, later ones re-send only what reconciliation proved
# was never created (a 5xx before the job existed, a dropped connection before the request).
MAX_SUBMIT_ROUNDS = 5
# Reconciliation waits at most this long for the windows of this run's unknown rows to close.
MAX_RECONCILE_WAIT_SECONDS = 120.0


class BudgetExceededError(ValueError):
    """The new submissions of a batch are estimated above ``max_usd_per_run``."""


@dataclass
class ReconcileReport:
    attributed: int = 0
    not_created: int = 0
    cancelled: int = 0
    waiting: int = 0
    reported: list[str] = field(default_factory=list)


@dataclass
class SubmitSummary:
    generation: int
    planned: int
    to_submit: int
    estimated_usd: float
    rounds: list[SubmitReport]
    reconciled: list[ReconcileReport]

    @property
    def stopped_by(self) -> BaseException | None:
        return next((r.stopped_by for r in self.rounds if r.stopped_by), None)


@dataclass
class KreaImagePipeline:
    """Everything one instance needs to turn a batch of prompts into stored images."""

    prefix: str
    source: PromptSource
    model: str
    store: ImageStore
    ledger: Ledger
    defaults: Mapping[str, Any] = field(default_factory=dict)
    carry_columns: Sequence[str] = ()
    max_attempts: int = 3
    max_usd_per_run: float | None = None
    thumbnails: int = 24
    log: Any = field(default_factory=lambda: logging.getLogger("krea_dagster"))

    def __post_init__(self) -> None:
        self.spec = catalog.get_model(self.model)  # fails at load time on a misspelt model

    @property
    def scope(self) -> str:
        return self.prefix

    # -- prompts ---------------------------------------------------------------------------

    def prepare(self, batch: str) -> PreparedBatch:
        frame, origins = self.source.read_batch(batch)
        return prepare_batch(
            frame,
            batch=batch,
            model=self.model,
            defaults=self.defaults,
            carry_columns=self.carry_columns,
            origin=", ".join(origins),
        )

    # -- generations and plans -------------------------------------------------------------

    def open_generation(self, batch: str, *, regenerate: bool, run_id: str | None) -> int:
        if not regenerate:
            return self.ledger.ensure_generation(self.scope, batch, run_id=run_id)
        return self.ledger.start_generation(
            self.scope, batch, reason="regenerate", run_id=run_id, reuse_for_run=True
        )

    def plan(self, prompts: pd.DataFrame, generation: int) -> list[PlannedPrompt]:
        """The request of every prompt for a generation.

        A prompt without its own seed gets one derived from its key and generation when it
        has a variant or belongs to a regenerated generation: otherwise the request would be
        byte-identical to its twin's and Krea would be paid for the same image twice.
        """
        planned = []
        seeded = "seed" in self.spec.fields
        for row in prompts.to_dict(orient="records"):
            request = json.loads(row["request_json"])
            derive = generation > 1 or bool(row["variant"])
            if derive and seeded and "seed" not in request:
                digest = hashlib.sha256(f"{row['prompt_key']}:{generation}".encode()).digest()
                request["seed"] = int.from_bytes(digest[:8], "big") % SEED_MODULUS
            estimated = row["estimated_usd"]
            planned.append(
                PlannedPrompt(
                    prompt_key=row["prompt_key"],
                    request=request,
                    request_hash=request_hash(self.model, request),
                    estimated_usd=None if pd.isna(estimated) else float(estimated),
                )
            )
        return planned

    def needs_submission(
        self, planned: Sequence[PlannedPrompt], batch: str, generation: int
    ) -> list[PlannedPrompt]:
        """Prompts with no live or paid row in this generation and attempts left."""
        attempts: dict[str, list[Submission]] = {}
        for row in self.ledger.rows(self.scope, batch, generation):
            attempts.setdefault(row.prompt_key, []).append(row)
        return [
            prompt
            for prompt in planned
            if may_submit(attempts.get(prompt.prompt_key, []), self.max_attempts)
        ]

    # -- submit ----------------------------------------------------------------------------

    async def submit(
        self,
        krea: KreaResource,
        prompts: pd.DataFrame,
        *,
        batch: str,
        regenerate: bool,
        run_id: str | None,
        run_is_active: Callable[[str], bool] | None = None,
    ) -> SubmitSummary:
        """Reconcile, check the budget, submit what is missing, reconcile what is unknown."""
        generation = await asyncio.to_thread(
            self.open_generation, batch, regenerate=regenerate, run_id=run_id
        )
        planned = self.plan(prompts, generation)
        async with krea.async_client() as client:
            # Settle: a prompt whose POST a dead worker may have sent is resolved before
            # anything is submitted again (waits at most one request window, once).
            reconciled = [
                await self.reconcile(client, krea, run_is_active=run_is_active, settle=True)
            ]
            todo = await asyncio.to_thread(self.needs_submission, planned, batch, generation)
            estimate = sum(p.estimated_usd or 0.0 for p in todo)
            if self.max_usd_per_run is not None and estimate > self.max_usd_per_run:
                raise BudgetExceededError(
                    f"batch {batch!r}: {len(todo)} new submission(s) estimated at "
                    f"${estimate:.4f}, above max_usd_per_run ${self.max_usd_per_run:.4f}; "
                    "nothing was submitted. Raise the cap or split the batch."
                )
            self.log.info(
                f"{batch}: generation {generation}, {len(planned)} prompt(s), "
                f"{len(todo)} to submit, estimated ${estimate:.4f}"
            )
            rounds: list[SubmitReport] = []
            # Later rounds re-submit prompts whose POST provably created nothing.
            for _ in range(MAX_SUBMIT_ROUNDS):
                if not todo:
                    break
                submitter = BatchSubmitter(
                    client,
                    self.ledger,
                    scope=self.scope,
                    batch=batch,
                    generation=generation,
                    model=self.model,
                    run_id=run_id,
                    max_inflight=krea.max_inflight_submits,
                    max_live=krea.max_concurrent_submits,
                    max_attempts=self.max_attempts,
                    poll_interval=krea.poll_interval,
                    log=self.log,
                )
                report = await submitter.run(todo)
                rounds.append(report)
                if report.unknown:
                    reconciled.append(
                        await self.reconcile(client, krea, run_is_active=run_is_active, settle=True)
                    )
                if report.stopped:
                    break
                retry = await asyncio.to_thread(self._resolved_as_uncreated, batch, generation)
                todo = [
                    p
                    for p in await asyncio.to_thread(
                        self.needs_submission, planned, batch, generation
                    )
                    if p.prompt_key in retry
                ]
        return SubmitSummary(
            generation,
            len(planned),
            sum(r.planned for r in rounds[:1]),
            estimate,
            rounds,
            reconciled,
        )

    def _resolved_as_uncreated(self, batch: str, generation: int) -> set[str]:
        """Prompts whose latest POST reconciliation proved unbilled: safe to send again now."""
        return {
            key
            for key, row in self.latest(batch, generation).items()
            if row.error_code in ("reconciled_not_created", "unattributed")
        }

    # -- reconcile -------------------------------------------------------------------------

    async def reconcile(
        self,
        client: AsyncKreaClient,
        krea: KreaResource,
        *,
        run_is_active: Callable[[str], bool] | None = None,
        settle: bool = False,
    ) -> ReconcileReport:
        """Resolve this scope's unresolved rows whose workers are gone (see ``reconcile``).

        With ``settle``, waits (bounded) for open windows to close so that a POST that
        created nothing is known as such in this run.
        """
        report = ReconcileReport()
        waited = 0.0
        while True:
            unresolved = await asyncio.to_thread(self.ledger.unresolved)
            now = utcnow()
            mine = [
                row
                for row in unresolved
                if row.scope == self.scope
                and not owner_is_alive(
                    row, run_is_active=run_is_active, stale_after=DEFAULT_STALE_AFTER, now=now
                )
            ]
            if not mine:
                return report
            bounds = clock_bounds(await asyncio.to_thread(self.ledger.answered))
            resolvable = {row.submission_id for row in mine}
            windows = [
                window_for(
                    row,
                    bounds,
                    max_request_seconds=krea.request_window,
                    resolvable=row.submission_id in resolvable,
                )
                for row in unresolved
            ]
            start = min(w.start for w in windows)
            end = max(w.end for w in windows)
            listed: list[Candidate] = []
            async for job in client.iter_jobs(created_after=start):
                if start <= job.created_at <= end:
                    listed.append(
                        Candidate(job.job_id, job.created_at, str(job.status), job.is_terminal)
                    )
            known = await asyncio.to_thread(self.ledger.known_job_ids, start)
            candidates = [c for c in listed if c.job_id not in known]
            matching = match_windows(windows, candidates, now=utcnow())
            await self._apply(client, matching, report)
            if not (settle and matching.waiting) or waited >= MAX_RECONCILE_WAIT_SECONDS:
                report.waiting = len(matching.waiting)
                return report
            pause = min(2.0, MAX_RECONCILE_WAIT_SECONDS - waited)
            await asyncio.sleep(pause)
            waited += pause

    async def _apply(self, client: AsyncKreaClient, matching: Any, report: ReconcileReport) -> None:
        for submission_id, candidate in matching.found.items():
            await asyncio.to_thread(
                self.ledger.attribute,
                submission_id,
                job_id=candidate.job_id,
                status=candidate.status,
                created_at=candidate.created_at,
            )
            report.attributed += 1
            self.log.info(
                f"reconciled submission {submission_id}: it created job {candidate.job_id}"
            )
        for submission_id in matching.not_created:
            await asyncio.to_thread(
                self.ledger.mark_not_created,
                submission_id,
                code="reconciled_not_created",
                message="no job was created in the request's window (checked through GET /jobs)",
            )
            report.not_created += 1
        for tangle in matching.tangles:
            await self._untangle(client, tangle, report)

    async def _untangle(
        self, client: AsyncKreaClient, tangle: Any, report: ReconcileReport
    ) -> None:
        """Cancel pending jobs that cannot be attributed; report the ones already billed."""
        outcomes: dict[str, str] = {}
        for candidate in tangle.candidates:
            status = candidate.status
            if not candidate.is_terminal:
                try:
                    await client.cancel_job(candidate.job_id)
                    status = str((await client.get_job(candidate.job_id)).status)
                except KreaError as error:
                    self.log.warning(
                        f"could not cancel unattributable job {candidate.job_id}: {error}"
                    )
            outcomes[candidate.job_id] = status
        listing = ", ".join(f"{job} ({status})" for job, status in outcomes.items())
        if all(status in ("cancelled", "failed") for status in outcomes.values()):
            for submission_id in tangle.submission_ids:
                await asyncio.to_thread(
                    self.ledger.mark_unattributed_cancelled,
                    submission_id,
                    message=f"could not tell which submission created which job; cancelled them unbilled: {listing}",
                )
            report.cancelled += len(tangle.submission_ids)
            self.log.warning(f"cancelled unattributable jobs (not billed): {listing}")
            return
        for submission_id in tangle.submission_ids:
            await asyncio.to_thread(
                self.ledger.note_unresolved,
                submission_id,
                message=f"cannot attribute; candidate jobs already billed or running: {listing}",
            )
        report.reported.extend(outcomes)
        self.log.error(
            f"submissions {tangle.submission_ids} cannot be attributed to jobs {listing}; "
            "they are not re-submitted. Inspect the jobs and resolve the rows by hand."
        )

    # -- collect ---------------------------------------------------------------------------

    async def collect(
        self,
        krea: KreaResource,
        prompts: pd.DataFrame,
        *,
        batch: str,
        generation: int,
        run_is_active: Callable[[str], bool] | None = None,
    ) -> CollectReport:
        """Wait for pending jobs and store every completed job's image.

        Prompts that another live worker of the same batch is still submitting or storing (two
        runs launched at once, a retry overlapping its original) are waited for as well, within
        the same poll timeout: this run's manifest then shows their images too instead of
        calling them missing.
        """
        keys = set(prompts["prompt_key"])
        rows = [row for key, row in self.latest(batch, generation).items() if key in keys]
        captions = dict(zip(prompts["prompt_key"], prompts["prompt"], strict=True))
        poll_timeout = krea.poll_timeout or self.spec.default_wait_timeout
        deadline = time.monotonic() + poll_timeout
        async with krea.async_client() as client:
            report = await self._collector(client, krea, batch, poll_timeout).run(rows, captions)
            while waiting := await asyncio.to_thread(
                self._in_progress_elsewhere, batch, generation, keys, run_is_active
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(krea.poll_interval, remaining))
                more = await self._collector(client, krea, batch, remaining).run(waiting, captions)
                report.polls += more.polls
                report.downloaded += more.downloaded
                report.already_stored += more.already_stored
                report.image_errors += more.image_errors
                report.thumbnails.extend(
                    more.thumbnails[: self.thumbnails - len(report.thumbnails)]
                )
        if len(report.thumbnails) < self.thumbnails:
            stored = [row for key, row in self.latest(batch, generation).items() if key in keys]
            report.thumbnails.extend(
                await asyncio.to_thread(
                    self._stored_thumbnails, stored, captions, report.thumbnails
                )
            )
        return report

    def _collector(
        self, client: AsyncKreaClient, krea: KreaResource, batch: str, poll_timeout: float
    ) -> BatchCollector:
        return BatchCollector(
            client,
            self.ledger,
            self.store,
            prefix=self.prefix,
            batch=batch,
            poll_interval=krea.poll_interval,
            poll_timeout=poll_timeout,
            max_downloads=krea.max_concurrent_downloads,
            thumbnails=self.thumbnails,
            cancel_on_timeout=krea.on_poll_timeout == "cancel",
            log=self.log,
        )

    def _in_progress_elsewhere(
        self,
        batch: str,
        generation: int,
        keys: set[str],
        run_is_active: Callable[[str], bool] | None,
    ) -> list[Submission]:
        """Rows still moving after this run's collection: submitted by a live worker and not
        answered yet, rendering at Krea, or completed with the image not stored yet."""
        now = utcnow()
        moving = []
        for key, row in self.latest(batch, generation).items():
            if key not in keys:
                continue
            if (
                row.is_pending_at_krea
                or (row.is_paid and row.image_uri is None and row.error_code is None)
                or (
                    row.is_unresolved
                    and owner_is_alive(
                        row,
                        run_is_active=run_is_active,
                        stale_after=DEFAULT_STALE_AFTER,
                        now=now,
                    )
                )
            ):
                moving.append(row)
        return moving

    def _stored_thumbnails(
        self, rows: Sequence[Submission], captions: Mapping[str, str], have: Sequence[Thumbnail]
    ) -> list[Thumbnail]:
        """Thumbnails of images an earlier run stored (the gallery shows the batch, not the run)."""
        seen = {thumb.prompt_key for thumb in have}
        missing = self.thumbnails - len(have)
        found: list[Thumbnail] = []
        for row in rows:
            if len(found) >= missing:
                break
            if row.prompt_key in seen or not row.image_uri:
                continue
            try:
                with (
                    self.store.open_path(row.image_uri).open("rb") as handle,
                    Image.open(handle) as image,
                ):
                    preview = thumbnail_data_uri(image)
            except OSError:
                continue
            found.append(Thumbnail(row.prompt_key, captions.get(row.prompt_key, ""), preview))
        return found

    def latest(self, batch: str, generation: int) -> dict[str, Submission]:
        return self.ledger.latest(self.scope, batch, generation)

    def manifest(
        self, prompts: pd.DataFrame, *, batch: str, generation: int, carried: Sequence[str]
    ) -> pd.DataFrame:
        return build_manifest(
            prompts,
            self.latest(batch, generation),
            batch=batch,
            generation=generation,
            carried_columns=carried,
        )

    # -- termination -----------------------------------------------------------------------

    def cancel_run_jobs(self, krea: KreaResource, *, batch: str, run_id: str) -> list[str]:
        """Cancel the pending Krea jobs a run submitted (the run is being terminated)."""
        rows = [row for row in self.ledger.pending(self.scope, batch) if row.run_id == run_id]
        if not rows:
            return []
        with krea.client() as client:
            return [job.job_id for job in self.cancel_jobs(client, rows)]

    def cancel_jobs(
        self,
        client: KreaClient,
        rows: Sequence[Submission],
        *,
        log: Any = None,
        deadline: float | None = None,
    ) -> list[Job]:
        """Cancel these rows' jobs at Krea and record what Krea then says of each.

        A job that cannot be cancelled is logged and left pending; the rest are returned.
        ``deadline`` (``time.monotonic()`` seconds) stops the loop when it passes: the rows not
        reached stay pending for the next caller.
        """
        log = log or self.log
        cancelled: list[Job] = []
        for index, row in enumerate(rows):
            try:
                client.cancel_job(row.job_id or "", deadline=deadline)
                job = client.get_job(row.job_id or "", deadline=deadline)
            except DeadlineExceededError:
                log.warning(
                    f"deadline reached after {len(cancelled)} cancel(s); {len(rows) - index} "
                    "job(s) left for the next tick"
                )
                break
            except KreaError as error:
                log.warning(f"could not cancel job {row.job_id}: {error}")
                continue
            self.ledger.update_jobs([job_update(job)])
            cancelled.append(job)
        return cancelled
