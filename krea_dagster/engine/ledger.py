"""The job ledger: one durable row per Krea submission, so nothing is ever paid for twice.

Krea bills every completed job and has no idempotency key. The ledger is what makes a re-run,
a crash or a second worker safe: the *intent* to submit is committed **before** the POST
(``claim``), the job id right after it (``mark_submitted``), and every later fact about the job
(status, error, result URL, the verified image) is written to the same row. A prompt is only
submitted again when its latest row for the generation is terminal and not paid
(failed, cancelled, or proven never created).

States of a row::

    intent ──POST answered──▶ <Krea status> ──poll──▶ completed | failed | cancelled
      │                          (backlogged … intermediate-complete)
      ├──refused / never sent──▶ not_created
      └──outcome unknown───────▶ unknown ──reconciled──▶ <Krea status> | not_created

``intent`` and ``unknown`` rows are at most ``max_inflight_submits`` per worker: they are the
only rows whose outcome at Krea is not known, and ``krea_dagster.engine.reconcile`` resolves them
through ``GET /jobs`` before anything is submitted again.

The ledger is SQLAlchemy Core on any URL: ``sqlite:///path/ledger.db`` by default,
``postgresql+psycopg://…`` for deployments where several run workers share it. The schema is
created and versioned here; every change is one transaction. Two workers racing to claim the
same prompt are serialized by the unique key
``(scope, batch, prompt_key, generation, attempt)``: a prompt is one deliverable of one batch.
"""

import json
import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from krea_dagster.api.models import TERMINAL_STATUSES, JobStatus

__all__ = [
    "PAID_STATES",
    "REJECTED",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "JobUpdate",
    "Ledger",
    "LedgerSchemaError",
    "Submission",
    "SubmissionState",
]

SCHEMA_VERSION = 1
#: error_code of a submission Krea refused for its body (400/422): it counts as an attempt.
REJECTED = "rejected"
# PostgreSQL advisory lock key that serializes schema creation (any constant 64-bit integer).
_SCHEMA_LOCK = 0x6B726561_6C656467  # "krealedg"


class SubmissionState(StrEnum):
    """The ledger's own states, before a row has (or instead of) a Krea status.

    Once Krea answers, a row's state is the job's status (``JobStatus``), stored verbatim, so a
    status Krea adds later is kept too.
    """

    INTENT = "intent"
    UNKNOWN = "unknown"
    NOT_CREATED = "not_created"


TERMINAL_STATES = frozenset(
    {*(status.value for status in TERMINAL_STATUSES), SubmissionState.NOT_CREATED.value}
)
PAID_STATES = frozenset({JobStatus.COMPLETED.value})
UNRESOLVED_STATES = frozenset({SubmissionState.INTENT.value, SubmissionState.UNKNOWN.value})


class LedgerSchemaError(RuntimeError):
    """The database holds a ledger schema this version of krea-dagster cannot use."""


metadata = sa.MetaData()

meta_table = sa.Table(
    "krea_ledger_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

generations_table = sa.Table(
    "krea_generations",
    metadata,
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("batch", sa.String(256), primary_key=True),
    sa.Column("generation", sa.Integer, primary_key=True),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
)

submissions_table = sa.Table(
    "krea_submissions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("submission_id", sa.String(36), nullable=False, unique=True),
    sa.Column("scope", sa.String(128), nullable=False),
    sa.Column("batch", sa.String(256), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("prompt_key", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("request_json", sa.Text, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("job_id", sa.String(64), unique=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("owner_host", sa.String(255)),
    sa.Column("owner_pid", sa.Integer),
    sa.Column("estimated_usd", sa.Float),
    sa.Column("cost_usd", sa.Float),
    sa.Column("error_code", sa.String(128)),
    sa.Column("error_message", sa.Text),
    sa.Column("result_url", sa.Text),
    sa.Column("image_uri", sa.Text),
    sa.Column("sha256", sa.String(64)),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("intent_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ambiguous_at", sa.DateTime(timezone=True)),
    sa.Column("submitted_at", sa.DateTime(timezone=True)),
    sa.Column("krea_created_at", sa.DateTime(timezone=True)),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint(
        "scope", "batch", "prompt_key", "generation", "attempt", name="uq_krea_attempt"
    ),
    sa.Index("ix_krea_submissions_batch", "scope", "batch", "generation"),
    sa.Index("ix_krea_submissions_state", "scope", "state"),
    sa.Index("ix_krea_submissions_created", "krea_created_at"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; every time in the ledger is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Submission:
    """One row of the ledger: one POST (or the intent of one) for one prompt of one generation."""

    submission_id: str
    scope: str
    batch: str
    generation: int
    prompt_key: str
    attempt: int
    model: str
    request_hash: str
    request_json: str
    state: str
    job_id: str | None
    run_id: str | None
    owner_host: str | None
    owner_pid: int | None
    estimated_usd: float | None
    cost_usd: float | None
    error_code: str | None
    error_message: str | None
    result_url: str | None
    image_uri: str | None
    sha256: str | None
    width: int | None
    height: int | None
    size_bytes: int | None
    intent_at: datetime
    ambiguous_at: datetime | None
    submitted_at: datetime | None
    krea_created_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Submission":
        values = {name: row[name] for name in cls.__dataclass_fields__}
        for name in (
            "intent_at",
            "ambiguous_at",
            "submitted_at",
            "krea_created_at",
            "completed_at",
            "updated_at",
        ):
            values[name] = _aware(values[name])
        return cls(**values)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_live(self) -> bool:
        return not self.is_terminal

    @property
    def is_paid(self) -> bool:
        return self.state in PAID_STATES

    @property
    def is_unresolved(self) -> bool:
        """Krea may or may not have created a job for this row."""
        return self.state in UNRESOLVED_STATES

    @property
    def is_pending_at_krea(self) -> bool:
        """A job exists at Krea and has not reached a terminal status yet."""
        return self.job_id is not None and not self.is_terminal and not self.is_unresolved

    @property
    def has_image(self) -> bool:
        return self.image_uri is not None

    @property
    def request(self) -> dict[str, Any]:
        return dict(json.loads(self.request_json))


def may_submit(attempts: Iterable[Submission], max_attempts: int) -> bool:
    """Whether a prompt with these earlier attempts (one generation) may be submitted again.

    Not while one is live (maybe another worker is sending it right now) or paid. Attempts
    Krea never received, or refused for the balance, the rate or the token, do not count
    against ``max_attempts``; failed jobs and bodies Krea rejected do.
    """
    counted = 0
    for row in attempts:
        if row.is_live or row.is_paid:
            return False
        if row.state != SubmissionState.NOT_CREATED or row.error_code == REJECTED:
            counted += 1
    return counted < max_attempts


@dataclass(frozen=True)
class JobUpdate:
    """A fact about a Krea job, as the client saw it, to be written to its row."""

    job_id: str
    status: str
    error_code: str | None = None
    error_message: str | None = None
    result_url: str | None = None
    completed_at: datetime | None = None
    created_at: datetime | None = None


class Ledger:
    """Durable submissions for every batch and generation of one or more asset prefixes.

    Args:
        url: a SQLAlchemy URL. ``sqlite:///relative/or/absolute.db`` (directories are created)
            or ``postgresql+psycopg://user@host/db``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        return f"Ledger({sa.make_url(self.url).render_as_string(hide_password=True)!r})"

    # -- connection and schema -------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._create_engine()
            self._migrate(self._engine)
        return self._engine

    def _create_engine(self) -> Engine:
        url = sa.make_url(self.url)
        if url.get_backend_name() != "sqlite":
            return sa.create_engine(url, pool_pre_ping=True, future=True)
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60}, future=True)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets pollers read while a submitter writes; BEGIN IMMEDIATE in
            # transaction() serializes writers across processes instead of failing.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("krea_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    def _migrate(self, engine: Engine) -> None:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Workers that share a fresh ledger all create its schema on first use; two
                # concurrent CREATE TABLEs fail (DuplicateTable, or UniqueViolation on pg_type).
                # Taking turns makes the later ones see the tables and create nothing.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            metadata.create_all(conn)
            version = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar_one_or_none()
            if version is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            meta_table.insert().values(
                                key="schema_version", value=str(SCHEMA_VERSION)
                            )
                        )
                except sa.exc.IntegrityError:
                    pass  # another worker created it at the same moment
            elif int(version) > SCHEMA_VERSION:
                raise LedgerSchemaError(
                    f"the ledger at {self!r} has schema version {version}, newer than the "
                    f"{SCHEMA_VERSION} this krea-dagster understands: upgrade krea-dagster on "
                    "every worker that shares this ledger"
                )

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One atomic write; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self.engine.connect().execution_options(krea_write=True) as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- generations -----------------------------------------------------------------------

    def current_generation(self, scope: str, batch: str) -> int:
        """The latest generation of a batch, 0 when it was never submitted."""
        with self.engine.connect() as conn:
            return self._current_generation(conn, scope, batch)

    @staticmethod
    def _current_generation(conn: Connection, scope: str, batch: str) -> int:
        value = conn.execute(
            sa.select(sa.func.max(generations_table.c.generation)).where(
                generations_table.c.scope == scope, generations_table.c.batch == batch
            )
        ).scalar_one()
        return int(value or 0)

    def start_generation(
        self,
        scope: str,
        batch: str,
        *,
        reason: str,
        run_id: str | None = None,
        reuse_for_run: bool = False,
    ) -> int:
        """Open generation ``current + 1`` of a batch (1 for a new batch) and return it.

        With ``reuse_for_run``, a generation this run already opened is returned instead, so
        a retried step does not regenerate twice.
        """
        for _ in range(5):
            try:
                with self.transaction() as conn:
                    current = self._current_generation(conn, scope, batch)
                    if reuse_for_run and current and run_id is not None:
                        opener = conn.execute(
                            sa.select(generations_table.c.run_id).where(
                                generations_table.c.scope == scope,
                                generations_table.c.batch == batch,
                                generations_table.c.generation == current,
                            )
                        ).scalar_one()
                        if opener == run_id:
                            return current
                    generation = current + 1
                    conn.execute(
                        generations_table.insert().values(
                            scope=scope,
                            batch=batch,
                            generation=generation,
                            reason=reason,
                            run_id=run_id,
                            started_at=utcnow(),
                        )
                    )
                    return generation
            except sa.exc.IntegrityError:
                continue  # a concurrent worker opened the same generation; read again
        raise RuntimeError(f"could not open a new generation for batch {batch!r}")

    def ensure_generation(self, scope: str, batch: str, *, run_id: str | None = None) -> int:
        """The current generation of a batch, opening generation 1 for a new batch."""
        current = self.current_generation(scope, batch)
        if current:
            return current
        # Insert generation 1 itself, not through start_generation: when two workers start a
        # new batch at the same moment, the loser's retry there would open generation 2 (and
        # then 3, 4...) and every worker would pay for the whole batch again.
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
    ) -> Submission | None:
        """Write the intent to submit a prompt, or return None when it must not be submitted.

        None means another row already covers the prompt in this generation: it is live (maybe
        another worker is submitting it right now), paid, or the prompt used up
        ``max_attempts`` failed attempts.
        """
        now = utcnow()
        try:
            with self.transaction() as conn:
                previous = self._attempts(conn, scope, batch, prompt_key, generation)
                if not may_submit(previous, max_attempts):
                    return None
                values = {
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
                    "run_id": run_id,
                    "owner_host": socket.gethostname(),
                    "owner_pid": os.getpid(),
                    "estimated_usd": estimated_usd,
                    "intent_at": now,
                    "updated_at": now,
                }
                conn.execute(submissions_table.insert().values(**values))
        except sa.exc.IntegrityError:
            return None  # a concurrent worker claimed the same attempt first
        return self.get(submission_id)

    @staticmethod
    def _attempts(
        conn: Connection, scope: str, batch: str, prompt_key: str, generation: int
    ) -> list[Submission]:
        rows = conn.execute(
            sa.select(submissions_table)
            .where(
                submissions_table.c.scope == scope,
                submissions_table.c.batch == batch,
                submissions_table.c.prompt_key == prompt_key,
                submissions_table.c.generation == generation,
            )
            .order_by(submissions_table.c.attempt)
        ).mappings()
        return [Submission.from_row(row) for row in rows]

    def mark_submitted(
        self, submission_id: str, *, job_id: str, status: str, created_at: datetime | None
    ) -> None:
        """Krea answered the POST: the job exists and has an id."""
        self._update(
            submission_id,
            job_id=job_id,
            state=status,
            krea_created_at=created_at,
            submitted_at=utcnow(),
        )

    def mark_unknown(self, submission_id: str, *, message: str) -> None:
        """The POST may have created a job (connection lost after sending, 5xx, timeout)."""
        self._update(
            submission_id,
            state=SubmissionState.UNKNOWN.value,
            ambiguous_at=utcnow(),
            error_code="ambiguous_submit",
            error_message=message,
        )

    def mark_not_created(self, submission_id: str, *, code: str, message: str) -> None:
        """Krea refused the POST or never received it: nothing was created, nothing is owed."""
        self._update(
            submission_id,
            state=SubmissionState.NOT_CREATED.value,
            error_code=code,
            error_message=message,
        )

    def note_unresolved(self, submission_id: str, *, message: str) -> None:
        """Keep an unresolved row as it is, with the reason it could not be resolved."""
        self._update(submission_id, error_message=message)

    def mark_unattributed_cancelled(self, submission_id: str, *, message: str) -> None:
        """An unresolved row whose possible jobs were all cancelled before being billed."""
        self._update(
            submission_id,
            state=JobStatus.CANCELLED.value,
            error_code="unattributed",
            error_message=message,
        )

    def attribute(
        self, submission_id: str, *, job_id: str, status: str, created_at: datetime | None
    ) -> None:
        """Reconciliation found the job an unresolved row created."""
        self._update(
            submission_id,
            job_id=job_id,
            state=status,
            krea_created_at=created_at,
            submitted_at=utcnow(),
            error_code=None,
            error_message=None,
        )

    def update_jobs(self, updates: Iterable[JobUpdate]) -> list[Submission]:
        """Record job statuses; returns the rows whose state changed."""
        by_id = {update.job_id: update for update in updates}
        if not by_id:
            return []
        changed: list[str] = []
        now = utcnow()
        with self.transaction() as conn:
            for chunk in _chunks(list(by_id), 500):
                rows = conn.execute(
                    sa.select(submissions_table).where(submissions_table.c.job_id.in_(chunk))
                ).mappings()
                for row in rows:
                    update = by_id[row["job_id"] or ""]
                    if row["state"] == update.status and row["result_url"] == update.result_url:
                        continue  # unchanged, like most rows of a big poll: no record to build
                    current = Submission.from_row(row)
                    if current.is_terminal and update.status not in TERMINAL_STATES:
                        continue  # never move backwards (a stale page after a fresher GET)
                    values: dict[str, Any] = {
                        "state": update.status,
                        "updated_at": now,
                        "error_code": update.error_code,
                        "error_message": update.error_message,
                    }
                    if update.result_url is not None:
                        values["result_url"] = update.result_url
                    if update.completed_at is not None:
                        values["completed_at"] = update.completed_at
                    if update.created_at is not None and current.krea_created_at is None:
                        values["krea_created_at"] = update.created_at
                    if update.status == JobStatus.COMPLETED:
                        # Krea does not report the charge per job; the catalog price is it.
                        values["cost_usd"] = current.estimated_usd
                    conn.execute(
                        submissions_table.update()
                        .where(submissions_table.c.submission_id == current.submission_id)
                        .values(**values)
                    )
                    changed.append(current.submission_id)
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
        self._update(
            submission_id,
            image_uri=uri,
            sha256=sha256,
            width=width,
            height=height,
            size_bytes=size_bytes,
            error_code=None,
            error_message=None,
        )

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
            if (
                conn.execute(
                    sa.select(submissions_table.c.submission_id).where(
                        submissions_table.c.submission_id == submission_id
                    )
                ).first()
                is None
            ):
                raise KeyError(f"no ledger row for submission {submission_id}")
            return False

    def _update(self, submission_id: str, **values: Any) -> None:
        values["updated_at"] = utcnow()
        with self.transaction() as conn:
            result = conn.execute(
                submissions_table.update()
                .where(submissions_table.c.submission_id == submission_id)
                .values(**values)
            )
            if result.rowcount != 1:
                raise KeyError(f"no ledger row for submission {submission_id}")

    # -- queries ---------------------------------------------------------------------------

    def get(self, submission_id: str) -> Submission:
        found = self.get_many([submission_id])
        if not found:
            raise KeyError(f"no ledger row for submission {submission_id}")
        return found[0]

    def get_many(self, submission_ids: Sequence[str]) -> list[Submission]:
        result: list[Submission] = []
        with self.engine.connect() as conn:
            for chunk in _chunks(list(submission_ids), 500):
                rows = conn.execute(
                    sa.select(submissions_table)
                    .where(submissions_table.c.submission_id.in_(chunk))
                    .order_by(submissions_table.c.id)
                ).mappings()
                result.extend(Submission.from_row(row) for row in rows)
        return result

    def rows(
        self, scope: str, batch: str | None = None, generation: int | None = None
    ) -> list[Submission]:
        """Every attempt, oldest first."""
        query = sa.select(submissions_table).where(submissions_table.c.scope == scope)
        if batch is not None:
            query = query.where(submissions_table.c.batch == batch)
        if generation is not None:
            query = query.where(submissions_table.c.generation == generation)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(submissions_table.c.id)).mappings()
            return [Submission.from_row(row) for row in rows]

    def latest(self, scope: str, batch: str, generation: int) -> dict[str, Submission]:
        """The latest attempt per prompt key of one generation of a batch."""
        latest: dict[str, Submission] = {}
        for row in self.rows(scope, batch, generation):
            latest[row.prompt_key] = row
        return latest

    def pending(self, scope: str, batch: str | None = None) -> list[Submission]:
        """Rows whose job exists at Krea and is not terminal yet."""
        query = sa.select(submissions_table).where(
            submissions_table.c.scope == scope,
            submissions_table.c.job_id.is_not(None),
            # Unknown future Krea statuses are live too: select by "not terminal".
            submissions_table.c.state.not_in(sorted(TERMINAL_STATES)),
            submissions_table.c.state.not_in(sorted(UNRESOLVED_STATES)),
        )
        if batch is not None:
            query = query.where(submissions_table.c.batch == batch)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(submissions_table.c.id)).mappings()
            return [Submission.from_row(row) for row in rows]

    def unresolved(self, scope: str | None = None) -> list[Submission]:
        """Rows whose outcome at Krea is not known (intent written, answer never recorded)."""
        query = sa.select(submissions_table).where(
            submissions_table.c.state.in_(sorted(UNRESOLVED_STATES))
        )
        if scope is not None:
            query = query.where(submissions_table.c.scope == scope)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(submissions_table.c.id)).mappings()
            return [Submission.from_row(row) for row in rows]

    def answered(self, limit: int = 200) -> list[Submission]:
        """The most recent rows that got an answer from Krea (for clock-offset bounds)."""
        query = (
            sa.select(submissions_table)
            .where(
                submissions_table.c.krea_created_at.is_not(None),
                submissions_table.c.submitted_at.is_not(None),
                submissions_table.c.ambiguous_at.is_(None),
            )
            .order_by(submissions_table.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Submission.from_row(row) for row in conn.execute(query).mappings()]

    def known_job_ids(self, created_after: datetime) -> set[str]:
        """Every job id the ledger knows (all scopes) created after a time, or not dated."""
        query = sa.select(submissions_table.c.job_id).where(
            submissions_table.c.job_id.is_not(None),
            sa.or_(
                submissions_table.c.krea_created_at.is_(None),
                submissions_table.c.krea_created_at >= created_after,
            ),
        )
        with self.engine.connect() as conn:
            return {job_id for (job_id,) in conn.execute(query)}

    def paid_duplicates(self, scope: str, batch: str, generation: int) -> dict[str, list[str]]:
        """Prompt keys with more than one paid job in a generation, with their job ids."""
        paid: dict[str, list[str]] = {}
        for row in self.rows(scope, batch, generation):
            if row.is_paid and row.job_id:
                paid.setdefault(row.prompt_key, []).append(row.job_id)
        return {key: ids for key, ids in paid.items() if len(ids) > 1}

    def batches(self, scope: str) -> list[tuple[str, int]]:
        """(batch, current generation) for every batch of a scope."""
        query = (
            sa.select(generations_table.c.batch, sa.func.max(generations_table.c.generation))
            .where(generations_table.c.scope == scope)
            .group_by(generations_table.c.batch)
            .order_by(generations_table.c.batch)
        )
        with self.engine.connect() as conn:
            return [(batch, int(generation)) for batch, generation in conn.execute(query)]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
