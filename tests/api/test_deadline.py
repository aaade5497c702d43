"""A caller's deadline (monotonic seconds) bounds poll_many, its GET /jobs paging, gets and cancels."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest

from krea_dagster.api import DeadlineExceededError, SendAttempt, SendDeadlineError

from .support import (
    SAMPLE_JOB_CREATED,
    TEST_MODEL,
    FakeClock,
    FakeKrea,
    make_async_client,
    make_client,
)
from .test_poll_many import seed_jobs


def slow(
    fake: FakeKrea, clock: FakeClock, seconds: float
) -> Callable[[httpx.Request], httpx.Response]:
    """A GET /jobs reply that takes ``seconds`` of the fake clock, then serves the page."""

    def reply(request: httpx.Request) -> httpx.Response:
        clock.advance(seconds)
        return fake._list(request)

    return reply


def read_timeouts(fake: FakeKrea) -> list[float]:
    return [request.extensions["timeout"]["read"] for request in fake.requests]


def test_a_slow_page_ends_poll_many_at_the_deadline_with_the_jobs_seen(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """Pages of 3 s against a 5 s deadline: two pages are read, nothing more is sent, the rest is left out."""
    ids = seed_jobs(fake, 5000)
    fake.on("GET", "/jobs", slow(fake, clock, 3.0))
    with make_client(fake, clock) as krea:
        jobs = krea.poll_many(ids, deadline=clock.monotonic() + 5.0)
    assert fake.count("GET", "/jobs") == 2 and len(fake.requests) == 2
    # Newest first: the two pages hold the 2,000 most recent ids, returned in ``ids`` order.
    assert [job.job_id for job in jobs] == ids[-2000:]
    # The second page was sent with 2 s left: its timeouts were clipped to that.
    assert read_timeouts(fake)[0] > 2.0 and read_timeouts(fake)[1] == pytest.approx(2.0)


def test_per_job_gets_stop_at_the_deadline_too(fake: FakeKrea, clock: FakeClock) -> None:
    """Below the paging threshold each GET /jobs/{id} is clipped, and none is sent after the deadline."""
    ids = seed_jobs(fake, 6)

    def slow_get(request: httpx.Request) -> httpx.Response:
        clock.advance(1.0)
        job_id = request.url.path.removeprefix("/jobs/")
        return httpx.Response(200, json=next(j for j in fake.jobs if j["job_id"] == job_id))

    for job_id in ids:
        fake.on("GET", f"/jobs/{job_id}", slow_get)
    with make_client(fake, clock) as krea:
        jobs = krea.poll_many(ids, deadline=clock.monotonic() + 2.5)
    assert [job.job_id for job in jobs] == ids[:3]
    assert len(fake.requests) == 3
    assert read_timeouts(fake)[2] == pytest.approx(0.5)


def test_a_deadline_already_passed_sends_nothing(fake: FakeKrea, clock: FakeClock) -> None:
    """With no time left poll_many returns an empty list and get_job raises DeadlineExceededError."""
    ids = seed_jobs(fake, 50)
    with make_client(fake, clock) as krea:
        assert krea.poll_many(ids, deadline=clock.monotonic()) == []
        with pytest.raises(DeadlineExceededError, match="before it was sent"):
            krea.get_job(ids[0], deadline=clock.monotonic() - 1)
    assert fake.requests == []


def test_no_retry_starts_when_its_backoff_would_pass_the_deadline(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """A timed-out cancel whose retry wait exceeds the time left raises DeadlineExceededError with the timeout as cause."""
    fake.on("DELETE", "/jobs/j1", httpx.ReadTimeout)
    with make_client(fake, clock) as krea, pytest.raises(DeadlineExceededError) as caught:
        krea.cancel_job("j1", deadline=clock.monotonic() + 0.01)
    assert fake.count("DELETE") == 1
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert "DELETE /jobs/{id}" in str(caught.value)
    assert clock.sleeps == []


def test_without_a_deadline_nothing_changes(fake: FakeKrea, clock: FakeClock) -> None:
    """No deadline: slow pages are all read and every job comes back."""
    ids = seed_jobs(fake, 3000)
    fake.on("GET", "/jobs", slow(fake, clock, 3.0))
    with make_client(fake, clock) as krea:
        jobs = krea.poll_many(ids)
    assert [job.job_id for job in jobs] == ids
    assert fake.count("GET", "/jobs") == 3


def test_the_async_client_stops_at_the_deadline_too(fake: FakeKrea, clock: FakeClock) -> None:
    """AsyncKreaClient.poll_many shares the flow: the same partial result at the same deadline."""
    ids = seed_jobs(fake, 5000)
    fake.on("GET", "/jobs", slow(fake, clock, 3.0))

    async def main() -> list[str]:
        async with make_async_client(fake, clock) as krea:
            jobs = await krea.poll_many(ids, deadline=clock.monotonic() + 5.0)
        return [job.job_id for job in jobs]

    assert asyncio.run(main()) == ids[-2000:]
    assert fake.count("GET", "/jobs") == 2


def test_created_before_starts_the_pages_above_the_newest_wanted_job(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """Polling 2,000 jobs from just above the newest of them skips the 3,000 created later: two pages, not five."""
    wanted = seed_jobs(fake, 2000, prefix="old")
    seed_jobs(fake, 3000, prefix="new", start_ms=600_000)  # ten minutes later
    newest = max(
        datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
        for job in fake.jobs
        if job["job_id"].startswith("old")
    )
    with make_client(fake, clock) as krea:
        jobs = krea.poll_many(wanted, created_before=newest)
    assert [job.job_id for job in jobs] == wanted
    assert fake.count("GET", "/jobs") == 2 and len(fake.requests) == 2
    assert "cursor" in fake.requests[0].url.params


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_post_whose_write_deadline_passed_is_never_handed_to_the_transport(
    fake: FakeKrea, clock: FakeClock, flavour: str
) -> None:
    """When ``on_send``'s write deadline has passed by the time the request is built (the
    caller was paused after recording its send), the client raises SendDeadlineError before
    the transport sees anything, whatever transport it was given (httpcore's write hook is
    not every transport's)."""
    fake.on("POST", f"/generate/image/{TEST_MODEL}", httpx.Response(200, json=SAMPLE_JOB_CREATED))

    def on_send(attempt: SendAttempt) -> float:
        clock.advance(30.0)  # the sender froze right after recording the send
        return clock.monotonic() - 29.0

    if flavour == "sync":
        with make_client(fake, clock) as krea, pytest.raises(SendDeadlineError, match="handed"):
            krea.submit(TEST_MODEL, {"prompt": "a lamp"}, on_send=on_send)
    else:

        async def send() -> None:
            async with make_async_client(fake, clock) as krea:
                await krea.submit(TEST_MODEL, {"prompt": "a lamp"}, on_send=on_send)

        with pytest.raises(SendDeadlineError, match="handed"):
            asyncio.run(send())
    assert fake.requests == []
