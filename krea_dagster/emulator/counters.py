"""Counters that tests and benchmarks read through ``GET /_emulator/stats``.

``repeated_requests`` counts accepted jobs whose canonical request (model path plus the body
after alias rewriting, keys sorted) the same account had already submitted, whatever became of
the earlier job. ``duplicate_submissions`` (computed from the jobs when the stats are read) is
the double-pay detector: for each repeated request, the jobs beyond the first that are billed
or may still be (completed or live). A request sent again after its first job failed or was
cancelled, unbilled, is a repeat, never a duplicate. ``max_running_seen`` is the highest number of jobs holding a concurrency slot at the
same time, over all accounts. ``uploads`` counts accepted ``POST /assets``, ``uploads_by_sha256``
the same by the SHA-256 of the file, and ``duplicate_uploads`` the uploads of bytes already
uploaded before (any account): the double-upload detector. Upload counters are saved at once,
so they survive a kill -9 of the emulator. ``node_app_executions`` counts the accepted
``POST /node-apps/{id}/execute`` (a dropped answer included) and ``node_app_jobs`` the jobs
they created (one per step; ``GET /_emulator/node-app-executions`` lists them per execute).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from krea_dagster.emulator.lifecycle import TERMINAL_STATUSES, JobStatus

if TYPE_CHECKING:
    from krea_dagster.emulator.records import Job


def payable_repeats(jobs: Iterable[Job]) -> int:
    """``duplicate_submissions``: jobs repeating an account's request while an earlier job of
    it is billed or may still be (completed or live), counted from the jobs as they are now.

    A request re-sent after its first job was cancelled or failed (both unbilled) is no double
    payment, however the two overlapped.
    """
    payable: Counter[tuple[str, str]] = Counter(
        (job.account_id, job.request_hash)
        for job in jobs
        if job.status is JobStatus.COMPLETED or job.status not in TERMINAL_STATUSES
    )
    return sum(count - 1 for count in payable.values() if count > 1)


@dataclass
class Counters:
    """Run counters (cleared by ``POST /_emulator/reset``)."""

    jobs_created: int = 0
    jobs_by_status: Counter[str] = field(default_factory=Counter)
    jobs_billed: int = 0
    billed_micros: int = 0
    requests_by_route: Counter[str] = field(default_factory=Counter)
    admin_requests_by_route: Counter[str] = field(default_factory=Counter)
    cdn_downloads: int = 0
    max_running_seen: int = 0
    repeated_requests: int = 0
    webhooks_sent: int = 0
    webhook_attempts: int = 0
    webhooks_failed: int = 0
    faults_injected: Counter[str] = field(default_factory=Counter)
    uploads: int = 0
    uploads_by_sha256: Counter[str] = field(default_factory=Counter)
    node_app_executions: int = 0
    node_app_jobs: int = 0

    def count_upload(self, sha256: str) -> None:
        """Count one accepted upload of bytes with this hash."""
        self.uploads += 1
        self.uploads_by_sha256[sha256] += 1

    def to_record(self, jobs: Iterable[Job] | None = None) -> dict[str, Any]:
        """JSON-ready form (also the persisted form); with ``jobs``, also
        ``duplicate_submissions``, which is counted from them (``payable_repeats``)."""
        record = {
            "jobs_created": self.jobs_created,
            "jobs_by_status": {s.value: self.jobs_by_status.get(s.value, 0) for s in JobStatus},
            "jobs_billed": self.jobs_billed,
            "billed_micros": self.billed_micros,
            "requests_by_route": dict(sorted(self.requests_by_route.items())),
            "admin_requests_by_route": dict(sorted(self.admin_requests_by_route.items())),
            "cdn_downloads": self.cdn_downloads,
            "max_running_seen": self.max_running_seen,
            "repeated_requests": self.repeated_requests,
            "webhooks_sent": self.webhooks_sent,
            "webhook_attempts": self.webhook_attempts,
            "webhooks_failed": self.webhooks_failed,
            "faults_injected": dict(sorted(self.faults_injected.items())),
            "uploads": self.uploads,
            "uploads_by_sha256": dict(sorted(self.uploads_by_sha256.items())),
            "duplicate_uploads": sum(n - 1 for n in self.uploads_by_sha256.values() if n > 1),
            "node_app_executions": self.node_app_executions,
            "node_app_jobs": self.node_app_jobs,
        }
        if jobs is not None:
            record["duplicate_submissions"] = payable_repeats(jobs)
        return record

    def without_job_counts(self) -> Counters:
        """These counters with the job-derived ones zeroed (they are rebuilt from the jobs)."""
        self.jobs_created = self.jobs_billed = self.billed_micros = 0
        self.repeated_requests = self.node_app_executions = self.node_app_jobs = 0
        self.jobs_by_status.clear()
        return self

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Counters:
        """Counters from their persisted form (missing keys start at zero)."""
        counters = cls()
        for name, value in record.items():
            if not hasattr(counters, name):
                continue
            current = getattr(counters, name)
            setattr(counters, name, Counter(value) if isinstance(current, Counter) else value)
        return counters
