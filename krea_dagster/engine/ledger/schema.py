"""The ledger's tables, its schema version and in-place upgrades, and its connection.

``LedgerDatabase`` owns the engine (SQLite with WAL and ``BEGIN IMMEDIATE`` writers, or
PostgreSQL), creates and upgrades the schema on first use, and gives the write protocol and the
queries their transaction and the few row reads both need.
"""

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from krea_dagster.api.models import JobStatus
from krea_dagster.engine.ledger.records import (
    PAID_STATES,
    TERMINAL_STATES,
    UNRESOLVED_STATES,
    Lease,
    Submission,
    aware,
    utcnow,
)

__all__ = [
    "OPEN_ROW_SQL",
    "SCHEMA_VERSION",
    "LedgerDatabase",
    "LedgerSchemaError",
    "accounts_table",
    "catalogs_table",
    "chunks",
    "generations_table",
    "leases_table",
    "meta_table",
    "metadata",
    "plans_table",
    "submissions_table",
    "uploads_table",
]

SCHEMA_VERSION = 5
# PostgreSQL advisory lock key that serializes schema creation (any constant 64-bit integer).
_SCHEMA_LOCK = 0x6B726561_6C656467  # "krealedg"


# SQL for "a row the completion sensor still has work for": not terminal (unresolved rows and
# unknown future Krea statuses included), or completed with neither a stored image nor an image
# error yet. Literal text, the same in the partial index and in the query, so that both SQLite
# and PostgreSQL prove the query uses the index (a bound parameter would not match it).
_DONE_STATES = sorted(TERMINAL_STATES - PAID_STATES)
OPEN_ROW_SQL = (
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
    # A late answer's row: the submission whose POST Krea answered after another worker had
    # resolved it. Its own column, so error_code keeps Krea's code (which decides retries).
    sa.Column("late_answer_of", sa.String(36)),
    # Krea's clock minus owner_host's, in seconds, at least and at most, as measured from
    # Krea's Date headers when sent_at was recorded: where the window lies in Krea's clock.
    sa.Column("krea_offset_low", sa.Float),
    sa.Column("krea_offset_high", sa.Float),
    sa.UniqueConstraint(
        "scope", "batch", "prompt_key", "generation", "attempt", name="uq_krea_attempt"
    ),
    sa.Index("ix_krea_submissions_parent", "parent_id"),
    sa.Index("ix_krea_submissions_batch", "scope", "batch", "generation"),
    sa.Index("ix_krea_submissions_state", "scope", "state"),
    sa.Index("ix_krea_submissions_created", "krea_created_at"),
    # Only the rows that still need work (``OPEN_ROW_SQL``): a completion tick's cost follows
    # the batches in flight, not the history of the prefix.
    sa.Index(
        "ix_krea_submissions_open",
        "scope",
        "batch",
        "generation",
        sqlite_where=sa.text(OPEN_ROW_SQL),
        postgresql_where=sa.text(OPEN_ROW_SQL),
    ),
)

# One row per unresolved submission: its worker's lease (``expires_at``, the process that
# holds it) and, while its POST is in flight, the account's submit lane it uses. At most
# ``submit_lanes`` rows of an account have a lane (the unique index: NULLs are distinct, so
# rows whose answer was lost, which give their lane back, keep their lease). Version 5 keyed it by
# submission; before, one row per account held the account's only lane.
leases_table = sa.Table(
    "krea_submit_leases",
    metadata,
    sa.Column("submission_id", sa.String(36), primary_key=True),
    sa.Column("account", sa.String(128), nullable=False),
    sa.Column("lane", sa.Integer),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("owner_host", sa.String(255)),
    sa.Column("owner_pid", sa.Integer),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ux_krea_submit_lanes", "account", "lane", unique=True),
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

# The prompts a batch generation is meant to cover, as the jobs step that last started on it
# planned them (before its first POST), and which run that was: until Krea has taken each (a
# submission row that is not waiting to be sent again), the batch is not done, whatever the rows
# already there say (a submitter killed mid-batch, or not yet past its first reconciliation, has
# sent only some of them; one between two rounds has rows it will re-send). A table of its own:
# created by create_all on any ledger, no upgrade needed.
plans_table = sa.Table(
    "krea_plans",
    metadata,
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("batch", sa.String(256), primary_key=True),
    sa.Column("generation", sa.Integer, primary_key=True),
    sa.Column("prompt_key", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("planned_at", sa.DateTime(timezone=True), nullable=False),
)

# The live model catalog of each backend (``krea_dagster.engine.catalogs``), shared by every
# process of a deployment so a run does not fetch ``/openapi.json`` each time. A table of its
# own, created by ``create_all`` on older ledgers too: no schema version change.
catalogs_table = sa.Table(
    "krea_model_catalogs",
    metadata,
    sa.Column("base_url", sa.String(512), primary_key=True),
    sa.Column("etag", sa.String(512)),
    # SHA-256 of the document the catalog was derived from: the live catalog's fingerprint.
    sa.Column("sha256", sa.String(64)),
    sa.Column("derivation", sa.Integer),
    sa.Column("catalog_json", sa.Text),
    sa.Column("fetched_at", sa.DateTime(timezone=True)),
    # When the backend was last asked (an answer, a 304 or a failure): the freshness clock.
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    # Why the last check failed (null when it succeeded).
    sa.Column("error", sa.Text),
)

# Columns each version added to the tables of the one before (upgraded in place by
# ``_migrate``).
_ADDED_IN: dict[int, dict[str, tuple[str, ...]]] = {
    2: {"krea_submissions": ("account", "sent_at"), "krea_generations": ("request_id",)},
    3: {"krea_submissions": ("parent_id",)},
    4: {"krea_submissions": ("late_answer_of", "krea_offset_low", "krea_offset_high")},
    5: {},  # the leases table is rebuilt (``_lease_per_submission``)
}


class LedgerDatabase:
    """The ledger's database: engine, schema and transactions (see ``Ledger``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Ledger({sa.make_url(self.url).render_as_string(hide_password=True)!r})"

    # -- connection and schema -------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine, its schema created or upgraded first: the submit lanes' threads use a
        fresh ledger at once, and none may see an engine whose tables do not exist yet."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    engine = self._create_engine()
                    self._migrate(engine)
                    self._engine = engine
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
        regeneration request ids; 2: no output rows; 3: late answers marked by error code and
        no measured clock offsets; 4: one submit lease per account)."""
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
        if version < 5 and inspector.has_table(leases_table.name):
            _lease_per_submission(conn)
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
    def _outputs(conn: Connection, attempts: Sequence[Submission]) -> dict[str, list[Submission]]:
        """The output rows of these submissions (a node-app execution's further jobs)."""
        ids = [row.submission_id for row in attempts]
        if not ids:
            return {}
        rows = conn.execute(
            sa.select(submissions_table)
            .where(submissions_table.c.parent_id.in_(ids))
            .order_by(submissions_table.c.id)
        ).mappings()
        found: dict[str, list[Submission]] = {}
        for row in rows:
            found.setdefault(row["parent_id"], []).append(Submission.from_row(row))
        return found

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

    def current_generation(self, scope: str, batch: str) -> int:
        """The latest generation of a batch, 0 when it was never submitted."""
        with self.engine.connect() as conn:
            return self._current_generation(conn, scope, batch)

    def leases(self, account: str) -> list[Lease]:
        """The leases of the account's unresolved rows (live or expired), by lane."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leases_table)
                .where(leases_table.c.account == account)
                .order_by(leases_table.c.lane, leases_table.c.submission_id)
            ).all()
            found = (self._lease(conn, row) for row in rows)
            return [lease for lease in found if lease is not None]

    def live_holders(self, account: str) -> set[str]:
        """The unresolved rows of the account a live worker holds (sending, or reconciling its
        lost answer)."""
        now = utcnow()
        return {
            lease.holder.submission_id
            for lease in self.leases(account)
            if not lease.is_expired(now)
        }

    def _lease(self, conn: Connection, row: Any) -> Lease | None:
        holder = self._get(conn, row.submission_id)
        if holder is None or not holder.is_unresolved:
            return None  # answered: the lease is free
        return Lease(holder, aware(row.expires_at), row.owner_host, row.owner_pid, row.lane)

    def get(self, submission_id: str) -> Submission:
        found = self.get_many([submission_id])
        if not found:
            raise KeyError(f"no ledger row for submission {submission_id}")
        return found[0]

    def get_many(self, submission_ids: Sequence[str]) -> list[Submission]:
        result: list[Submission] = []
        with self.engine.connect() as conn:
            for chunk in chunks(list(submission_ids), 500):
                rows = conn.execute(
                    sa.select(submissions_table)
                    .where(submissions_table.c.submission_id.in_(chunk))
                    .order_by(submissions_table.c.id)
                ).mappings()
                result.extend(Submission.from_row(row) for row in rows)
        return result

    @staticmethod
    def _current_generation(conn: Connection, scope: str, batch: str) -> int:
        value = conn.execute(
            sa.select(sa.func.max(generations_table.c.generation)).where(
                generations_table.c.scope == scope, generations_table.c.batch == batch
            )
        ).scalar_one()
        return int(value or 0)


def _lease_per_submission(conn: Connection) -> None:
    """Rebuild a version 4 leases table (one row per account) keyed by submission: a lease
    still held becomes its row's lease on lane 0."""
    old = sa.Table(leases_table.name, sa.MetaData(), autoload_with=conn)
    columns = ("account", "submission_id", "expires_at", "owner_host", "owner_pid", "updated_at")
    held = conn.execute(
        sa.select(*(old.c[name] for name in columns)).where(old.c.submission_id.is_not(None))
    ).all()
    conn.execute(sa.text(f"DROP TABLE {leases_table.name}"))
    leases_table.create(conn)
    for row in held:
        conn.execute(leases_table.insert().values(lane=0, **row._mapping))


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
