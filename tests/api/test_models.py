"""Typed records: Job, JobStatus, JobError, JobList, Asset."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime

import pytest

from krea_dagster.api import (
    TERMINAL_STATUSES,
    Asset,
    Job,
    JobError,
    JobStatus,
    MalformedPayloadError,
)
from krea_dagster.api.models import JobList

from .support import SAMPLE_JOB_COMPLETED, SAMPLE_JOB_CREATED, SAMPLE_JOB_FAILED, make_job


def test_job_from_created_response() -> None:
    """The POST response (completed_at and result null) parses into a pending job."""
    job = Job.from_api(SAMPLE_JOB_CREATED)
    assert job.status is JobStatus.QUEUED
    assert job.created_at == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert job.completed_at is None
    assert job.result_urls == ()
    assert job.is_pending and not job.is_terminal


def test_job_from_completed_response() -> None:
    """A completed job exposes its result URLs and completion time, and keeps the raw body."""
    job = Job.from_api(SAMPLE_JOB_COMPLETED)
    assert job.is_completed and job.is_terminal
    assert job.result_urls == tuple(SAMPLE_JOB_COMPLETED["result"]["urls"])
    assert job.completed_at is not None and job.completed_at.tzinfo is not None
    assert job.raw["job_id"] == SAMPLE_JOB_COMPLETED["job_id"]
    assert "raw" not in repr(job)


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-06-01T12:00:00Z",
        "2026-06-01T12:00:00.123456789Z",
        "2026-06-01T12:00:00",
        "2026-06-01T14:00:00+02:00",
    ],
    ids=["zulu", "nanoseconds", "naive-is-utc", "offset"],
)
def test_created_at_is_always_aware(stamp: str) -> None:
    """Timestamps become aware datetimes whatever ISO form Krea sends."""
    job = Job.from_api(
        make_job(created_at=datetime(2026, 1, 1, tzinfo=UTC)) | {"created_at": stamp}
    )
    assert job.created_at.tzinfo is not None
    assert job.created_at.astimezone(UTC).replace(microsecond=0) == datetime(
        2026, 6, 1, 12, 0, tzinfo=UTC
    )


def test_terminal_statuses_are_exactly_three() -> None:
    """Only completed, failed and cancelled end a job; every other known status is pending."""
    assert {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    } == TERMINAL_STATUSES
    assert len(JobStatus) == 9
    assert [s for s in JobStatus if s.is_terminal] == [
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    ]


def test_unknown_status_parses_keeps_its_string_and_is_not_terminal() -> None:
    """A status Krea adds later parses, keeps its raw value and never ends a wait."""
    job = Job.from_api(make_job(status="upscaling"))
    assert job.status == "upscaling"
    assert job.status.value == "upscaling"
    assert not job.status.is_known
    assert not job.is_terminal
    assert job.is_pending
    assert pickle.loads(pickle.dumps(job.status)).value == "upscaling"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (SAMPLE_JOB_FAILED, JobError("safety_filter", "The prompt was flagged by moderation")),
        (make_job(status="failed", error="Provider timeout"), JobError(None, "Provider timeout")),
        (
            make_job(status="failed", result={"error": {"code": "nsfw", "message": "x"}}),
            JobError("nsfw", "x"),
        ),
        (make_job(status="failed", result={"error": "legacy text"}), JobError(None, "legacy text")),
        (make_job(status="failed", message="only a message"), JobError(None, "only a message")),
        (make_job(status="completed", message="not an error"), None),
        (make_job(status="failed", error=None), None),
    ],
    ids=[
        "error-object",
        "error-string",
        "result-error-object",
        "result-error-string",
        "message-on-failed",
        "message-on-completed-ignored",
        "nothing",
    ],
)
def test_job_error_sources(body: dict[str, object], expected: JobError | None) -> None:
    """The failure is read from error, then result.error, then a failed job's message."""
    assert Job.from_api(body).error == expected


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"status": "queued", "created_at": "2026-06-01T12:00:00Z"}, "missing job_id"),
        ({"job_id": "x", "created_at": "2026-06-01T12:00:00Z"}, "missing status"),
        ({"job_id": "x", "status": "queued", "created_at": "yesterday"}, "ISO 8601"),
        (
            {"job_id": "x", "status": 3, "created_at": "2026-06-01T12:00:00Z"},
            "status must be a string",
        ),
        (make_job(result={"urls": "https://x"}), "result.urls"),
        (["not", "an", "object"], "expected a Krea job object"),
    ],
    ids=["no-id", "no-status", "bad-date", "numeric-status", "urls-not-list", "list"],
)
def test_malformed_jobs_are_rejected_with_a_reason(body: object, fragment: str) -> None:
    """A body that is not a job raises MalformedPayloadError saying what is wrong."""
    with pytest.raises(MalformedPayloadError, match=fragment):
        Job.from_api(body)


def test_job_is_frozen_and_comparable() -> None:
    """Jobs are immutable values; the raw body does not take part in equality."""
    job = Job.from_api(SAMPLE_JOB_CREATED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.status = JobStatus.COMPLETED  # type: ignore[misc]
    assert job == Job.from_api(dict(SAMPLE_JOB_CREATED, extra="ignored"))
    assert job.dedupe_key == (job.job_id, "queued")


def test_job_list_from_api() -> None:
    """A GET /jobs page parses its items and cursor; a null cursor means the last page."""
    page = JobList.from_api(
        {"items": [make_job("a"), make_job("b")], "next_cursor": "2026-06-01T11:00:00Z"}
    )
    assert [job.job_id for job in page.items] == ["a", "b"]
    assert page.next_cursor == "2026-06-01T11:00:00Z"
    assert JobList.from_api({"items": [], "next_cursor": None}).next_cursor is None
    with pytest.raises(MalformedPayloadError):
        JobList.from_api({"jobs": []})


def test_asset_from_api() -> None:
    """An uploaded asset parses from its documented shape."""
    asset = Asset.from_api(
        {
            "id": "7b1e",
            "image_url": "https://cdn.krea.test/a.png",
            "uploaded_at": "2026-06-01T12:00:00Z",
            "width": 512,
            "height": 512,
            "size_bytes": 1234,
            "mime_type": "image/png",
        }
    )
    assert asset.size_bytes == 1234
    assert asset.uploaded_at.tzinfo is not None
