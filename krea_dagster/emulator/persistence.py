"""State persistence for ``--state-file``: accounts, jobs, assets and counters in SQLite.

Jobs, accounts and assets are written through on every change, in WAL mode with
``synchronous=NORMAL``: a commit survives the emulator process being killed (only an operating
system crash can lose the last commits), at a cost of tens of microseconds per write. The job
counters (created, by status, billed, duplicates) are rebuilt from the jobs on load, so they are
always exact; the other counters change on every request, so they are written at most every
half second by the background tick and at shutdown: a ``kill -9`` can lose the last half second
of request, webhook and fault counts, never a job.

Without ``--state-file`` the :class:`MemoryStore` keeps nothing. Fault random streams are not
persisted: a restarted emulator draws faults from the seed again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krea_dagster.emulator.records import Account, Asset, Job

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created_us INTEGER NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assets (id TEXT PRIMARY KEY, record TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (id INTEGER PRIMARY KEY CHECK (id = 1), record TEXT NOT NULL);
"""


@dataclass
class Snapshot:
    """Everything a store holds, as records."""

    accounts: list[Account] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    assets: list[Asset] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)


class MemoryStore:
    """The default: nothing survives the process."""

    def load(self) -> Snapshot:
        """An empty snapshot."""
        return Snapshot()

    def save_account(self, account: Account) -> None:
        """Nothing to do."""

    def delete_account(self, account_id: str) -> None:
        """Nothing to do."""

    def save_job(self, job: Job) -> None:
        """Nothing to do."""

    def save_asset(self, asset: Asset) -> None:
        """Nothing to do."""

    def delete_asset(self, asset_id: str) -> None:
        """Nothing to do."""

    def save_counters(self, counters: dict[str, Any]) -> None:
        """Nothing to do."""

    def clear_activity(self) -> None:
        """Nothing to do."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes (nothing to group here)."""
        yield

    def close(self) -> None:
        """Nothing to do."""


class SqliteStore(MemoryStore):
    """Write-through persistence in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Only the event-loop thread touches the connection, but the server is created in
        # another thread than the one that runs it (testing helpers).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group the writes of the block: a kill -9 keeps all of them or none (a node-app run)."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def load(self) -> Snapshot:
        """Everything in the file."""
        rows = self._db.execute("SELECT record FROM accounts").fetchall()
        accounts = [Account.from_record(json.loads(r)) for (r,) in rows]
        rows = self._db.execute("SELECT record FROM jobs ORDER BY created_us").fetchall()
        jobs = [Job.from_record(json.loads(r)) for (r,) in rows]
        rows = self._db.execute("SELECT record, data FROM assets").fetchall()
        assets = [Asset.from_record(json.loads(r), bytes(d)) for r, d in rows]
        row = self._db.execute("SELECT record FROM counters WHERE id = 1").fetchone()
        return Snapshot(accounts, jobs, assets, json.loads(row[0]) if row else {})

    def save_account(self, account: Account) -> None:
        """Insert or replace one account."""
        self._db.execute(
            "INSERT OR REPLACE INTO accounts (id, record) VALUES (?, ?)",
            (account.id, json.dumps(account.to_record())),
        )

    def delete_account(self, account_id: str) -> None:
        """Remove one account."""
        self._db.execute("DELETE FROM accounts WHERE id = ?", (account_id,))

    def save_job(self, job: Job) -> None:
        """Insert or replace one job."""
        self._db.execute(
            "INSERT OR REPLACE INTO jobs (id, created_us, record) VALUES (?, ?, ?)",
            (job.id, job.created_us, json.dumps(job.to_record())),
        )

    def save_asset(self, asset: Asset) -> None:
        """Insert or replace one asset with its bytes."""
        self._db.execute(
            "INSERT OR REPLACE INTO assets (id, record, data) VALUES (?, ?, ?)",
            (asset.id, json.dumps(asset.to_record()), asset.data),
        )

    def delete_asset(self, asset_id: str) -> None:
        """Remove one asset."""
        self._db.execute("DELETE FROM assets WHERE id = ?", (asset_id,))

    def save_counters(self, counters: dict[str, Any]) -> None:
        """Replace the counters row."""
        self._db.execute(
            "INSERT OR REPLACE INTO counters (id, record) VALUES (1, ?)", (json.dumps(counters),)
        )

    def clear_activity(self) -> None:
        """Drop jobs, assets and counters (a reset); accounts are saved again by the caller."""
        self._db.executescript("DELETE FROM jobs; DELETE FROM assets; DELETE FROM counters;")

    def close(self) -> None:
        """Close the file."""
        self._db.close()
