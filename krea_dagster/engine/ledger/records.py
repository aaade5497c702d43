"""The ledger's records: rows as typed frozen values, states as data, and the rules over them.

Nothing here touches the database: ``Submission.from_row`` turns a row into a record, and the
write protocol (``protocol``) and the queries (``queries``) hand records back.
"""

import hashlib
import json
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from krea_dagster.api.models import TERMINAL_STATUSES, Job, JobStatus
from krea_dagster.engine.errors import ErrorCode

__all__ = [
    "PAID_STATES",
    "STATUS_RANK",
    "TERMINAL_STATES",
    "UNRANKED",
    "UNRESOLVED_STATES",
    "Claim",
    "JobUpdate",
    "Lease",
    "Submission",
    "SubmissionState",
    "attempts_by_prompt",
    "aware",
    "may_submit",
    "output_key",
    "utcnow",
]


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
STATUS_RANK = {
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
UNRANKED = len(STATUS_RANK)  # a status Krea adds later: after the known live ones


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
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
    #: Set on a late answer's row: the submission Krea answered after it was resolved elsewhere.
    late_answer_of: str | None = None
    #: Krea's clock minus ``owner_host``'s (seconds), at least and at most, measured from
    #: Krea's answers when ``sent_at`` was recorded (None: not measured, an older ledger).
    krea_offset_low: float | None = None
    krea_offset_high: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Submission":
        values = {name: row[name] for name in cls.__dataclass_fields__}
        for name, value in values.items():
            if isinstance(value, datetime):
                values[name] = aware(value)
        return cls(**values)

    @classmethod
    def written(cls, values: Mapping[str, Any]) -> "Submission":
        """The record of a row just inserted with ``values`` (the columns it leaves out are
        null), without reading it back."""
        return cls.from_row({name: values.get(name) for name in cls.__dataclass_fields__})

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
    def awaits_sending(self) -> bool:
        """Krea took nothing for this attempt, for a reason that is not the prompt's (never
        sent, proven never created, refused for the rate, the balance, the token or an upload
        it no longer has): the prompt is sent again by its run or the next, and the attempt
        does not count against ``max_attempts``."""
        return self.state == SubmissionState.NOT_CREATED and self.error_code != ErrorCode.REJECTED

    @property
    def has_image(self) -> bool:
        return self.image_uri is not None

    @property
    def request(self) -> dict[str, Any]:
        return dict(json.loads(self.request_json))


@dataclass(frozen=True)
class PlanProgress:
    """How far the jobs run that last planned a batch generation got (``Ledger.plan_progress``)."""

    #: The run that recorded the plan (None: no plan, or a run outside Dagster).
    run_id: str | None
    #: Planned prompts Krea has taken nothing for yet: no submission row, or a latest row
    #: that ``awaits_sending``. Above 0 the batch is not done while that run, or a retry of it,
    #: may still send them.
    unsent: int


def output_key(prompt_key: str, position: int) -> str:
    """The prompt key of a submission's output row ``position`` (1 for its second job, ...)."""
    return hashlib.sha256(f"{prompt_key}#output{position}".encode()).hexdigest()


def may_submit(
    attempts: Iterable[Submission],
    max_attempts: int,
    outputs: Mapping[str, Sequence[Submission]] | None = None,
) -> bool:
    """Whether a prompt with these earlier attempts (one generation) may be submitted again.

    Not while one is live (maybe another worker is sending it right now), paid or reported
    (nobody knows whether it created a job). A node-app execution is judged by all of its
    jobs (``outputs``, by submission id): one job live or completed covers the prompt, however
    its first job ended, since executing it again would pay again. Attempts Krea never
    received, or refused for the balance, the rate or the token, do not count against
    ``max_attempts``; failed jobs and bodies Krea rejected do.
    """
    counted = 0
    for row in attempts:
        jobs = [row, *(outputs or {}).get(row.submission_id, ())]
        if row.is_reported or any(job.is_live or job.is_paid for job in jobs):
            return False
        if not row.awaits_sending:
            counted += 1
    return counted < max_attempts


def attempts_by_prompt(
    rows: Iterable[Submission],
) -> tuple[dict[str, list[Submission]], dict[str, list[Submission]]]:
    """Rows of a generation as ``may_submit`` reads them: each prompt's attempts in order, and
    the output rows of each node-app execution by its submission id."""
    attempts: dict[str, list[Submission]] = {}
    outputs: dict[str, list[Submission]] = {}
    for row in rows:
        if row.parent_id is not None:
            outputs.setdefault(row.parent_id, []).append(row)
        else:
            attempts.setdefault(row.prompt_key, []).append(row)
    return attempts, outputs


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

    def answer(self) -> dict[str, Any]:
        """The keyword arguments of ``Ledger.mark_submitted`` for this job."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "created_at": self.created_at,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "result_url": self.result_url,
            "completed_at": self.completed_at,
        }

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
    """An unresolved submission's lease: its worker is alive until ``expires_at``. ``lane``:
    the account's submit lane its POST is in flight on (None once its answer was lost)."""

    holder: Submission
    expires_at: datetime | None
    owner_host: str | None
    owner_pid: int | None
    lane: int | None

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
    ``lease``: every submit lane of the account is held by a live worker (this one's, the
    earliest to expire); wait and claim again. None of the three: a concurrent claim raced this
    one; claim again. ``taken_over``: the rows whose expired lanes this claim took (their
    workers are gone): still unresolved, for the caller to reconcile.
    """

    row: Submission | None = None
    covered: bool = False
    lease: Lease | None = None
    taken_over: tuple[Submission, ...] = ()
