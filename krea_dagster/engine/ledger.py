"""The job ledger: one durable row per Krea submission, so nothing is ever paid for twice.

Krea bills every completed job and has no idempotency key. The ledger is what makes a re-run,
a crash or a second worker safe: the *intent* to submit is committed **before** the POST
(``claim``), the time of every attempt right before it is sent (``note_send``), the job id
right after it (``mark_submitted``), and every later fact about the job (status, error, result
URL, the verified image) is written to the same row. A prompt is only submitted again when its
latest row for the generation is terminal and not paid (failed, cancelled, or proven never
created).

States of a row::

    intent ──POST answered──▶ <Krea status> ──poll──▶ completed | failed | cancelled
      │                          (backlogged … intermediate-complete)
      ├──refused / never sent──▶ not_created
      └──outcome unknown───────▶ unknown ──reconciled──▶ <Krea status> | not_created | reported

**The submit lease.** ``intent`` and ``unknown`` rows are the only rows whose outcome at Krea is
not known. A row becomes one only while it holds its account's lease (one row of
``krea_submit_leases`` per Krea account), taken in the same transaction that writes the intent
and given back in the same transaction that records the answer. So across every worker,
instance and prefix that shares this database there is at most one unresolved submission per
account at any moment, and ``krea_dagster.engine.reconcile`` decides it from one window. A
lease expires (``expires_at``, pushed forward before every send and every wait): a worker that
died, on this host or any other, holds nothing once it has expired, whatever Dagster says of
its run.

**Guarded writes.** Every state change is one SQL statement whose ``WHERE`` holds its guard
(compare-and-set): a status never moves backwards and an answered row is never overwritten by a
late writer, whatever the interleaving of workers on PostgreSQL.

**Several jobs per submission.** A node app's execution (``POST /node-apps/{id}/execute``)
creates several jobs from one request. Its row is the submission (intent, lease, send time,
reconciliation: one POST, one window) and holds the first job; every further job gets an
*output row* of its own (``parent_id`` names the submission, ``output_key`` its prompt key),
written in the same transaction as the answer, so each job is polled, collected, costed and
cancelled like any other and nothing about it can be lost between the two writes. Output rows
are never claimed or re-sent: only the submission row decides whether the prompt is covered.

The ledger is SQLAlchemy Core on any URL: ``sqlite:///path/ledger.db`` by default,
``postgresql+psycopg://…`` for deployments where several run workers share it. The schema is
created and versioned here (``SCHEMA_VERSION``; older ledgers are upgraded in place).
"""

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from krea_dagster.api.models import TERMINAL_STATUSES, Job, JobStatus
from krea_dagster.engine.errors import ErrorCode

__all__ = [
    "PAID_STATES",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "Claim",
    "JobUpdate",
    "Lease",
    "Ledger",
    "LedgerSchemaError",
    "LedgerUploadCache",
    "Submission",
    "SubmissionState",
    "may_submit",
    "output_key",
    "utcnow",
]

SCHEMA_VERSION = 3
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
    #: Reconciliation could not tell whether the POST created a job: never re-sent on a guess;
    #: the batch's check fails and names it until someone resolves it.
    REPORTED = "reported"


TERMINAL_STATES = frozenset(
    {
        *(status.value for status in TERMINAL_STATUSES),
        SubmissionState.NOT_CREATED.value,
        SubmissionState.REPORTED.value,
    }
)
PAID_STATES = frozenset({JobStatus.COMPLETED.value})
UNRESOLVED_STATES = frozenset({SubmissionState.INTENT.value, SubmissionState.UNKNOWN.value})
# Krea's statuses in the order a job moves through them; a write never lowers the rank.
_STATUS_RANK = {
    status.value: rank
    for rank, status in enumerate(
        [
            JobStatus.BACKLOGGED,
            JobStatus.QUEUED,
            JobStatus.SCHEDULED,
            JobStatus.PROCESSING,
            JobStatus.SAMPLING,
            JobStatus.INTERMEDIATE_COMPLETE,
        ]
    )
}
_UNRANKED = len(_STATUS_RANK)  # a status Krea adds later: after the known live ones


# SQL for "a row the completion sensor still has work for": not terminal (unresolved rows and
# unknown future Krea statuses included), or completed with neither a stored image nor an image
# error yet. Literal text, the same in the partial index and in the query, so that both SQLite
# and PostgreSQL prove the query uses the index (a bound parameter would not match it).
_DONE_STATES = sorted(TERMINAL_STATES - PAID_STATES)
_OPEN_ROW_SQL = (
    "state NOT IN (" + ", ".join(f"'{state}'" for state in _DONE_STATES) + ") AND "
    f"(state <> '{JobStatus.COMPLETED.value}' OR (image_uri IS NULL AND error_code IS NULL))"
)


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
    # Who asked for this generation (a schedule tick, a launch): retries and re-executions
    # carry the same id, so they find this generation instead of opening another.
    sa.Column("request_id", sa.String(256)),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("uq_krea_generation_request", "scope", "batch", "request_id", unique=True),
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
    sa.Column("account", sa.String(128)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("owner_host", sa.String(255)),
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
    # When the last attempt of the POST was sent (owner_host's clock), null until one was.
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("ambiguous_at", sa.DateTime(timezone=True)),
    sa.Column("submitted_at", sa.DateTime(timezone=True)),
    sa.Column("krea_created_at", sa.DateTime(timezone=True)),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # An output row (a further job of a node-app execution): the submission row that made it.
    sa.Column("parent_id", sa.String(36)),
    sa.UniqueConstraint(
        "scope", "batch", "prompt_key", "generation", "attempt", name="uq_krea_attempt"
    ),
    sa.Index("ix_krea_submissions_parent", "parent_id"),
    sa.Index("ix_krea_submissions_batch", "scope", "batch", "generation"),
    sa.Index("ix_krea_submissions_state", "scope", "state"),
    sa.Index("ix_krea_submissions_created", "krea_created_at"),
    # Only the rows that still need work (``_OPEN_ROW_SQL``): a completion tick's cost follows
    # the batches in flight, not the history of the prefix.
    sa.Index(
        "ix_krea_submissions_open",
        "scope",
        "batch",
        "generation",
        sqlite_where=sa.text(_OPEN_ROW_SQL),
        postgresql_where=sa.text(_OPEN_ROW_SQL),
    ),
)

leases_table = sa.Table(
    "krea_submit_leases",
    metadata,
    sa.Column("account", sa.String(128), primary_key=True),
    sa.Column("submission_id", sa.String(36)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("owner_host", sa.String(255)),
    sa.Column("owner_pid", sa.Integer),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

accounts_table = sa.Table(
    "krea_accounts",
    metadata,
    sa.Column("account", sa.String(128), primary_key=True),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("foreign_jobs_seen", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_foreign_job_id", sa.String(64)),
)

uploads_table = sa.Table(
    "krea_uploads",
    metadata,
    sa.Column("account", sa.String(128), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("url", sa.Text),
    sa.Column("asset_id", sa.String(128)),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("uploaded_at", sa.DateTime(timezone=True)),
)

# Columns each version added to the tables of the one before (upgraded in place by
# ``_migrate``).
_ADDED_IN: dict[int, dict[str, tuple[str, ...]]] = {
    2: {"krea_submissions": ("account", "sent_at"), "krea_generations": ("request_id",)},
    3: {"krea_submissions": ("parent_id",)},
}


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
    account: str | None
    run_id: str | None
    owner_host: str | None
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
    sent_at: datetime | None
    ambiguous_at: datetime | None
    submitted_at: datetime | None
    krea_created_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    #: Set on an output row: the submission (node-app execution) whose further job it holds.
    parent_id: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Submission":
        values = {name: row[name] for name in cls.__dataclass_fields__}
        for name, value in values.items():
            if isinstance(value, datetime):
                values[name] = _aware(value)
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
    def is_reported(self) -> bool:
        """Reconciliation could not decide; a person has to."""
        return self.state == SubmissionState.REPORTED

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


def output_key(prompt_key: str, position: int) -> str:
    """The prompt key of a submission's output row ``position`` (1 for its second job, ...)."""
    return hashlib.sha256(f"{prompt_key}#output{position}".encode()).hexdigest()


def may_submit(attempts: Iterable[Submission], max_attempts: int) -> bool:
    """Whether a prompt with these earlier attempts (one generation) may be submitted again.

    Not while one is live (maybe another worker is sending it right now), paid or reported
    (nobody knows whether it created a job). Attempts Krea never received, or refused for the
    balance, the rate or the token, do not count against ``max_attempts``; failed jobs and
    bodies Krea rejected do.
    """
    counted = 0
    for row in attempts:
        if row.is_live or row.is_paid or row.is_reported:
            return False
        if row.state != SubmissionState.NOT_CREATED or row.error_code == ErrorCode.REJECTED:
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

    @classmethod
    def from_job(cls, job: Job) -> "JobUpdate":
        """The ledger facts of a job as the client returned it."""
        error = job.error
        return cls(
            job_id=job.job_id,
            status=str(job.status),
            error_code=error.code if error else None,
            error_message=error.message if error else None,
            result_url=job.result_urls[0] if job.result_urls else None,
            completed_at=job.completed_at,
            created_at=job.created_at,
        )


@dataclass(frozen=True)
class Lease:
    """The account's submit lease as held by one submission."""

    holder: Submission
    expires_at: datetime | None
    owner_host: str | None
    owner_pid: int | None

    def is_expired(self, now: datetime) -> bool:
        """Expired at ``expires_at``, or at once when its owner was a process of this host that
        is gone (no waiting out a crashed local worker's lease)."""
        if self.expires_at is None or self.expires_at <= now:
            return True
        if self.owner_host == socket.gethostname() and self.owner_pid is not None:
            return not _process_alive(self.owner_pid)
        return False


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Claim:
    """What ``Ledger.claim`` did: wrote an intent (``row``), or why it did not.

    ``covered``: the prompt must not be submitted (live, paid, reported or out of attempts).
    ``lease``: another submission holds the account's lease; once it has expired, that row
    must be reconciled before anything else is sent on the account. None of the three: a
    concurrent claim raced this one; claim again.
    """

    row: Submission | None = None
    covered: bool = False
    lease: Lease | None = None


def _status_rank(column: Any) -> Any:
    """SQL: the rank of the status in ``column`` (see ``_STATUS_RANK``)."""
    return sa.case(
        *((column == status, rank) for status, rank in _STATUS_RANK.items()),
        else_=_UNRANKED,
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
        with engine.connect().execution_options(krea_write=True) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                # Workers that share a fresh ledger all create its schema on first use; two
                # concurrent CREATE TABLEs fail (DuplicateTable, or UniqueViolation on pg_type).
                # Taking turns makes the later ones see the tables and create nothing.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            version = self._schema_version(conn)
            if version is not None and version > SCHEMA_VERSION:
                raise LedgerSchemaError(
                    f"the ledger at {self!r} has schema version {version}, newer than the "
                    f"{SCHEMA_VERSION} this krea-dagster understands: upgrade krea-dagster on "
                    "every worker that shares this ledger"
                )
            if version is not None and version < SCHEMA_VERSION:
                self._upgrade(conn, version)
            metadata.create_all(conn)
            # create_all makes indexes only with the tables it creates: a ledger made before
            # an index existed gets it here (the schema is otherwise unchanged).
            for index in submissions_table.indexes:
                index.create(conn, checkfirst=True)
            if version is None:
                conn.execute(
                    meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                )

    @staticmethod
    def _schema_version(conn: Connection) -> int | None:
        if not sa.inspect(conn).has_table(meta_table.name):
            return None
        value = conn.execute(
            sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
        ).scalar_one_or_none()
        return None if value is None else int(value)

    @staticmethod
    def _upgrade(conn: Connection, version: int) -> None:
        """Add the columns of every later version (1: no submit lease, no send times, no
        regeneration request ids; 2: no output rows)."""
        inspector = sa.inspect(conn)
        for added in range(version + 1, SCHEMA_VERSION + 1):
            for table_name, columns in _ADDED_IN[added].items():
                if not inspector.has_table(table_name):
                    continue  # created whole by create_all
                table = metadata.tables[table_name]
                present = {column["name"] for column in sa.inspect(conn).get_columns(table_name)}
                for name in columns:
                    if name in present:
                        continue
                    column_type = table.c[name].type.compile(dialect=conn.dialect)
                    conn.execute(
                        sa.text(f"ALTER TABLE {table_name} ADD COLUMN {name} {column_type}")
                    )
        # A version 1 row still unresolved was sent at the latest when its intent was written
        # plus the waits it may have done; its window starts at the intent.
        if version == 1 and inspector.has_table(submissions_table.name):
            conn.execute(
                submissions_table.update()
                .where(submissions_table.c.state.in_(sorted(UNRESOLVED_STATES)))
                .values(sent_at=submissions_table.c.intent_at)
            )
        conn.execute(
            meta_table.update()
            .where(meta_table.c.key == "schema_version")
            .values(value=str(SCHEMA_VERSION))
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

    def accounts(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(accounts_table.c.account)).scalars())

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

    def foreign_jobs_seen(self, account: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(accounts_table.c.foreign_jobs_seen).where(
                    accounts_table.c.account == account
                )
            ).scalar_one_or_none()
        return int(value or 0)

    # -- uploads (reference files, by content hash) -----------------------------------------

    def upload_cache(self, account: str) -> "LedgerUploadCache":
        """The ``UploadCache`` of an account: every worker and run sees every upload."""
        return LedgerUploadCache(self, account)

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
    ) -> Claim:
        """Write the intent to submit a prompt and take the account's submit lease, or say why not.

        Both happen in one transaction, so an unresolved row always holds the lease.
        """
        now = utcnow()
        try:
            with self.transaction() as conn:
                previous = self._attempts(conn, scope, batch, prompt_key, generation)
                if not may_submit(previous, max_attempts):
                    return Claim(covered=True)
                lease = conn.execute(
                    sa.select(leases_table)
                    .where(leases_table.c.account == account)
                    .with_for_update()
                ).first()
                if lease is not None and lease.submission_id is not None:
                    held = self._lease(conn, lease)
                    if held is not None:
                        return Claim(lease=held)
                conn.execute(
                    submissions_table.insert().values(
                        submission_id=submission_id,
                        scope=scope,
                        batch=batch,
                        generation=generation,
                        prompt_key=prompt_key,
                        attempt=(previous[-1].attempt if previous else 0) + 1,
                        model=model,
                        request_hash=request_hash,
                        request_json=json.dumps(request, sort_keys=True),
                        state=SubmissionState.INTENT.value,
                        account=account,
                        run_id=run_id,
                        owner_host=socket.gethostname(),
                        estimated_usd=estimated_usd,
                        intent_at=now,
                        updated_at=now,
                    )
                )
                lease_values = {
                    "submission_id": submission_id,
                    "expires_at": now + timedelta(seconds=lease_seconds),
                    "owner_host": socket.gethostname(),
                    "owner_pid": os.getpid(),
                    "updated_at": now,
                }
                if lease is None:
                    conn.execute(leases_table.insert().values(account=account, **lease_values))
                else:
                    conn.execute(
                        leases_table.update()
                        .where(leases_table.c.account == account)
                        .values(**lease_values)
                    )
        except sa.exc.IntegrityError:
            # A concurrent worker claimed the same attempt, or created the lease row first.
            covered = self._covered(scope, batch, prompt_key, generation, max_attempts)
            return Claim(covered=covered)
        return Claim(row=self.get(submission_id))

    def _covered(
        self, scope: str, batch: str, prompt_key: str, generation: int, max_attempts: int
    ) -> bool:
        with self.engine.connect() as conn:
            return not may_submit(
                self._attempts(conn, scope, batch, prompt_key, generation), max_attempts
            )

    def note_send(self, submission_id: str, *, sent_at: datetime, lease_seconds: float) -> bool:
        """The POST is about to go out (or to wait, then go): record when, extend the lease.

        False when the row no longer holds a live lease (it expired and another worker took
        over): the caller must not send.
        """
        now = utcnow()
        with self.transaction() as conn:
            kept = conn.execute(
                leases_table.update()
                .where(
                    leases_table.c.submission_id == submission_id,
                    leases_table.c.expires_at > now,
                )
                .values(expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
            )
            if kept.rowcount != 1:
                return False
            conn.execute(
                submissions_table.update()
                .where(
                    submissions_table.c.submission_id == submission_id,
                    submissions_table.c.state == SubmissionState.INTENT.value,
                )
                .values(sent_at=sent_at, updated_at=now)
            )
        return True

    def mark_submitted(
        self,
        submission_id: str,
        *,
        job_id: str,
        status: str,
        created_at: datetime | None,
        more_jobs: Sequence["JobUpdate"] = (),
    ) -> bool:
        """Krea answered the POST: the job exists and has an id. Gives the lease back.

        ``more_jobs`` are the further jobs of a node-app execution: each gets an output row in
        the same transaction. An error the row carried (``ambiguous_submit``) is cleared.
        """
        return self._resolve(
            submission_id,
            more_jobs=more_jobs,
            job_id=job_id,
            krea_created_at=created_at,
            submitted_at=utcnow(),
            error_code=None,
            error_message=None,
            **_state_values(status),
        )

    def mark_unknown(self, submission_id: str, *, message: str) -> bool:
        """The POST may have created a job (connection lost after sending, 5xx, timeout).

        The row keeps the lease: nothing else is sent on the account until it is reconciled.
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
            conn.execute(
                leases_table.update()
                .where(leases_table.c.submission_id == submission_id)
                .values(submission_id=None, expires_at=None, updated_at=now)
            )
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
                    **copied,
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

    def record_late_job(
        self, row: Submission, update: JobUpdate, more_jobs: Sequence[JobUpdate] = ()
    ) -> Submission:
        """Keep a job Krea created for a row that was meanwhile resolved elsewhere.

        A sender whose lease expired mid-request (a stalled process) may get its answer after
        another worker reconciled the row. The job exists and may be billed, so it gets a row of
        its own (the next attempt, error code ``late_answer``): it is polled and collected, its
        cost counted, and a double payment shows in the batch's no-duplicates check.
        """
        now = utcnow()
        for _ in range(10):
            try:
                with self.transaction() as conn:
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
                        "error_code": ErrorCode.LATE_ANSWER.value,
                        "error_message": (
                            f"Krea answered submission {row.submission_id} after it was "
                            "resolved elsewhere"
                        ),
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

    def lease(self, account: str) -> Lease | None:
        """The account's submit lease, when a submission holds it."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(leases_table).where(leases_table.c.account == account)
            ).first()
            return None if row is None else self._lease(conn, row)

    def _lease(self, conn: Connection, row: Any) -> Lease | None:
        if row.submission_id is None:
            return None
        holder = self._get(conn, row.submission_id)
        if holder is None or not holder.is_unresolved:
            return None  # answered: the lease is free
        return Lease(holder, _aware(row.expires_at), row.owner_host, row.owner_pid)

    def update_jobs(self, updates: Iterable[JobUpdate]) -> list[Submission]:
        """Record job statuses; returns the rows whose state changed.

        Each write is guarded in SQL: a terminal row is never changed, and a live status never
        replaces a later one (a stale page after a fresher GET, two pollers racing).
        """
        by_id = {update.job_id: update for update in updates}
        if not by_id:
            return []
        changed: list[str] = []
        now = utcnow()
        column = submissions_table.c
        with self.transaction() as conn:
            for chunk in _chunks(list(by_id), 500):
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
                        rank = _STATUS_RANK.get(update.status, _UNRANKED)
                        guard.append(_status_rank(column.state) <= rank)
                    result = conn.execute(
                        submissions_table.update()
                        .where(*guard)
                        .values(**values)
                        .returning(column.submission_id)
                    )
                    changed.extend(result.scalars())
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

    @staticmethod
    def _get(conn: Connection, submission_id: str) -> Submission | None:
        row = (
            conn.execute(
                sa.select(submissions_table).where(
                    submissions_table.c.submission_id == submission_id
                )
            )
            .mappings()
            .first()
        )
        return None if row is None else Submission.from_row(row)

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
        """The latest attempt per prompt key of one generation of a batch (output rows under
        their own keys: see ``outputs``)."""
        latest: dict[str, Submission] = {}
        for row in self.rows(scope, batch, generation):
            latest[row.prompt_key] = row
        return latest

    def outputs(self, submission_ids: Iterable[str]) -> dict[str, list[Submission]]:
        """The output rows of these submissions (a node app's further jobs), in job order."""
        found: dict[str, list[Submission]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(submission_ids)), 500):
                rows = conn.execute(
                    sa.select(submissions_table)
                    .where(submissions_table.c.parent_id.in_(chunk))
                    .order_by(submissions_table.c.id)
                ).mappings()
                for row in rows:
                    found.setdefault(row["parent_id"], []).append(Submission.from_row(row))
        return found

    def jobs_per_submission(self, model: str) -> int | None:
        """How many jobs the latest answered submission of ``model`` created (None: none yet).

        A node app's count, for reconciliation: an unresolved execution of it created that
        many jobs or none.
        """
        column = submissions_table.c
        with self.engine.connect() as conn:
            latest = conn.execute(
                sa.select(column.submission_id)
                .where(
                    column.model == model,
                    column.parent_id.is_(None),
                    column.job_id.is_not(None),
                    column.error_code.is_distinct_from(ErrorCode.LATE_ANSWER.value),
                )
                .order_by(column.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            if latest is None:
                return None
            outputs = conn.execute(
                sa.select(sa.func.count()).where(column.parent_id == latest)
            ).scalar_one()
        return 1 + int(outputs)

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

    def answered(self, host: str | None, limit: int = 200) -> list[Submission]:
        """The most recent rows sent from ``host`` that got an answer (for clock-offset bounds)."""
        query = (
            sa.select(submissions_table)
            .where(
                submissions_table.c.krea_created_at.is_not(None),
                submissions_table.c.submitted_at.is_not(None),
                submissions_table.c.sent_at.is_not(None),
                submissions_table.c.ambiguous_at.is_(None),
                submissions_table.c.owner_host == host,
            )
            .order_by(submissions_table.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Submission.from_row(row) for row in conn.execute(query).mappings()]

    def known_job_ids(self, start: datetime, end: datetime) -> set[str]:
        """Every job id the ledger knows (all scopes) created between two times (Krea's clock)."""
        query = sa.select(submissions_table.c.job_id).where(
            submissions_table.c.job_id.is_not(None),
            submissions_table.c.krea_created_at >= start,
            submissions_table.c.krea_created_at <= end,
        )
        with self.engine.connect() as conn:
            return {job_id for (job_id,) in conn.execute(query)}

    def reported(self, scope: str, batch: str | None = None) -> list[Submission]:
        """Rows reconciliation could not decide, for the check that names them."""
        query = sa.select(submissions_table).where(
            submissions_table.c.scope == scope,
            submissions_table.c.state == SubmissionState.REPORTED.value,
        )
        if batch is not None:
            query = query.where(submissions_table.c.batch == batch)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(submissions_table.c.id)).mappings()
            return [Submission.from_row(row) for row in rows]

    def paid_duplicates(self, scope: str, batch: str, generation: int) -> dict[str, list[str]]:
        """Prompt keys with more than one paid job in a generation, with their job ids."""
        paid: dict[str, list[str]] = {}
        for row in self.rows(scope, batch, generation):
            if row.is_paid and row.job_id:
                paid.setdefault(row.prompt_key, []).append(row.job_id)
        return {key: ids for key, ids in paid.items() if len(ids) > 1}

    def open_batches(self, scope: str) -> list[tuple[str, int]]:
        """(batch, current generation) for the batches whose current generation still has work:
        a row not terminal yet, or completed with neither a stored image nor an image error.

        Reads the partial index ``ix_krea_submissions_open``, which holds only such rows, so the
        cost follows the work in flight, not how many batches the scope ever had.
        """
        with self.engine.connect() as conn:
            # Without statistics SQLite may pick another index on (scope, ...) and read every
            # row of the scope; INDEXED BY pins the partial one (PostgreSQL's planner, with
            # statistics, picks it on its own).
            hint = " INDEXED BY ix_krea_submissions_open" if conn.dialect.name == "sqlite" else ""
            open_rows = sa.text(
                f"SELECT DISTINCT batch, generation FROM {submissions_table.name}{hint} "
                f"WHERE scope = :scope AND {_OPEN_ROW_SQL}"
            )
            found = {
                (batch, int(generation))
                for batch, generation in conn.execute(open_rows, {"scope": scope})
            }
            current = self._current_generations(conn, scope, {batch for batch, _ in found})
        return sorted((batch, gen) for batch, gen in found if current.get(batch) == gen)

    def current_generations(self, scope: str, batches: Iterable[str]) -> dict[str, int]:
        """The current generation of each of these batches (batches never started are left out)."""
        with self.engine.connect() as conn:
            return self._current_generations(conn, scope, set(batches))

    @staticmethod
    def _current_generations(conn: Connection, scope: str, batches: set[str]) -> dict[str, int]:
        current: dict[str, int] = {}
        for chunk in _chunks(sorted(batches), 500):
            query = (
                sa.select(generations_table.c.batch, sa.func.max(generations_table.c.generation))
                .where(generations_table.c.scope == scope, generations_table.c.batch.in_(chunk))
                .group_by(generations_table.c.batch)
            )
            current.update((batch, int(generation)) for batch, generation in conn.execute(query))
        return current

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


class LedgerUploadCache:
    """Uploaded reference files of one account, by content hash, in the ledger database.

    ``begin`` writes the intent before the upload (like a submission's): a worker killed during
    an upload leaves it, and the next ``begin`` of the same bytes answers True, so the resolver
    looks for the asset in ``GET /assets`` before uploading again. Nothing is uploaded twice.
    """

    def __init__(self, ledger: Ledger, account: str) -> None:
        self.ledger = ledger
        self.account = account

    def get(self, sha256: str) -> str | None:
        with self.ledger.engine.connect() as conn:
            url = conn.execute(
                sa.select(uploads_table.c.url).where(
                    uploads_table.c.account == self.account,
                    uploads_table.c.sha256 == sha256,
                    uploads_table.c.url.is_not(None),
                )
            ).scalar_one_or_none()
        return None if url is None else str(url)

    def begin(self, sha256: str) -> bool:
        with self.ledger.transaction() as conn:
            started = conn.execute(
                sa.select(uploads_table.c.started_at).where(
                    uploads_table.c.account == self.account, uploads_table.c.sha256 == sha256
                )
            ).first()
            if started is not None:
                return True
            conn.execute(
                uploads_table.insert().values(
                    account=self.account, sha256=sha256, started_at=utcnow()
                )
            )
        return False

    def put(self, sha256: str, url: str, asset_id: str, size: int) -> None:
        with self.ledger.transaction() as conn:
            done = conn.execute(
                uploads_table.update()
                .where(uploads_table.c.account == self.account, uploads_table.c.sha256 == sha256)
                .values(url=url, asset_id=asset_id, size_bytes=size, uploaded_at=utcnow())
            )
            if done.rowcount == 0:
                conn.execute(
                    uploads_table.insert().values(
                        account=self.account,
                        sha256=sha256,
                        url=url,
                        asset_id=asset_id,
                        size_bytes=size,
                        started_at=utcnow(),
                        uploaded_at=utcnow(),
                    )
                )

    def uploads(self) -> int:
        """How many distinct files this account has uploaded through the ledger."""
        with self.ledger.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(
                        uploads_table.c.account == self.account, uploads_table.c.url.is_not(None)
                    )
                ).scalar_one()
            )


def _late_id(submission_id: str) -> str:
    """A submission id for the late answer of ``submission_id`` (same length, distinct)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"krea-late:{submission_id}"))
