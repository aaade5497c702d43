"""One step of a node: a model, a store, a ledger scope, and the verbs that move a batch of
the step from validated prompts to verified outputs.

``KreaImagePipeline`` holds no Dagster objects. Each asset body of a step calls one of its
verbs (``validate`` through ``KreaNode.prepare``, ``submit``, ``collect`` and ``manifest``), so
every entry point gets the same order (validation before any upload, uploads only for what is
about to be sent) and the same failure policy; the same code runs in a run worker (assets), in
the sensor daemon (deferred completion) and in tests.
"""

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from PIL import Image

from krea_dagster.api import AsyncKreaClient, Job, JobStatus, UnknownModelError, catalog
from krea_dagster.api.catalog import ModelCatalog, bundled_catalog
from krea_dagster.api.config import DEFAULT_EXTERNAL_WAIT_TIMEOUT
from krea_dagster.engine.cancel import cancel_jobs
from krea_dagster.engine.catalogs import catalog_for
from krea_dagster.engine.collect import BatchCollector, CollectReport, Thumbnail, thumbnail_data_uri
from krea_dagster.engine.errors import BudgetExceededError, ErrorCode, is_transient_job_error
from krea_dagster.engine.ledger import (
    Ledger,
    Submission,
    attempts_by_prompt,
    may_submit,
)
from krea_dagster.engine.manifest import build_manifest
from krea_dagster.engine.prompts import (
    REFERENCES_COLUMN,
    SKIP_COLUMN,
    VALIDATION_COLUMN,
    PreparedBatch,
    prepare_batch,
    request_hash,
)
from krea_dagster.engine.reconcile import Outcome, settle
from krea_dagster.engine.references import (
    AsyncReferenceResolver,
    CheckedReferences,
    check_unchanged,
    forget_gone_uploads,
    resolve_upload_tokens,
)
from krea_dagster.engine.run import run_coroutine
from krea_dagster.engine.settings import KreaAccount
from krea_dagster.engine.store import ImageStore
from krea_dagster.engine.submit import BatchSubmitter, PlannedPrompt, SubmitReport

__all__ = ["KreaImagePipeline", "SubmitSummary"]

SEED_MODULUS = 2**31 - 1
# Rounds of one run: the first submits, later ones re-send only what reconciliation proved
# was never created (a 5xx before the job existed, a dropped connection before the request).
MAX_SUBMIT_ROUNDS = 5
#: The codes of a row a jobs run sends again by itself, in its next round: Krea created
#: nothing, and nothing about the prompt is wrong.
RESENT_IN_THE_RUN = frozenset(
    {ErrorCode.RECONCILED_NOT_CREATED, ErrorCode.RECONCILED_CANCELLED, ErrorCode.STALE_UPLOAD}
)
# Seconds before resubmitting jobs that failed transiently (doubling each round).
TRANSIENT_RETRY_BACKOFF = 2.0


@dataclass
class SubmitSummary:
    generation: int
    planned: int
    to_submit: int
    estimated_usd: float
    rounds: list[SubmitReport]
    reconciled: list[Outcome]

    @property
    def stopped_by(self) -> BaseException | None:
        return next((r.stopped_by for r in self.rounds if r.stopped_by), None)


@dataclass
class KreaImagePipeline:
    """Everything one step needs to turn a batch of validated prompts into stored outputs.

    ``prefix`` is the step's ledger scope and its folder in the store.
    """

    prefix: str
    model: str
    store: ImageStore
    ledger: Ledger
    defaults: Mapping[str, Any] = field(default_factory=dict)
    max_attempts: int = 3
    max_usd_per_run: float | None = None
    thumbnails: int = 24
    #: USD per request of this model, used instead of the catalog's price (needed for a budget
    #: cap on a model the catalog has no price for).
    price_usd: float | None = None

    # The model is not checked when the definitions load: a model Krea added after this
    # release is only in the backend's live catalog, read when a run starts; a misspelt one is
    # refused there, before anything is paid, with the nearest names.

    @property
    def is_node_app(self) -> bool:
        """Whether the steps execute a Krea node app (one row, several jobs)."""
        return catalog.node_app_id(self.model) is not None

    def model_catalog(self, krea: KreaAccount, *, refresh: bool = False) -> ModelCatalog:
        """The catalog that validates this instance's batches now (``catalogs.catalog_for``):
        the backend's live one, cached in the ledger database, else the bundled one."""
        return catalog_for(krea.catalog_settings, self.ledger, refresh=refresh)

    def spec_in(self, models: ModelCatalog | None = None) -> catalog.ModelSpec:
        """The model's spec in ``models`` (default: the bundled catalog); a node app's once its
        run loaded it (``nodes.load_node_app``)."""
        return (models or bundled_catalog()).get(self.model)

    @property
    def default_wait_timeout(self) -> float:
        """How long a job may take before it is given up (a node app's, or a model's the
        bundled catalog does not know: an external one's)."""
        if self.is_node_app:
            return DEFAULT_EXTERNAL_WAIT_TIMEOUT
        try:
            return self.spec_in().default_wait_timeout
        except UnknownModelError:
            return DEFAULT_EXTERNAL_WAIT_TIMEOUT

    @property
    def scope(self) -> str:
        return self.prefix

    # -- prompts ---------------------------------------------------------------------------

    def validate(
        self,
        frame: pd.DataFrame,
        *,
        batch: str,
        carry_columns: Sequence[str] = (),
        origin: str = "",
        locations: Sequence[str] | None = None,
        references: CheckedReferences | None = None,
        row_keys: Sequence[str] | None = None,
        skips: Sequence[str | None] | None = None,
        models: ModelCatalog | None = None,
    ) -> PreparedBatch:
        """Validate a batch's rendered rows against the step's model (``prepare_batch``) in
        ``models`` (default: the bundled catalog)."""
        return prepare_batch(
            frame,
            batch=batch,
            model=self.model,
            defaults=self.defaults,
            carry_columns=carry_columns,
            origin=origin,
            locations=locations,
            price_usd=self.price_usd,
            max_usd_per_run=self.max_usd_per_run,
            references=references,
            row_keys=row_keys,
            skips=skips,
            catalog=models,
        )

    # -- generations and plans -------------------------------------------------------------

    def open_generation(
        self, batch: str, *, regeneration_id: str | None, run_id: str | None
    ) -> int:
        """The generation a run works on: the current one, or the one ``regeneration_id`` opened.

        ``regeneration_id`` is minted once per request to regenerate (a schedule tick, a
        launch) and carried by retries and re-executions, so they reuse its generation.
        """
        if regeneration_id is None:
            return self.ledger.ensure_generation(self.scope, batch, run_id=run_id)
        return self.ledger.start_generation(
            self.scope, batch, reason="regenerate", request_id=regeneration_id, run_id=run_id
        )

    def plan(
        self, prompts: pd.DataFrame, generation: int, models: ModelCatalog | None = None
    ) -> list[PlannedPrompt]:
        """The request of every prompt for a generation (``models``: the validating catalog).

        A prompt without its own seed gets one derived from its key and generation when it
        has a variant or belongs to a regenerated generation: otherwise the request would be
        byte-identical to its twin's and Krea would be paid for the same image twice (a model
        sent unvalidated gets no seed it was not given: its fields are unknown).
        """
        planned = []
        spec = self.spec_in(models)
        seeded = spec.validated and "seed" in spec.fields
        for row in prompts.to_dict(orient="records"):
            if SKIP_COLUMN in row and isinstance(row[SKIP_COLUMN], str) and row[SKIP_COLUMN]:
                continue  # a recorded skip: never sent
            request = json.loads(row["request_json"])
            files = row.get(REFERENCES_COLUMN)
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
                    files=json.loads(files) if isinstance(files, str) and files else {},
                )
            )
        return planned

    def needs_submission(
        self, planned: Sequence[PlannedPrompt], batch: str, generation: int
    ) -> list[PlannedPrompt]:
        """Prompts with no live or paid row in this generation and attempts left."""
        attempts, outputs = attempts_by_prompt(self.ledger.rows(self.scope, batch, generation))
        return [
            prompt
            for prompt in planned
            if may_submit(attempts.get(prompt.prompt_key, []), self.max_attempts, outputs)
        ]

    # -- submit ----------------------------------------------------------------------------

    async def submit(
        self,
        krea: KreaAccount,
        prompts: pd.DataFrame,
        *,
        batch: str,
        regeneration_id: str | None,
        run_id: str | None,
        log: logging.Logger | Any,
    ) -> SubmitSummary:
        """Settle the account, check the budget, submit what is missing, re-send what provably
        was not created."""
        models = await asyncio.to_thread(self.model_catalog, krea)
        self.spec_in(models)  # a model the catalog lacks stops here, before anything is sent
        generation = await asyncio.to_thread(
            self.open_generation, batch, regeneration_id=regeneration_id, run_id=run_id
        )
        planned = self.plan(prompts, generation, models)
        await asyncio.to_thread(self.ledger.register_account, krea.account_id)
        async with krea.async_client() as client:
            reconciled = await self.settle(client, krea, log=log)
            todo = await asyncio.to_thread(self.needs_submission, planned, batch, generation)
            estimate = sum(p.estimated_usd or 0.0 for p in todo)
            unpriced = sum(p.estimated_usd is None for p in todo)
            if self.max_usd_per_run is not None and unpriced:
                raise BudgetExceededError(
                    f"batch {batch!r}: {unpriced} new submission(s) have no known price, so "
                    f"max_usd_per_run ${self.max_usd_per_run:.4f} cannot be enforced; nothing "
                    "was submitted. Give price_usd (USD per request) or remove the cap."
                )
            if self.max_usd_per_run is not None and estimate > self.max_usd_per_run:
                raise BudgetExceededError(
                    f"batch {batch!r}: {len(todo)} new submission(s) estimated at "
                    f"${estimate:.4f}, above max_usd_per_run ${self.max_usd_per_run:.4f}; "
                    "nothing was submitted. Raise the cap or split the batch."
                )
            log.info(
                f"{batch}: generation {generation}, {len(planned)} prompt(s), "
                f"{len(todo)} to submit, estimated ${estimate:.4f}"
            )
            # Before the first POST: until every planned prompt has a row, the completion
            # sensor knows the batch is not done, even if this worker dies part way.
            await asyncio.to_thread(
                self.ledger.record_plan,
                self.scope,
                batch,
                generation,
                [p.prompt_key for p in planned],
                run_id=run_id,
            )
            rounds = await self._submit_rounds(
                client,
                krea,
                todo,
                planned,
                batch=batch,
                generation=generation,
                run_id=run_id,
                log=log,
                models=models,
            )
        for report in rounds:
            reconciled.extend(report.reconciled)
        return SubmitSummary(
            generation,
            len(planned),
            sum(r.planned for r in rounds[:1]),
            estimate,
            rounds,
            reconciled,
        )

    async def _submit_rounds(
        self,
        client: AsyncKreaClient,
        krea: KreaAccount,
        todo: list[PlannedPrompt],
        planned: Sequence[PlannedPrompt],
        *,
        batch: str,
        generation: int,
        run_id: str | None,
        log: logging.Logger | Any,
        models: ModelCatalog,
        retry_codes: frozenset[str] = RESENT_IN_THE_RUN,
    ) -> list[SubmitReport]:
        """Submit ``todo``; then, up to ``MAX_SUBMIT_ROUNDS``, re-send the prompts whose latest
        row ended with one of ``retry_codes`` (proven never created, or refused for an upload
        Krea no longer has: uploaded again first)."""
        rounds: list[SubmitReport] = []
        resolver = AsyncReferenceResolver(client, self.ledger.upload_cache(krea.account_id))
        for _ in range(MAX_SUBMIT_ROUNDS):
            if not todo:
                break
            todo = await self._with_uploads(todo, resolver, batch=batch, log=log)
            submitter = BatchSubmitter(
                client,
                self.ledger,
                scope=self.scope,
                batch=batch,
                generation=generation,
                model=self.model,
                run_id=run_id,
                account=krea.account_id,
                request_window=krea.request_window,
                max_live=krea.max_concurrent_submits,
                lanes=krea.submit_lanes,
                max_attempts=self.max_attempts,
                poll_interval=krea.poll_interval,
                log=log,
                catalog=models,
            )
            report = await submitter.run(todo)
            rounds.append(report)
            if report.stopped:
                break
            latest = await asyncio.to_thread(self.latest, batch, generation)
            again = {key for key, row in latest.items() if row.error_code in retry_codes}
            todo = [
                prompt
                for prompt in await asyncio.to_thread(
                    self.needs_submission, planned, batch, generation
                )
                if prompt.prompt_key in again
            ]
        return rounds

    async def _with_uploads(
        self,
        todo: list[PlannedPrompt],
        resolver: AsyncReferenceResolver,
        *,
        batch: str,
        log: logging.Logger | Any,
    ) -> list[PlannedPrompt]:
        """The prompts about to be sent, each file they name uploaded (once per content hash
        and account) and its asset URL in place of the validated request's upload token.

        Only what is sent now is uploaded: a re-run that sends nothing uploads nothing. Every
        file is checked to still be what was validated before the first upload, so a changed
        file stops the batch with nothing uploaded.
        """
        files = {token: source for prompt in todo for token, source in prompt.files.items()}
        if files:
            await asyncio.to_thread(check_unchanged, files)
        ready = []
        before = resolver.uploads
        for prompt in todo:
            if not prompt.files:
                ready.append(prompt)
                continue
            request = await resolve_upload_tokens(prompt.request, prompt.files, resolver)
            ready.append(
                dataclasses.replace(
                    prompt, request=request, request_hash=request_hash(self.model, request)
                )
            )
        if resolver.uploads > before:
            log.info(f"{batch}: uploaded {resolver.uploads - before} reference file(s)")
        return ready

    async def settle(
        self, client: AsyncKreaClient, krea: KreaAccount, *, log: logging.Logger | Any
    ) -> list[Outcome]:
        """Reconcile this account's unresolved rows that no live worker holds (a dead
        worker's), each with the rows its window overlaps (``engine.reconcile.settle``)."""
        return await settle(
            client, self.ledger, krea.account_id, request_window=krea.request_window, log=log
        )

    # -- collect ---------------------------------------------------------------------------

    async def collect(
        self,
        krea: KreaAccount,
        prompts: pd.DataFrame,
        *,
        batch: str,
        generation: int,
        run_id: str | None,
        log: logging.Logger | Any,
    ) -> CollectReport:
        """Wait for pending jobs and store every completed job's image.

        Jobs that failed for a transient reason (``internal_error``, ...) are submitted again
        within the same run, with backoff, while ``max_attempts`` allows (failed jobs are not
        billed); permanent failures never are. Prompts that another live worker of the same
        batch is still submitting or storing are waited for too, within the same poll timeout,
        so this run's manifest shows their images instead of calling them missing.
        """
        keys = set(prompts["prompt_key"])
        captions = dict(zip(prompts["prompt_key"], prompts["prompt"], strict=True))
        poll_timeout = krea.poll_timeout or self.default_wait_timeout
        deadline = time.monotonic() + poll_timeout
        report = CollectReport()
        backoff = TRANSIENT_RETRY_BACKOFF
        checked: set[str] = set()  # failed rows whose uploads were checked at Krea
        async with krea.async_client() as client:
            waiting = await asyncio.to_thread(self.rows_of, batch, generation, keys)
            while waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                collector = self._collector(client, krea, batch, remaining, log)
                report.merge(await collector.run(waiting, captions), self.thumbnails)
                retry = await self._failures_to_resend(
                    client, krea, batch, generation, keys, checked
                )
                if retry:
                    log.warning(
                        f"{batch}: {len(retry)} job(s) failed transiently or for an uploaded "
                        f"file Krea no longer has; submitting them again in {backoff:.0f} s "
                        "(failed jobs are not billed)"
                    )
                    await asyncio.sleep(min(backoff, max(remaining, 0)))
                    backoff *= 2
                    models = await asyncio.to_thread(self.model_catalog, krea)
                    planned = self.plan(prompts, generation, models)
                    await self._submit_rounds(
                        client,
                        krea,
                        [p for p in planned if p.prompt_key in retry],
                        planned,
                        batch=batch,
                        generation=generation,
                        run_id=run_id,
                        log=log,
                        models=models,
                    )
                    report.resubmitted += len(retry)
                waiting = await asyncio.to_thread(
                    self._in_progress, batch, generation, keys, krea.account_id
                )
                if waiting and not retry:
                    await asyncio.sleep(min(krea.poll_interval, max(remaining, 0)))
        if len(report.thumbnails) < self.thumbnails:
            stored = await asyncio.to_thread(self.rows_of, batch, generation, keys)
            report.thumbnails.extend(
                await asyncio.to_thread(
                    self._stored_thumbnails, stored, captions, report.thumbnails
                )
            )
        return report

    def _collector(
        self,
        client: AsyncKreaClient,
        krea: KreaAccount,
        batch: str,
        poll_timeout: float,
        log: logging.Logger | Any,
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
            log=log,
        )

    async def store_completed(
        self,
        krea: KreaAccount,
        rows: Sequence[Submission],
        *,
        deadline: float | None = None,
        log: logging.Logger | Any,
    ) -> CollectReport:
        """Store the images of these completed rows now (``BatchCollector.store_rows``), starting no
        download after ``deadline`` (``time.monotonic()``): the deferred path's collection."""
        if not rows:
            return CollectReport()
        async with krea.async_client() as client:
            collector = BatchCollector(
                client,
                self.ledger,
                self.store,
                prefix=self.prefix,
                batch=", ".join(sorted({row.batch for row in rows})),
                poll_interval=krea.poll_interval,
                poll_timeout=0.0,
                max_downloads=krea.max_concurrent_downloads,
                thumbnails=0,
                log=log,
            )
            return await collector.store_rows(rows, deadline=deadline)

    async def _failures_to_resend(
        self,
        client: AsyncKreaClient,
        krea: KreaAccount,
        batch: str,
        generation: int,
        keys: set[str],
        checked: set[str],
    ) -> set[str]:
        """Prompts whose latest job failed and that may be sent again (``may_submit``: attempts
        left, and for a node app no job of its execution live or completed: executing it again
        would pay again for those): failed transiently, or failed because an uploaded file its
        request names is gone at Krea (``forget_gone_uploads``: uploaded again before the
        re-send). ``checked`` keeps each failed row's uploads from being asked about twice."""
        rows = await asyncio.to_thread(self.ledger.rows, self.scope, batch, generation)
        attempts, outputs = attempts_by_prompt(rows)
        cache = self.ledger.upload_cache(krea.account_id)
        resend: set[str] = set()
        for key, tried in attempts.items():
            latest = tried[-1]
            if (
                key not in keys
                or latest.state != JobStatus.FAILED
                or not may_submit(tried, self.max_attempts, outputs)
            ):
                continue
            if is_transient_job_error(latest.error_code):
                resend.add(key)
            elif latest.submission_id not in checked:
                checked.add(latest.submission_id)
                if await forget_gone_uploads(client, cache, latest.request):
                    resend.add(key)
        return resend

    def _in_progress(
        self, batch: str, generation: int, keys: set[str], account: str
    ) -> list[Submission]:
        """Rows still moving: being sent by a live worker, rendering at Krea, or completed
        with the image not stored yet."""
        moving = []
        live = self.ledger.live_holders(account)  # one lease read per pass, not one per row
        for row in self.rows_of(batch, generation, keys):
            if (
                row.is_pending_at_krea
                or (row.is_paid and row.image_uri is None and row.error_code is None)
                or (row.is_unresolved and row.submission_id in live)
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

    def rows_of(self, batch: str, generation: int, keys: set[str]) -> list[Submission]:
        """The latest row of each of these prompts, then the output rows of node-app ones."""
        rows = [row for key, row in self.latest(batch, generation).items() if key in keys]
        if not self.is_node_app:
            return rows
        outputs = self.ledger.outputs(row.submission_id for row in rows)
        return [*rows, *(out for row in rows for out in outputs.get(row.submission_id, ()))]

    def manifest(
        self, prompts: pd.DataFrame, *, batch: str, generation: int, carried: Sequence[str]
    ) -> pd.DataFrame:
        latest = self.latest(batch, generation)
        if VALIDATION_COLUMN in prompts.columns and VALIDATION_COLUMN not in carried:
            carried = [VALIDATION_COLUMN, *carried]  # a batch sent unvalidated says so
        return build_manifest(
            prompts,
            latest,
            batch=batch,
            generation=generation,
            carried_columns=carried,
            outputs=(
                self.ledger.outputs(row.submission_id for row in latest.values())
                if self.is_node_app
                else None
            ),
        )

    # -- termination -----------------------------------------------------------------------

    def cancel_run_jobs(
        self, krea: KreaAccount, *, batch: str, run_id: str, log: logging.Logger | Any
    ) -> list[str]:
        """Cancel the pending Krea jobs a run submitted (the run is being terminated)."""
        rows = [row for row in self.ledger.pending(self.scope, batch) if row.run_id == run_id]
        if not rows:
            return []
        return [job.job_id for job in self.cancel(krea, rows, log=log)]

    def cancel(
        self,
        krea: KreaAccount,
        rows: Sequence[Submission],
        *,
        log: logging.Logger | Any,
        deadline: float | None = None,
    ) -> list[Job]:
        """Cancel these rows' jobs (``krea_dagster.engine.cancel``) from synchronous code."""

        async def work() -> list[Job]:
            async with krea.async_client() as client:
                job_ids = [row.job_id for row in rows if row.job_id]
                return await cancel_jobs(client, self.ledger, job_ids, log=log, deadline=deadline)

        return run_coroutine(work())
