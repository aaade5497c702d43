"""The emulator's records: accounts, jobs and assets, with their persisted form.

Records are plain mutable dataclasses owned by :class:`~krea_dagster.emulator.state.EmulatorState`
(the only code that changes them). ``to_record``/``from_record`` give the JSON-ready form the
``--state-file`` store keeps; the API shapes are built in ``state.py``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from krea_dagster.emulator.faults import JobOutcome
from krea_dagster.emulator.lifecycle import JobStatus


@dataclass
class Account:
    """One API token: its jobs, concurrency, backlog cap and USD balance."""

    id: str
    token: str
    concurrency: int
    backlog_limit: int
    balance_micros: int
    initial_balance_micros: int
    last_created_us: int = 0
    last_uploaded_us: int = 0
    max_running_seen: int = 0
    # Derived at run time (rebuilt from the jobs on load, never persisted).
    running: int = 0
    backlogged: int = 0
    reserved_micros: int = 0
    backlog: deque[str] = field(default_factory=deque)  # FIFO; cancelled ids skipped lazily
    job_ids: list[str] = field(default_factory=list)  # creation order
    job_created: list[int] = field(default_factory=list)  # parallel to job_ids, for bisect
    asset_ids: list[str] = field(default_factory=list)
    seen_requests: set[str] = field(default_factory=set)  # repeated-request detector

    _PERSISTED = (
        "id",
        "token",
        "concurrency",
        "backlog_limit",
        "balance_micros",
        "initial_balance_micros",
        "last_created_us",
        "last_uploaded_us",
        "max_running_seen",
    )

    def to_record(self) -> dict[str, Any]:
        """The persisted fields."""
        return {name: getattr(self, name) for name in self._PERSISTED}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Account:
        """An account from its persisted fields (run-time fields empty)."""
        return cls(**{name: record[name] for name in cls._PERSISTED})


class NodeAppRun(NamedTuple):
    """The node-app execute a job belongs to."""

    node_app_id: str
    execution_id: str


@dataclass
class Job:
    """One generation job and its simulated schedule."""

    id: str
    account_id: str
    model_key: str
    job_type: str
    body: dict[str, Any]
    request_hash: str
    created_us: int
    price_micros: int
    outcome: JobOutcome
    render_seconds: float
    timeout_seconds: float
    width: int
    height: int
    webhook_url: str | None = None
    status: JobStatus = JobStatus.BACKLOGGED
    started_at: float | None = None  # clock seconds when it left the backlog
    phase: int = -1  # index into lifecycle.PHASES while it holds a slot
    next_due: float | None = None  # clock seconds of its next event
    next_kind: str = "step"  # "step" (next phase or the end) or "timeout"
    completed_us: int | None = None
    error: tuple[str, str] | None = None
    result_token: str | None = None
    # The media inputs (see inputs.py): field, kind, content hash; they shape the result.
    inputs: list[dict[str, Any]] = field(default_factory=list)
    # Set on the jobs of a node-app execute: the app's version id, one id per execute shared
    # by its jobs, and the job's step index (jobs of one execute are created together).
    node_app_id: str | None = None
    execution_id: str | None = None
    step: int | None = None
    version: int = 0  # bumped on every reschedule; older heap entries are ignored

    def to_record(self) -> dict[str, Any]:
        """JSON-ready persisted form."""
        record = {name: getattr(self, name) for name in _JOB_FIELDS}
        record["status"] = self.status.value
        record["outcome"] = [self.outcome.kind, self.outcome.code, self.outcome.message]
        record["error"] = list(self.error) if self.error else None
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        """A job from its persisted form."""
        # Fields added later (inputs, node-app fields) default when a state file predates them.
        values = {name: record[name] for name in _JOB_FIELDS if name in record}
        values["status"] = JobStatus(record["status"])
        values["outcome"] = JobOutcome(*record["outcome"])
        values["error"] = tuple(record["error"]) if record["error"] else None
        return cls(**values)


_JOB_FIELDS = [name for name in Job.__dataclass_fields__ if name != "version"]


@dataclass
class Asset:
    """One uploaded file."""

    id: str
    account_id: str
    uploaded_us: int
    mime_type: str
    filename: str
    size_bytes: int
    width: int | None
    height: int | None
    description: str | None
    data: bytes = field(repr=False)

    def to_record(self) -> dict[str, Any]:
        """Persisted metadata (the bytes are stored separately)."""
        return {name: getattr(self, name) for name in _ASSET_FIELDS}

    @classmethod
    def from_record(cls, record: dict[str, Any], data: bytes) -> Asset:
        """An asset from its metadata and bytes."""
        return cls(**{name: record[name] for name in _ASSET_FIELDS}, data=data)


_ASSET_FIELDS = [name for name in Asset.__dataclass_fields__ if name != "data"]
