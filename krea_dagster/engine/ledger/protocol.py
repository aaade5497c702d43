"""The write protocol: every state change of the ledger, each one guarded SQL statement.

Intent before the POST (``claim``, which takes a submit lane of the account and the row's
lease, and records the first attempt's send time, in the same transaction), the send time before each later attempt
(``note_send``), the answer after it
(``mark_submitted`` / ``mark_unknown`` / ``mark_not_created``, which give the lease back), then
every later fact about the job (``update_jobs``, ``record_image``). Each ``WHERE`` holds its
guard (compare-and-set), so a status never moves backwards and an answer is written once,
whatever the interleaving of workers.
"""

import json
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from krea_dagster.api.models import JobStatus
from krea_dagster.engine.errors import ErrorCode
from krea_dagster.engine.ledger.records import (
    STATUS_RANK,
    TERMINAL_STATES,
    UNRANKED,
    UNRESOLVED_STATES,
    Claim,
    JobUpdate,
    Lease,
    Submission,
    SubmissionState,
    may_submit,
    output_key,
    utcnow,
)
from krea_dagster.engine.ledger.schema import (
    LedgerDatabase,
    accounts_table,
    chunks,
    generations_table,
    leases_table,
    plans_table,
    submissions_table,
)

__all__ = ["LedgerWrites"]

# The columns an output row does not copy from its submission row.
_OWN_OUTPUT_COLUMNS = frozenset(
    {
        "submission_id",
        "prompt_key",
        "parent_id",
        "job_id",
        "state",
        "estimated_usd",
        "cost_usd",
        "krea_created_at",
        "submitted_at",
        "updated_at",
    }
)


def _status_rank(column: Any) -> Any:
    """SQL: the rank of the status in ``column`` (see ``STATUS_RANK``)."""
    return sa.case(
        *((column == status, rank) for status, rank in STATUS_RANK.items()),
        else_=UNRANKED,
    )


def _state_values(status: str) -> dict[str, Any]:
    """Column values that go with writing ``status``: a completed job carries its cost.

    Krea does not report the charge per job; the catalog's price for the exact request is it,
    however the row learnt that its job completed (a poll, the POST answer, reconciliation).
    """
    values: dict[str, Any] = {"state": status}
    if status == JobStatus.COMPLETED:
        values["cost_usd"] = sa.func.coalesce(
            submissions_table.c.cost_usd, submissions_table.c.estimated_usd
        )
    return values


class LedgerWrites(LedgerDatabase):
    """Every write of the ledger (see ``Ledger``)."""

    # -- accounts --------------------------------------------------------------------------

    def register_account(self, account: str) -> None:
        """Record that this ledger serves a Krea account (the token's key id, never the secret)."""
        with self.transaction() as conn:
            exists = conn.execute(
                sa.select(accounts_table.c.account).where(accounts_table.c.account == account)
            ).first()
            if exists is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            accounts_table.insert().values(
                                account=account, first_seen_at=utcnow(), foreign_jobs_seen=0
                            )
                        )
                except sa.exc.IntegrityError:
                    pass  # another worker registered it at the same moment

    def note_foreign_jobs(self, account: str, job_ids: Sequence[str]) -> None:
        """Jobs on the account that no submission of this ledger made (another ledger or tool)."""
        if not job_ids:
            return
        self.register_account(account)
        with self.transaction() as conn:
            conn.execute(
                accounts_table.update()
                .where(accounts_table.c.account == account)
                .values(
                    foreign_jobs_seen=accounts_table.c.foreign_jobs_seen + len(job_ids),
                    last_foreign_job_id=job_ids[-1],
                )
            )

    # -- generations -----------------------------------------------------------------------

    def start_generation(
        self,
        scope: str,
        batch: str,
        *,
        reason: str,
        request_id: str,
        run_id: str | None = None,
    ) -> int:
        """The generation opened for ``request_id``: found if it exists, else ``current + 1``.

        ``request_id`` names one request to regenerate (a schedule tick, a launch). A retry or
        a re-execution of that run carries it, so it finds this generation and pays for
        nothing twice; the unique index makes two concurrent openers agree.
        """
        for _ in range(10):
            try:
                with self.transaction() as conn:
                    found = conn.execute(
                        sa.select(generations_table.c.generation).where(
                            generations_table.c.scope == scope,
                            generations_table.c.batch == batch,
                            generations_table.c.request_id == request_id,
                        )
                    ).scalar_one_or_none()
                    if found is not None:
                        return int(found)
                    generation = self._current_generation(conn, scope, batch) + 1
                    conn.execute(
                        generations_table.insert().values(
                            scope=scope,
                            batch=batch,
                            generation=generation,
                            reason=reason,
                            run_id=run_id,
                            request_id=request_id,
                            started_at=utcnow(),
                        )
                    )
                    return generation
            except sa.exc.IntegrityError:
                continue  # a concurrent opener won (same request, or the same number); read again
        raise RuntimeError(f"could not open a new generation for batch {batch!r}")

    def ensure_generation(self, scope: str, batch: str, *, run_id: str | None = None) -> int:
        """The current generation of a batch, opening generation 1 for a new batch."""
        current = self.current_generation(scope, batch)
        if current:
            return current
        # Insert generation 1 itself, not through start_generation: when two workers start a
        # new batch at the same moment, the loser must find generation 1, not open generation 2.
        try:
            with self.transaction() as conn:
                conn.execute(
                    generations_table.insert().values(
                        scope=scope,
                        batch=batch,
                        generation=1,
                        reason="first",
                        run_id=run_id,
                        started_at=utcnow(),
                    )
                )
            return 1
        except sa.exc.IntegrityError:
            return self.current_generation(scope, batch)  # a concurrent worker opened it

    def record_plan(
        self,
        scope: str,
        batch: str,
        generation: int,
        prompt_keys: Sequence[str],
        *,
        run_id: str | None,
    ) -> None:
        """The prompts this generation of the batch is meant to cover, written by the jobs step
        before it sends anything; it replaces an earlier step's plan (a changed batch)."""
        keys = sorted(set(prompt_keys))
        now = utcnow()
        with self.transaction() as conn:
            conn.execute(
                plans_table.delete().where(
                    plans_table.c.scope == scope,
                    plans_table.c.batch == batch,
                    plans_table.c.generation == generation,
                )
            )
            if keys:
                conn.execute(
                    plans_table.insert(),
                    [
                        {
                            "scope": scope,
                            "batch": batch,
                            "generation": generation,
                            "prompt_key": key,
                            "run_id": run_id,
                            "planned_at": now,
                        }
                        for key in keys
                    ],
                )

    # -- the submission protocol -----------------------------------------------------------

    def claim(
        self,
        *,
        scope: str,
        batch: str,
        generation: int,
        prompt_key: str,
        model: str,
        request: Mapping[str, Any],
        request_hash: str,
        submission_id: str,
        estimated_usd: float | None,
        run_id: str | None,
        max_attempts: int,
        account: str,
        lease_seconds: float,
        sent_at: datetime | None = None,
        krea_offset: tuple[float, float] | None = None,
        lanes: int = 1,
    ) -> Claim:
        """Write the intent to submit a prompt and take a free submit lane of the account (one
        of ``lanes``), or say why not.

        Both happen in one transaction, so an unresolved row always holds a lease. A lane whose
        lease expired (its worker is gone) is taken over when no lane is free: its row is
        parked (it keeps its lease, never sends again) and handed back in ``taken_over`` for
        the caller to reconcile. With ``sent_at`` (and ``krea_offset``, as ``note_send`` takes
        them) the same transaction records the first attempt's send, so a POST costs two
        transactions: this one and its answer's. The row comes back as written, without
        reading it again.
        """
        now = utcnow()
        try:
            with self.transaction() as conn:
                previous = self._attempts(conn, scope, batch, prompt_key, generation)
                if not may_submit(previous, max_attempts, self._outputs(conn, previous)):
                    return Claim(covered=True)
                lane, taken_over, busy = self._free_lane(conn, account, lanes, now)
                if lane is None:
                    return Claim(lease=busy)
                values: dict[str, Any] = {
                    "submission_id": submission_id,
                    "scope": scope,
                    "batch": batch,
                    "generation": generation,
                    "prompt_key": prompt_key,
                    "attempt": (previous[-1].attempt if previous else 0) + 1,
                    "model": model,
                    "request_hash": request_hash,
                    "request_json": json.dumps(request, sort_keys=True),
                    "state": SubmissionState.INTENT.value,
                    "account": account,
                    "run_id": run_id,
                    "owner_host": socket.gethostname(),
                    "estimated_usd": estimated_usd,
                    "intent_at": now,
                    "sent_at": sent_at,
                    **_offset_columns(krea_offset),
                    "updated_at": now,
                }
                conn.execute(submissions_table.insert().values(**values))
                conn.execute(
                    leases_table.insert().values(
                        submission_id=submission_id,
                        account=account,
                        lane=lane,
                        expires_at=now + timedelta(seconds=lease_seconds),
                        owner_host=socket.gethostname(),
                        owner_pid=os.getpid(),
                        updated_at=now,
                    )
                )
        except sa.exc.IntegrityError:
            # A concurrent worker claimed the same attempt, or took the same lane first.
            covered = self._covered(scope, batch, prompt_key, generation, max_attempts)
            return Claim(covered=covered)
        return Claim(row=Submission.written(values), taken_over=taken_over)

    def _free_lane(
        self, conn: Connection, account: str, lanes: int, now: datetime
    ) -> tuple[int | None, tuple[Submission, ...], Lease | None]:
        """A submit lane of the account for a new claim: the lowest free one, else one whose
        lease expired (its row parked and returned), else None and the live lease that expires
        first."""
        rows = conn.execute(
            sa.select(leases_table)
            .where(leases_table.c.account == account, leases_table.c.lane.is_not(None))
            .with_for_update()
        ).all()
        held: dict[int, Lease] = {}
        for row in rows:
            lease = self._lease(conn, row)
            if lease is None:  # its row was answered by a writer older than this one
                conn.execute(
                    leases_table.delete().where(leases_table.c.submission_id == row.submission_id)
                )
            else:
                held[row.lane] = lease
        free = [lane for lane in range(lanes) if lane not in held]
        if free:
            return free[0], (), None
        in_use = [held[lane] for lane in range(lanes)]
        expired = [lease for lease in in_use if lease.is_expired(now)]
        if not expired:
            return None, (), min(in_use, key=lambda lease: lease.expires_at or now)
        gone = expired[0]
        conn.execute(
            leases_table.update()
            .where(leases_table.c.submission_id == gone.holder.submission_id)
            .values(lane=None, updated_at=now)
        )
        return gone.lane, (gone.holder,), None

    def _covered(
        self, scope: str, batch: str, prompt_key: str, generation: int, max_attempts: int
    ) -> bool:
        with self.engine.connect() as conn:
            previous = self._attempts(conn, scope, batch, prompt_key, generation)
            return not may_submit(previous, max_attempts, self._outputs(conn, previous))

    def note_send(
        self,
        submission_id: str,
        *,
        sent_at: datetime,
        lease_seconds: float,
        krea_offset: tuple[float, float] | None = None,
    ) -> bool:
        """A later attempt of the POST is about to go out (or to wait, then go): record when,
        extend the lease. (The first attempt's send is recorded by ``claim``.)

        ``krea_offset``: Krea's clock minus ours (seconds, at least and at most) as measured
        just before, so that any worker can place the window in Krea's clock. False, with
        nothing written, unless the row still holds a live lease (it did not expire and get
        taken over) and is still an intent (nobody resolved it meanwhile): the caller must not
        send. Both are compare-and-set, checked by their row counts.
        """
        now = utcnow()
        try:
            with self.transaction() as conn:
                kept = conn.execute(
                    leases_table.update()
                    .where(
                        leases_table.c.submission_id == submission_id,
                        leases_table.c.lane.is_not(None),
                        leases_table.c.expires_at > now,
                    )
                    .values(expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
                )
                if kept.rowcount != 1:
                    return False
                recorded = conn.execute(
                    submissions_table.update()
                    .where(
                        submissions_table.c.submission_id == submission_id,
                        submissions_table.c.state == SubmissionState.INTENT.value,
                    )
                    .values(
                        sent_at=sent_at,
                        **_offset_columns(krea_offset),
                        updated_at=now,
                    )
                )
                if recorded.rowcount != 1:
                    raise _Refused  # roll the lease extension back too
        except _Refused:
            return False
        return True

    def mark_submitted(
        self,
        submission_id: str,
        *,
        job_id: str,
        status: str,
        created_at: datetime | None,
        more_jobs: Sequence["JobUpdate"] = (),
        error_code: str | None = None,
        error_message: str | None = None,
        result_url: str | None = None,
        completed_at: datetime | None = None,
    ) -> bool:
        """Krea answered the POST: the job exists and has an id. Gives the lease back.

        ``more_jobs`` are the further jobs of a node-app execution: each gets an output row in
        the same transaction. The row takes Krea's error (``error_code``, ``error_message``:
        a job that already failed when the answer is written, as reconciliation finds it) in
        place of any it carried (``ambiguous_submit``). ``JobUpdate.answer()`` gives the
        keywords of one job.
        """
        values: dict[str, Any] = {}
        if result_url is not None:
            values["result_url"] = result_url
        if completed_at is not None:
            values["completed_at"] = completed_at
        return self._resolve(
            submission_id,
            more_jobs=more_jobs,
            job_id=job_id,
            krea_created_at=created_at,
            submitted_at=utcnow(),
            error_code=error_code,
            error_message=error_message,
            **values,
            **_state_values(status),
        )

    def mark_unknown(self, submission_id: str, *, message: str) -> bool:
        """The POST may have created a job (connection lost after sending, 5xx, timeout).

        The row keeps its lease and its submit lane while its worker reconciles it
        (``release_lane`` gives the lane back when that takes longer).
        """
        now = utcnow()
        with self.transaction() as conn:
            result = conn.execute(
                submissions_table.update()
                .where(
                    submissions_table.c.submission_id == submission_id,
                    submissions_table.c.state == SubmissionState.INTENT.value,
                )
                .values(
                    state=SubmissionState.UNKNOWN.value,
                    ambiguous_at=now,
                    error_code=ErrorCode.AMBIGUOUS_SUBMIT.value,
                    error_message=message,
                    updated_at=now,
                )
            )
            return result.rowcount == 1

    def release_lane(self, submission_id: str) -> None:
        """An unknown row gives its submit lane back and keeps its lease while its worker
        reconciles it: the account's next POST need not wait for its window to close, and
        nobody takes the row for a dead worker's."""
        with self.transaction() as conn:
            conn.execute(
                leases_table.update()
                .where(leases_table.c.submission_id == submission_id)
                .values(lane=None, updated_at=utcnow())
            )

    def mark_not_created(self, submission_id: str, *, code: str, message: str) -> bool:
        """Krea refused the POST or never received it: nothing was created, nothing is owed."""
        return self._resolve(
            submission_id,
            state=SubmissionState.NOT_CREATED.value,
            error_code=code,
            error_message=message,
        )

    def mark_reported(self, submission_id: str, *, message: str) -> bool:
        """Reconciliation could not decide: keep the prompt from being re-sent, free the lease."""
        return self._resolve(
            submission_id,
            state=SubmissionState.REPORTED.value,
            error_code=ErrorCode.UNDECIDABLE.value,
            error_message=message,
        )

    #: Reconciliation found the job (or a node app's jobs) an unresolved row created: the same
    #: write as the POST's answer, arriving later.
    attribute = mark_submitted

    def _resolve(
        self, submission_id: str, *, more_jobs: Sequence["JobUpdate"] = (), **values: Any
    ) -> bool:
        """Answer an unresolved row and give its lease back, in one transaction.

        Guarded: only a row still unresolved is answered (two reconcilers of one dead worker's
        row, or a late POST answer after a takeover, write once). Returns whether it was.
        ``more_jobs`` become the row's output rows in the same transaction.
        """
        now = utcnow()
        values["updated_at"] = now
        with self.transaction() as conn:
            result = conn.execute(
                submissions_table.update()
                .where(
                    submissions_table.c.submission_id == submission_id,
                    submissions_table.c.state.in_(sorted(UNRESOLVED_STATES)),
                )
                .values(**values)
            )
            conn.execute(leases_table.delete().where(leases_table.c.submission_id == submission_id))
            if result.rowcount == 1:
                if more_jobs:
                    row = self._get(conn, submission_id)
                    assert row is not None
                    self._insert_outputs(conn, row, more_jobs, now)
                return True
            if self._get(conn, submission_id) is None:
                raise KeyError(f"no ledger row for submission {submission_id}")
            return False

    @staticmethod
    def _insert_outputs(
        conn: Connection, row: Submission, jobs: Sequence["JobUpdate"], now: datetime
    ) -> None:
        """An output row per further job of ``row``'s execution (positions 1, 2, ...).

        An output row carries the submission's request and account but no estimate: the
        execution's price is the submission row's.
        """
        copied = {
            name: getattr(row, name)
            for name in Submission.__dataclass_fields__
            if name not in _OWN_OUTPUT_COLUMNS
        }
        for position, update in enumerate(jobs, start=1):
            conn.execute(
                submissions_table.insert().values(
                    **{
                        **copied,
                        "error_code": update.error_code,
                        "error_message": update.error_message,
                        "result_url": update.result_url,
                        "completed_at": update.completed_at,
                    },
                    submission_id=str(
                        uuid.uuid5(uuid.NAMESPACE_URL, f"{row.submission_id}#{position}")
                    ),
                    prompt_key=output_key(row.prompt_key, position),
                    parent_id=row.submission_id,
                    job_id=update.job_id,
                    krea_created_at=update.created_at,
                    estimated_usd=0.0,
                    # The execution's price is on the submission row; a completed output
                    # job adds nothing to it.
                    cost_usd=0.0 if update.status == JobStatus.COMPLETED else None,
                    state=update.status,
                    submitted_at=now,
                    updated_at=now,
                )
            )
        if any(update.status == JobStatus.COMPLETED for update in jobs):
            LedgerWrites._charge_executions(conn, [row.submission_id])

    @staticmethod
    def _charge_executions(conn: Connection, submission_ids: Sequence[str]) -> None:
        """A node-app execution one of whose jobs completed is billed: its submission row
        carries the execution's price whatever its own (first) job did."""
        column = submissions_table.c
        conn.execute(
            submissions_table.update()
            .where(column.submission_id.in_(sorted(set(submission_ids))))
            .values(cost_usd=sa.func.coalesce(column.cost_usd, column.estimated_usd))
        )

    def record_late_job(
        self, row: Submission, update: JobUpdate, more_jobs: Sequence[JobUpdate] = ()
    ) -> Submission | None:
        """Keep a job Krea created for a row that was meanwhile resolved elsewhere.

        A sender whose lease expired mid-request (a stalled process) may get its answer after
        another worker reconciled the row. When reconciliation matched this very job to the
        row, the ledger already has it: None. Otherwise the job exists and may be billed, so it
        gets a row of its own (the next attempt, ``late_answer_of`` naming the row, Krea's own
        status and error): it is polled and collected, its cost counted, and a double payment
        shows in the batch's no-duplicates check.
        """
        now = utcnow()
        for _ in range(10):
            try:
                with self.transaction() as conn:
                    known = conn.execute(
                        sa.select(submissions_table.c.submission_id).where(
                            submissions_table.c.job_id == update.job_id
                        )
                    ).first()
                    if known is not None:
                        return None
                    attempts = self._attempts(
                        conn, row.scope, row.batch, row.prompt_key, row.generation
                    )
                    values = {
                        **{
                            name: getattr(row, name)
                            for name in Submission.__dataclass_fields__
                            if name not in ("state", "cost_usd", "updated_at")
                        },
                        "submission_id": _late_id(row.submission_id),
                        "attempt": max(a.attempt for a in attempts) + 1,
                        "job_id": update.job_id,
                        "krea_created_at": update.created_at,
                        "submitted_at": now,
                        "late_answer_of": row.submission_id,
                        "error_code": update.error_code,
                        "error_message": update.error_message,
                        "result_url": update.result_url,
                        "completed_at": update.completed_at,
                        "updated_at": now,
                        **_state_values(update.status),
                    }
                    if "cost_usd" in values:
                        values["cost_usd"] = row.estimated_usd
                    conn.execute(submissions_table.insert().values(**values))
                    if more_jobs:
                        late = self._get(conn, values["submission_id"])
                        assert late is not None
                        self._insert_outputs(conn, late, more_jobs, now)
                return self.get(values["submission_id"])
            except sa.exc.IntegrityError:
                continue  # a concurrent attempt took that number; count again
        raise RuntimeError(f"could not record the late job {update.job_id}")

    def update_jobs(self, updates: Iterable[JobUpdate]) -> list[Submission]:
        """Record job statuses; returns the rows whose state changed.

        Each write is guarded in SQL: a terminal row is never changed, and a live status never
        replaces a later one (a stale page after a fresher GET, two pollers racing).
        """
        by_id = {update.job_id: update for update in updates}
        if not by_id:
            return []
        changed: list[str] = []
        charged: list[str] = []  # node-app executions an output job of which just completed
        now = utcnow()
        column = submissions_table.c
        with self.transaction() as conn:
            for chunk in chunks(list(by_id), 500):
                current = conn.execute(
                    sa.select(column.job_id, column.state, column.result_url).where(
                        column.job_id.in_(chunk)
                    )
                ).all()
                for job_id, state, result_url in current:
                    update = by_id[job_id]
                    if state == update.status and result_url == update.result_url:
                        continue  # unchanged, like most rows of a big poll
                    values: dict[str, Any] = {
                        **_state_values(update.status),
                        "updated_at": now,
                        "error_code": update.error_code,
                        "error_message": update.error_message,
                    }
                    if update.result_url is not None:
                        values["result_url"] = update.result_url
                    if update.completed_at is not None:
                        values["completed_at"] = update.completed_at
                    if update.created_at is not None:
                        values["krea_created_at"] = sa.func.coalesce(
                            column.krea_created_at, update.created_at
                        )
                    guard = [column.job_id == job_id, column.state.not_in(sorted(TERMINAL_STATES))]
                    if update.status not in TERMINAL_STATES:
                        rank = STATUS_RANK.get(update.status, UNRANKED)
                        guard.append(_status_rank(column.state) <= rank)
                    result = conn.execute(
                        submissions_table.update()
                        .where(*guard)
                        .values(**values)
                        .returning(column.submission_id, column.parent_id)
                    )
                    for submission_id, parent_id in result:
                        changed.append(submission_id)
                        if parent_id is not None and update.status == JobStatus.COMPLETED:
                            charged.append(parent_id)
            if charged:
                self._charge_executions(conn, charged)
        return self.get_many(changed)

    def record_image(
        self,
        submission_id: str,
        *,
        uri: str,
        sha256: str,
        width: int,
        height: int,
        size_bytes: int,
    ) -> None:
        """The job's result is verified and stored."""
        with self.transaction() as conn:
            result = conn.execute(
                submissions_table.update()
                .where(
                    submissions_table.c.submission_id == submission_id,
                    submissions_table.c.state == JobStatus.COMPLETED.value,
                )
                .values(
                    image_uri=uri,
                    sha256=sha256,
                    width=width,
                    height=height,
                    size_bytes=size_bytes,
                    error_code=None,
                    error_message=None,
                    updated_at=utcnow(),
                )
            )
            if result.rowcount != 1 and self._get(conn, submission_id) is None:
                raise KeyError(f"no ledger row for submission {submission_id}")

    def record_image_error(
        self, submission_id: str, *, seen_uri: str | None, code: str, message: str
    ) -> bool:
        """The job completed (and was paid) but its result could not be stored as a valid image.

        ``seen_uri`` is the row's ``image_uri`` when this worker read it. The error is recorded
        only if nobody has stored a different image since: a worker whose download failed must
        not erase a good image another worker of the same batch stored meanwhile. Returns
        whether the error was recorded.
        """
        column = submissions_table.c.image_uri
        unchanged = column.is_(None) if seen_uri is None else column == seen_uri
        with self.transaction() as conn:
            result = conn.execute(
                submissions_table.update()
                .where(submissions_table.c.submission_id == submission_id)
                .where(sa.or_(column.is_(None), unchanged))
                .values(image_uri=None, error_code=code, error_message=message, updated_at=utcnow())
            )
            if result.rowcount == 1:
                return True
            if self._get(conn, submission_id) is None:
                raise KeyError(f"no ledger row for submission {submission_id}")
            return False


class _Refused(Exception):
    """A compare-and-set of a multi-statement write found nothing to change: roll it back."""


def _late_id(submission_id: str) -> str:
    """A submission id for the late answer of ``submission_id`` (same length, distinct)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"krea-late:{submission_id}"))


def _offset_columns(krea_offset: tuple[float, float] | None) -> dict[str, float | None]:
    """The bounds of Krea's clock minus ours measured at a send, as the row's two columns."""
    low, high = krea_offset if krea_offset is not None else (None, None)
    return {"krea_offset_low": low, "krea_offset_high": high}
