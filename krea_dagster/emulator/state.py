"""The emulator's state: accounts, jobs, assets, counters, and time as an event simulation.

Time is simulated lazily: every change a job will undergo is an event ``(due, seq, job id,
version)`` on a heap. :meth:`EmulatorState.advance` pops only the events that are due, in time
order, so a request costs O(log n) in the number of live jobs and never scans them; the server
also calls it from a small background task so webhooks fire and slots free when nobody polls.
A backlogged job starts at the simulated moment the slot it takes was freed, which keeps the
simulation exact however rarely ``advance`` runs. The clock is injected (see ``clock.py``).

Rules where Krea's documents are silent or contradictory (krea-api.md sections 5-9, 16):

- Backlog vs 429: a job beyond the account's concurrency is ``backlogged`` (started FIFO as
  slots free); only when the backlog is full too does POST answer 429 naming the limit. A 402 is
  checked before the 429: it does not go away by waiting.
- Billing: the price is fixed at submission and reserved while the job is live; POST answers
  402 when the balance minus the reservations of live jobs cannot cover it. Only a completed job
  is charged, at completion; failed and cancelled jobs release their reservation.
- A node-app execute is checked as a whole (402 if the balance cannot pay every step, 429 if
  free slots and backlog room cannot take every step), then creates its jobs in step order.
- ``DELETE /jobs/{id}`` cancels any non-terminal job (status ``cancelled``, ``completed_at`` set,
  ``error = {code: "cancelled", message: ...}``, not billed, slot freed, backlog advanced). On a
  terminal job it is a no-op answering 200 with the job unchanged.
- Timeouts count from the moment the job leaves the backlog (a job waiting for a slot has not
  been sent to a provider yet). A job whose fate is an injected failure (``job_failure_rate``)
  fails at the moment it would have completed; a stuck one (``stuck_rate``) stays in
  ``sampling`` until its timeout.
- ``created_at`` is unique and strictly increasing per account at microsecond resolution (a
  job created in the same microsecond as the previous one gets the next microsecond), so paging
  ``GET /jobs`` by the time cursor never loses or repeats a job.
- The job JSON rules (``completed_at`` omitted while pending...) are in ``views.py``.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import secrets
import time
import uuid
from bisect import bisect_left
from collections.abc import Iterable
from datetime import date
from typing import Any

from krea_dagster.emulator import inputs, lifecycle, views
from krea_dagster.emulator.catalog import DocumentRegistry, ModelSpec
from krea_dagster.emulator.clock import Clock, to_micros, utc_date
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.counters import Counters
from krea_dagster.emulator.errors import BadRequest, NotFound, TooManyRequests
from krea_dagster.emulator.faults import FaultInjector
from krea_dagster.emulator.images import output_size
from krea_dagster.emulator.lifecycle import JobStatus
from krea_dagster.emulator.node_apps import NodeApp, NodeAppRegistry
from krea_dagster.emulator.persistence import MemoryStore
from krea_dagster.emulator.pricing import check_balance, micros_to_usd, price_micros, usd_to_micros
from krea_dagster.emulator.records import Account, Asset, Job, NodeAppRun
from krea_dagster.emulator.validation import validate_body

DEMO_TOKEN = "00000000-0000-4000-8000-000000000000:krea-emulator-demo-secret"
COUNTER_FLUSH_SECONDS = 0.5


class EmulatorState:
    """All mutable state of one emulator; created by the app factory's caller."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Clock = time.time,
        store: MemoryStore | None = None,
        tokens: Iterable[str] = (DEMO_TOKEN,),
        cdn_url: str = "http://127.0.0.1",
    ) -> None:
        self.config = config or EmulatorConfig()
        self.initial_config = self.config.copy()
        self.clock: Clock = lambda: clock() + self.config.clock_offset_seconds  # Krea's, skewed
        self.store = store or MemoryStore()
        self.cdn_url = cdn_url
        self.documents = DocumentRegistry()  # the openapi knob's document and its models
        self.models: dict[str, ModelSpec] = self.documents.models
        self.initial_tokens = list(tokens)
        self.faults = FaultInjector(self.config)
        self.outbox: list[tuple[str, dict[str, Any]]] = []  # (url, job JSON) to deliver
        self.resets = 0  # deliveries started before a reset stop (tests stay isolated)
        self.node_apps = NodeAppRegistry(self.config.node_apps)
        self._load()

    # -- setup ------------------------------------------------------------------------------

    def _clear(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.by_token: dict[str, Account] = {}
        self.jobs: dict[str, Job] = {}
        self.assets: dict[str, Asset] = {}
        self.counters = Counters()
        self.faults.counts = self.counters.faults_injected
        self.running_total = 0
        self._events: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._counters_dirty_since: float | None = None

    def _load(self) -> None:
        self._clear()
        snapshot = self.store.load()
        # Job counters are recomputed from the jobs (exact even after a kill -9); the others
        # (requests, webhooks, faults, max_running_seen) are as last flushed.
        self.counters = Counters.from_record(snapshot.counters).without_job_counts()
        self.faults.counts = self.counters.faults_injected
        for account in snapshot.accounts:
            self._register(account)
        for job in snapshot.jobs:  # ordered by created_at
            self._index_job(job)
        for asset in snapshot.assets:
            self.assets[asset.id] = asset
            self.accounts[asset.account_id].asset_ids.append(asset.id)
        for account in self.accounts.values():
            account.asset_ids.sort(key=lambda asset_id: self.assets[asset_id].uploaded_us)
        for token in self.initial_tokens:
            if token not in self.by_token:
                self.add_account(token=token)

    def _index_job(self, job: Job) -> None:
        account = self.accounts[job.account_id]
        counters = self.counters
        self.jobs[job.id] = job
        account.job_ids.append(job.id)
        account.job_created.append(job.created_us)
        if job.request_hash in account.seen_requests:
            counters.repeated_requests += 1
        account.seen_requests.add(job.request_hash)
        counters.jobs_created += 1
        counters.jobs_by_status[job.status.value] += 1
        if job.execution_id is not None:
            counters.node_app_jobs += 1
            counters.node_app_executions += job.step == 0
        if job.status is JobStatus.COMPLETED:
            counters.jobs_billed += 1
            counters.billed_micros += job.price_micros
        if job.status in lifecycle.TERMINAL_STATUSES:
            return
        account.reserved_micros += job.price_micros
        if job.status is JobStatus.BACKLOGGED:
            account.backlog.append(job.id)
            account.backlogged += 1
        else:
            account.running += 1
            self.running_total += 1
            self._push(job)

    def _register(self, account: Account) -> None:
        if account.id in self.accounts:
            raise BadRequest(f"account id {account.id!r} already exists")
        self.accounts[account.id] = account
        self.by_token[account.token] = account

    # -- accounts ---------------------------------------------------------------------------

    def add_account(
        self,
        token: str | None = None,
        concurrency: int | None = None,
        backlog: int | None = None,
        balance_usd: float | None = None,
    ) -> Account:
        """Create an account (a random ``id:secret`` token when none is given)."""
        token = token or f"{uuid.uuid4()}:{secrets.token_urlsafe(24)}"
        account_id, sep, secret = token.partition(":")
        if not sep or not account_id or not secret or any(c.isspace() for c in token):
            raise BadRequest("token must have the shape '<id>:<secret>' without spaces")
        balance = usd_to_micros(self.config.balance_usd if balance_usd is None else balance_usd)
        account = Account(
            id=account_id,
            token=token,
            concurrency=self.config.concurrency if concurrency is None else concurrency,
            backlog_limit=self.config.backlog if backlog is None else backlog,
            balance_micros=balance,
            initial_balance_micros=balance,
        )
        self._register(account)
        self.store.save_account(account)
        return account

    def account(self, account_id: str) -> Account:
        """An account by id, or NotFound."""
        if account_id not in self.accounts:
            raise NotFound(f"account {account_id!r} not found")
        return self.accounts[account_id]

    def update_account(
        self,
        account_id: str,
        *,
        balance_usd: float | None = None,
        add_usd: float | None = None,
        concurrency: int | None = None,
        backlog: int | None = None,
    ) -> Account:
        """Set or add balance, change concurrency or backlog cap (a raise starts backlog)."""
        self.advance()
        account = self.account(account_id)
        if balance_usd is not None:
            account.balance_micros = usd_to_micros(balance_usd)
        if add_usd is not None:
            account.balance_micros += usd_to_micros(add_usd)
        if concurrency is not None:
            account.concurrency = concurrency
        if backlog is not None:
            account.backlog_limit = backlog
        self._start_backlog(account, self.clock())
        self.store.save_account(account)
        return account

    # -- time -------------------------------------------------------------------------------

    def advance(self, now: float | None = None) -> None:
        """Apply every event due at or before ``now`` (default: the clock), in time order."""
        now = self.clock() if now is None else now
        events = self._events
        while events and events[0][0] <= now:
            due, _, job_id, version = heapq.heappop(events)
            job = self.jobs.get(job_id)
            if job is None or job.version != version or job.status in lifecycle.TERMINAL_STATUSES:
                continue
            self._step(job, due)

    def next_due(self) -> float | None:
        """Clock time of the earliest pending event (stale entries included), or None."""
        return self._events[0][0] if self._events else None

    def _push(self, job: Job) -> None:
        assert job.next_due is not None
        heapq.heappush(self._events, (job.next_due, next(self._seq), job.id, job.version))

    def _schedule(self, job: Job) -> None:
        assert job.started_at is not None
        following = job.phase + 1
        if job.outcome.kind == "stuck" and job.phase >= lifecycle.STUCK_PHASE:
            natural = math.inf
        else:
            natural = job.started_at + lifecycle.PHASE_STARTS[following] * job.render_seconds
        deadline = job.started_at + job.timeout_seconds
        job.next_due, job.next_kind = (
            (natural, "step") if natural < deadline else (deadline, "timeout")
        )
        job.version += 1
        self._push(job)

    def _step(self, job: Job, at: float) -> None:
        following = job.phase + 1
        # Entering a phase, a job may fetch its inputs: a deleted asset fails it there.
        error = inputs.fetch_refusal(self, job, following)
        if job.next_kind == "timeout":
            error = ("timeout", f"The job timed out after {round(job.timeout_seconds, 3)} seconds.")
        if error is not None:
            self._finish(job, JobStatus.FAILED, at, error)
        elif following < len(lifecycle.PHASES):
            self._set_status(job, lifecycle.PHASES[following])
            job.phase = following
            self._schedule(job)
            self.store.save_job(job)
        elif job.outcome.kind == "fail":
            error = (job.outcome.code or "internal_error", job.outcome.message or "Job failed.")
            self._finish(job, JobStatus.FAILED, at, error)
        else:
            self._finish(job, JobStatus.COMPLETED, at)

    def _set_status(self, job: Job, status: JobStatus) -> None:
        lifecycle.check_transition(job.status, status)
        self.counters.jobs_by_status[job.status.value] -= 1
        self.counters.jobs_by_status[status.value] += 1
        job.status = status
        self._mark_counters_dirty()

    def _start(self, job: Job, at: float) -> None:
        account = self.accounts[job.account_id]
        self._set_status(job, JobStatus.QUEUED)
        job.started_at, job.phase = at, 0
        account.running += 1
        account.max_running_seen = max(account.max_running_seen, account.running)
        self.running_total += 1
        self.counters.max_running_seen = max(self.counters.max_running_seen, self.running_total)
        self._schedule(job)
        self.store.save_job(job)

    def _start_backlog(self, account: Account, at: float) -> None:
        while account.backlogged and account.running < account.concurrency:
            job = self.jobs[account.backlog.popleft()]
            if job.status is JobStatus.BACKLOGGED:
                account.backlogged -= 1
                self._start(job, at)
        self.store.save_account(account)

    def _finish(
        self, job: Job, status: JobStatus, at: float, error: tuple[str, str] | None = None
    ) -> None:
        account = self.accounts[job.account_id]
        held_slot = job.status is not JobStatus.BACKLOGGED
        self._set_status(job, status)
        job.completed_us = max(to_micros(at), job.created_us)
        job.error, job.next_due = error, None
        job.version += 1
        account.reserved_micros -= job.price_micros
        if status is JobStatus.COMPLETED:
            account.balance_micros -= job.price_micros
            self.counters.jobs_billed += 1
            self.counters.billed_micros += job.price_micros
            job.result_token = secrets.token_hex(8)
        if held_slot:
            account.running -= 1
            self.running_total -= 1
            self._start_backlog(account, at)
        else:
            account.backlogged -= 1  # its id is skipped when the backlog reaches it
            self.store.save_account(account)
        self.store.save_job(job)
        if job.webhook_url:
            self.outbox.append((job.webhook_url, views.job_json(job, self.cdn_url)))

    # -- jobs -------------------------------------------------------------------------------

    def today(self) -> date:
        """The emulator's date (config ``today`` or the clock's UTC date)."""
        return (
            date.fromisoformat(self.config.today) if self.config.today else utc_date(self.clock())
        )

    def submit(
        self,
        account: Account,
        spec: ModelSpec,
        raw_body: Any,
        webhook_url: str | None = None,
        zero_data_retention: bool = False,
    ) -> Job:
        """Validate and accept a generation request (400, 402, 422 or 429 otherwise)."""
        now = self.clock()
        self.advance(now)
        body = validate_body(spec, raw_body, self.today())
        return self._accept(account, [(spec, body)], now, webhook_url, zero_data_retention)[0]

    def node_app(self, app_id: str) -> NodeApp:
        """A node app by version id (404 otherwise); the ``node_apps`` knob is read live."""
        return self.node_apps.get(app_id, self.config.node_apps)

    def execute(
        self, account: Account, app: NodeApp, raw_body: Any, zero_data_retention: bool = False
    ) -> list[Job]:
        """Run a node app: one job per step, all accepted or none (400, 402, 422 or 429)."""
        now = self.clock()
        self.advance(now)
        requests = [
            (spec, validate_body(spec, body, self.today()))
            for spec, body in app.requests(app.inputs_of(raw_body))
        ]
        execution = NodeAppRun(app.id, str(uuid.uuid4()))
        return self._accept(account, requests, now, None, zero_data_retention, execution)

    def _accept(
        self,
        account: Account,
        requests: list[tuple[ModelSpec, dict[str, Any]]],
        now: float,
        webhook_url: str | None,
        zero_data_retention: bool,
        execution: NodeAppRun | None = None,
    ) -> list[Job]:
        """Create one job per validated request, atomically: every check passes before any job."""
        if zero_data_retention:
            for spec, body in requests:
                inputs.require_data_uris(spec.request_schema, body)
        prices = [price_micros(spec, body) for spec, body in requests]
        check_balance(account, prices)
        waiting = len(requests) - max(account.concurrency - account.running, 0)
        if waiting > 0 and account.backlogged + waiting > account.backlog_limit:
            raise TooManyRequests(
                f"You have reached the maximum number of concurrent jobs ({account.concurrency}) "
                f"and the backlog is full ({account.backlog_limit} jobs); retry when jobs finish"
            )
        media = [inputs.describe(self, spec.request_schema, body) for spec, body in requests]
        jobs = [
            self._new_job(account, spec, body, job_price, webhook_url, now, found)
            for (spec, body), job_price, found in zip(requests, prices, media, strict=True)
        ]
        with self.store.transaction():
            for step, job in enumerate(jobs):
                if execution is not None:
                    job.node_app_id, job.execution_id, job.step = (*execution, step)
                self._index_job(job)
                if account.running < account.concurrency:
                    account.backlog.pop()  # _index_job queued it; it starts at once instead
                    account.backlogged -= 1
                    self._start(job, now)
                else:
                    self.store.save_job(job)
            self.store.save_account(account)
        return jobs

    def _new_job(
        self,
        account: Account,
        spec: ModelSpec,
        body: dict[str, Any],
        price: int,
        webhook_url: str | None,
        now: float,
        media: list[dict[str, Any]],
    ) -> Job:
        canonical = json.dumps([spec.path, body], sort_keys=True, separators=(",", ":"))
        request_hash = hashlib.sha256(canonical.encode()).hexdigest()
        created_us = max(to_micros(now), account.last_created_us + 1)
        account.last_created_us = created_us
        config = self.config
        render = config.render_seconds or spec.nominal_seconds * config.time_scale
        width, height = output_size(spec, body)
        return Job(
            id=str(uuid.uuid4()),
            account_id=account.id,
            model_key=spec.key,
            job_type=spec.job_type,
            body=body,
            request_hash=request_hash,
            created_us=created_us,
            price_micros=price,
            outcome=self.faults.job_outcome(),
            render_seconds=render,
            timeout_seconds=spec.timeout_seconds * config.time_scale,
            width=width,
            height=height,
            webhook_url=webhook_url,
            inputs=media,
        )

    def own_job(self, account: Account, job_id: str) -> Job:
        """The account's job, after advancing time (404 for unknown or foreign ids)."""
        self.advance()
        job = self.jobs.get(job_id)
        if job is None or job.account_id != account.id:
            raise NotFound(f"job {job_id!r} not found")
        return job

    def cancel(self, account: Account, job_id: str) -> Job:
        """Cancel a non-terminal job; a terminal job is returned unchanged."""
        job = self.own_job(account, job_id)
        if job.status not in lifecycle.TERMINAL_STATUSES:
            message = "The job was cancelled by the user (DELETE /jobs/{id})."
            self._finish(job, JobStatus.CANCELLED, self.clock(), ("cancelled", message))
        return job

    def force(self, job_id: str, status: JobStatus, code: str, message: str) -> Job:
        """Admin: end any non-terminal job now as completed or failed."""
        self.advance()
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        if job.status in lifecycle.TERMINAL_STATUSES:
            raise BadRequest(f"job {job_id} is already {job.status.value}")
        error = None if status is JobStatus.COMPLETED else (code, message)
        self._finish(job, status, self.clock(), error)
        return job

    def list_jobs(
        self,
        account: Account,
        cursor_us: int | None,
        limit: int,
        status: JobStatus | None,
        types: set[str] | None,
    ) -> tuple[list[Job], int | None]:
        """Own jobs newest first, created strictly before the cursor; and the next cursor."""
        self.advance()
        end = (
            len(account.job_ids)
            if cursor_us is None
            else bisect_left(account.job_created, cursor_us)
        )
        found: list[Job] = []
        for index in range(end - 1, -1, -1):
            job = self.jobs[account.job_ids[index]]
            if (status is None or job.status is status) and (
                types is None or job.job_type in types
            ):
                found.append(job)
                if len(found) > limit:
                    break
        more = len(found) > limit
        page = found[:limit]
        return page, (page[-1].created_us if more and page else None)

    # -- admin ------------------------------------------------------------------------------

    def count_request(self, route: str, admin: bool = False) -> None:
        """Count one request by route key; counters are flushed to the store lazily."""
        (self.counters.admin_requests_by_route if admin else self.counters.requests_by_route)[
            route
        ] += 1
        self._mark_counters_dirty()

    def _mark_counters_dirty(self) -> None:
        if self._counters_dirty_since is None:
            self._counters_dirty_since = time.monotonic()

    def flush_counters(self, force: bool = False) -> None:
        """Persist the counters (always when forced, else if dirty for a flush period)."""
        since = self._counters_dirty_since
        due = since is not None and time.monotonic() - since >= COUNTER_FLUSH_SECONDS
        if force or due:
            self.store.save_counters(self.counters.to_record())
            self._counters_dirty_since = None

    def stats(self) -> dict[str, Any]:
        """The counters plus live figures (``GET /_emulator/stats``)."""
        self.advance()
        stats = self.counters.to_record(jobs=self.jobs.values())
        stats["billed_usd"] = micros_to_usd(stats.pop("billed_micros"))
        stats["running"] = self.running_total
        stats["backlogged"] = sum(a.backlogged for a in self.accounts.values())
        stats["live_jobs"] = stats["running"] + stats["backlogged"]
        stats["webhooks_pending"] = len(self.outbox)
        return stats

    def reset(self, *, config: bool = False, accounts: bool = False) -> None:
        """Clear jobs, assets and counters and restore balances; optionally config and accounts.

        ``config`` restores the knobs given at startup; ``accounts`` also removes the accounts
        created at run time and restores the settings of the startup ones.
        """
        if config:
            self.config.update(self.initial_config.to_dict())
        kept = list(self.accounts.values())
        self.store.clear_activity()
        self._clear()
        self.outbox.clear()
        self.resets += 1
        self.faults.reseed()
        for old in kept:
            if accounts and old.token not in self.initial_tokens:
                self.store.delete_account(old.id)
                continue
            account = (
                self.add_account(token=old.token)
                if accounts
                else self.add_account(
                    token=old.token,
                    concurrency=old.concurrency,
                    backlog=old.backlog_limit,
                    balance_usd=micros_to_usd(old.initial_balance_micros),
                )
            )
            account.initial_balance_micros = account.balance_micros
        self.store.save_counters(self.counters.to_record())

    def close(self) -> None:
        """Flush counters and close the store."""
        self.flush_counters(force=True)
        self.store.close()
