"""wait(): bounded, adaptive polling on a monotonic deadline."""

from __future__ import annotations

import httpx
import pytest

from krea_dagster.api import (
    Job,
    JobCancelledError,
    JobFailedError,
    JobStatus,
    JobTimeoutError,
    NotFoundError,
)
from krea_dagster.api.config import DEFAULT_EXTERNAL_WAIT_TIMEOUT, DEFAULT_HOSTED_WAIT_TIMEOUT

from .support import SAMPLE_JOB_FAILED, TEST_JOB_ID, FakeClock, FakeKrea, make_client, make_job

JOB_PATH = f"/jobs/{TEST_JOB_ID}"


def replies(*statuses: str) -> list[httpx.Response]:
    return [httpx.Response(200, json=make_job(status=status)) for status in statuses]


def test_wait_follows_every_status_to_completion(fake: FakeKrea, clock: FakeClock) -> None:
    """backlogged, queued, intermediate-complete... are pending; completed ends the wait."""
    fake.on(
        "GET",
        JOB_PATH,
        *replies(
            "backlogged", "backlogged", "queued", "processing", "intermediate-complete", "completed"
        ),
    )
    updates: list[str] = []
    with make_client(fake, clock) as krea:
        job = krea.wait(TEST_JOB_ID, on_update=lambda j: updates.append(j.status.value))
    assert job.is_completed and job.result_urls
    assert updates == ["backlogged", "queued", "processing", "intermediate-complete", "completed"]
    assert fake.count("GET", JOB_PATH) == 6


def test_poll_interval_grows_by_half_to_the_cap(fake: FakeKrea, clock: FakeClock) -> None:
    """Intervals start at poll_interval, grow 1.5x, and stop growing at max_interval."""
    fake.on("GET", JOB_PATH, *replies(*["processing"] * 8, "completed"))
    with make_client(fake, clock) as krea:
        krea.wait(TEST_JOB_ID, poll_interval=1.5, max_interval=10.0)
    assert clock.sleeps == pytest.approx([1.5, 2.25, 3.375, 5.0625, 7.59375, 10.0, 10.0, 10.0])


def test_unknown_status_is_not_terminal(fake: FakeKrea, clock: FakeClock) -> None:
    """A status this client does not know keeps the wait going and is reported to on_update."""
    fake.on("GET", JOB_PATH, *replies("queued", "upscaling", "completed"))
    seen: list[Job] = []
    with make_client(fake, clock) as krea:
        job = krea.wait(TEST_JOB_ID, on_update=seen.append)
    assert job.is_completed
    assert [j.status.value for j in seen] == ["queued", "upscaling", "completed"]
    assert not seen[1].status.is_known


def test_a_transient_502_mid_wait_is_retried(fake: FakeKrea, clock: FakeClock) -> None:
    """One 502 while polling is retried by the request policy; the wait carries on."""
    fake.on(
        "GET",
        JOB_PATH,
        httpx.Response(200, json=make_job(status="processing")),
        httpx.Response(502),
        httpx.Response(200, json=make_job(status="completed")),
    )
    with make_client(fake, clock) as krea:
        job = krea.wait(TEST_JOB_ID)
        assert krea.stats.retries == 1
    assert job.is_completed


def test_an_outage_longer_than_the_retries_does_not_end_the_wait(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """When a poll's retries run out on 503s, wait keeps polling until the job finishes."""
    fake.on(
        "GET",
        JOB_PATH,
        httpx.Response(200, json=make_job(status="processing")),
        *[httpx.Response(503)] * 6,
        httpx.Response(200, json=make_job(status="completed")),
    )
    with make_client(fake, clock, max_retries=1) as krea:
        job = krea.wait(TEST_JOB_ID)
    assert job.is_completed


def test_not_found_mid_wait_is_raised(fake: FakeKrea, clock: FakeClock) -> None:
    """A 404 is not transient: the job id is wrong or not ours, so the wait stops."""
    fake.on("GET", JOB_PATH, httpx.Response(404, json={"error": "Job not found"}))
    with make_client(fake, clock) as krea, pytest.raises(NotFoundError):
        krea.wait(TEST_JOB_ID)
    assert fake.count("GET", JOB_PATH) == 1


def test_timeout_raises_with_last_status_and_elapsed(fake: FakeKrea, clock: FakeClock) -> None:
    """At the monotonic deadline JobTimeoutError names the last status; nothing is cancelled."""
    fake.on("GET", JOB_PATH, *replies("processing"))
    with make_client(fake, clock) as krea, pytest.raises(JobTimeoutError) as caught:
        krea.wait(TEST_JOB_ID, timeout=60.0)
    error = caught.value
    assert error.job_id == TEST_JOB_ID
    assert error.last_status == "processing"
    assert error.elapsed == pytest.approx(60.0)
    assert not error.cancel_requested
    assert fake.count("DELETE") == 0
    assert sum(clock.sleeps) == pytest.approx(60.0)


def test_cancel_on_timeout_sends_one_delete(fake: FakeKrea, clock: FakeClock) -> None:
    """cancel_on_timeout issues one best-effort DELETE before raising the timeout."""
    fake.on("GET", JOB_PATH, *replies("processing"))
    fake.on("DELETE", JOB_PATH, httpx.Response(200))
    with make_client(fake, clock) as krea, pytest.raises(JobTimeoutError) as caught:
        krea.wait(TEST_JOB_ID, timeout=30.0, cancel_on_timeout=True)
    assert caught.value.cancel_requested
    assert fake.count("DELETE", JOB_PATH) == 1


def test_a_failed_cancel_still_raises_the_timeout(fake: FakeKrea, clock: FakeClock) -> None:
    """If the DELETE fails, the caller still gets JobTimeoutError, not the DELETE's error."""
    fake.on("GET", JOB_PATH, *replies("processing"))
    fake.on("DELETE", JOB_PATH, httpx.Response(400, json={"error": "cannot cancel"}))
    with make_client(fake, clock) as krea, pytest.raises(JobTimeoutError):
        krea.wait(TEST_JOB_ID, timeout=30.0, cancel_on_timeout=True)


def test_failure_raises_job_failed_error_with_code_and_message(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """A failed job raises JobFailedError carrying Krea's error code and message."""
    fake.on("GET", JOB_PATH, httpx.Response(200, json=SAMPLE_JOB_FAILED))
    with make_client(fake, clock) as krea, pytest.raises(JobFailedError) as caught:
        krea.wait(TEST_JOB_ID)
    assert caught.value.code == "safety_filter"
    assert caught.value.message == "The prompt was flagged by moderation"
    assert caught.value.job.is_failed
    assert "safety_filter" in str(caught.value)


def test_legacy_result_error_shape_reaches_the_failure(fake: FakeKrea, clock: FakeClock) -> None:
    """A failure reported in result.error (older shape) still yields code and message."""
    body = make_job(status="failed", result={"error": {"code": "nsfw", "message": "flagged"}})
    fake.on("GET", JOB_PATH, httpx.Response(200, json=body))
    with make_client(fake, clock) as krea, pytest.raises(JobFailedError) as caught:
        krea.wait(TEST_JOB_ID)
    assert (caught.value.code, caught.value.message) == ("nsfw", "flagged")


def test_cancelled_raises_job_cancelled_error(fake: FakeKrea, clock: FakeClock) -> None:
    """A cancelled job raises JobCancelledError."""
    fake.on("GET", JOB_PATH, *replies("processing", "cancelled"))
    with make_client(fake, clock) as krea, pytest.raises(JobCancelledError) as caught:
        krea.wait(TEST_JOB_ID)
    assert caught.value.job.status is JobStatus.CANCELLED


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_raise_on_failure_false_returns_the_job(
    fake: FakeKrea, clock: FakeClock, status: str
) -> None:
    """With raise_on_failure=False failed and cancelled jobs are returned, not raised."""
    fake.on("GET", JOB_PATH, *replies(status))
    with make_client(fake, clock) as krea:
        job = krea.wait(TEST_JOB_ID, raise_on_failure=False)
    assert job.status.value == status


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("z-image/z-image", DEFAULT_HOSTED_WAIT_TIMEOUT),
        ("openai/gpt-image-2", DEFAULT_EXTERNAL_WAIT_TIMEOUT),
        ("acme/not-in-catalog", DEFAULT_EXTERNAL_WAIT_TIMEOUT),
        (None, DEFAULT_EXTERNAL_WAIT_TIMEOUT),
    ],
    ids=["krea-hosted", "external", "unknown-model", "no-model"],
)
def test_default_timeout_is_model_aware(
    fake: FakeKrea, clock: FakeClock, model: str | None, expected: float
) -> None:
    """Hosted models time out a few minutes past Krea's 3-minute limit, others past the 2-hour one."""
    fake.on("GET", JOB_PATH, *replies("processing"))
    with make_client(fake, clock) as krea, pytest.raises(JobTimeoutError) as caught:
        krea.wait(TEST_JOB_ID, model=model)
    assert caught.value.elapsed == pytest.approx(expected)
    assert expected in (180.0 + 120.0, 7200.0 + 600.0)


def test_deadline_is_monotonic_not_wall_clock(fake: FakeKrea, clock: FakeClock) -> None:
    """A wall-clock jump does not shorten or lengthen the wait: only monotonic time counts."""

    class JumpingClock(FakeClock):
        def now(self):  # type: ignore[no-untyped-def]
            return super().now().replace(year=2031)

    jumping = JumpingClock()
    fake.on("GET", JOB_PATH, *replies("processing"))
    with make_client(fake, jumping) as krea, pytest.raises(JobTimeoutError) as caught:
        krea.wait(TEST_JOB_ID, timeout=20.0)
    assert caught.value.elapsed == pytest.approx(20.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"poll_interval": 0},
        {"poll_interval": 5, "max_interval": 1},
        {"timeout": -1},
        {"backoff_factor": 0.5},
    ],
    ids=["zero-interval", "max-below-start", "negative-timeout", "shrinking-factor"],
)
def test_nonsense_settings_are_refused(
    fake: FakeKrea, clock: FakeClock, kwargs: dict[str, float]
) -> None:
    """Settings that would spin or never wait are refused before any request."""
    with make_client(fake, clock) as krea, pytest.raises(ValueError):
        krea.wait(TEST_JOB_ID, **kwargs)
    assert fake.requests == []
