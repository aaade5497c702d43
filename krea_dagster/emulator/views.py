"""JSON shapes of the API objects, built from the records.

Job JSON follows the ``GET /jobs/{id}`` schema of the document: ``completed_at`` is omitted
until the job is terminal (the schema makes it a non-nullable, optional date-time; it is also
set on failed and cancelled jobs, as the moment they ended), ``result`` appears only on
completed jobs and ``error`` ``{code, message}`` only on failed and cancelled ones (a cancelled
job has ``code = "cancelled"``). ``POST /generate/...`` answers the JobCreated shape, whose
schema requires ``completed_at`` and ``result`` as ``null``. ``POST /node-apps/{id}/execute``
answers an array of Job objects whose schema makes ``completed_at`` a non-nullable date-time
and ``result`` an object, both optional: its items are the ``GET /jobs/{id}`` shape.
"""

from __future__ import annotations

from typing import Any

from krea_dagster.emulator.clock import format_micros
from krea_dagster.emulator.lifecycle import JobStatus
from krea_dagster.emulator.pricing import micros_to_usd
from krea_dagster.emulator.records import Account, Job


def result_url(job: Job, cdn_url: str) -> str:
    """The CDN URL of a completed job's file (a ``.mp4`` for video models, else a ``.png``)."""
    suffix = "mp4" if job.model_key.startswith("video/") else "png"
    return f"{cdn_url}/results/{job.id}/{job.result_token}.{suffix}"


def poster_url(job: Job, cdn_url: str) -> str | None:
    """A video result's poster frame (its first frame as JPEG), beside the ``.mp4``."""
    if not job.model_key.startswith("video/"):
        return None
    return f"{cdn_url}/results/{job.id}/{job.result_token}.jpg"


def job_json(job: Job, cdn_url: str) -> dict[str, Any]:
    """The Job object of ``GET /jobs/{id}``, ``GET /jobs`` items and webhooks."""
    data: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status.value,
        "created_at": format_micros(job.created_us),
    }
    if job.completed_us is not None:
        data["completed_at"] = format_micros(job.completed_us)
    if job.status is JobStatus.COMPLETED:
        data["result"] = {"urls": [result_url(job, cdn_url)]}
    if job.error:
        data["error"] = {"code": job.error[0], "message": job.error[1]}
    return data


def created_json(job: Job) -> dict[str, Any]:
    """The JobCreated object answered by ``POST /generate/...``."""
    return {
        "job_id": job.id,
        "status": job.status.value,
        "created_at": format_micros(job.created_us),
        "completed_at": None,
        "result": None,
    }


def account_json(account: Account) -> dict[str, Any]:
    """Admin view of an account."""
    return {
        "account": account.id,
        "token": account.token,
        "concurrency": account.concurrency,
        "backlog": account.backlog_limit,
        "balance_usd": micros_to_usd(account.balance_micros),
        "reserved_usd": micros_to_usd(account.reserved_micros),
        "running": account.running,
        "backlogged": account.backlogged,
        "jobs": len(account.job_ids),
        "max_running_seen": account.max_running_seen,
    }
