"""poll_many(): the state of many jobs for about one request per thousand."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from krea_dagster.api import NotFoundError
from krea_dagster.api.config import POLL_MANY_DIRECT_THRESHOLD, POLL_MANY_PAGE_SIZE

from .support import TEST_NOW, FakeClock, FakeKrea, make_client, make_job


def seed_jobs(fake: FakeKrea, count: int, *, prefix: str = "job", start_ms: int = 0) -> list[str]:
    """``count`` jobs created one millisecond apart (Krea's cursor is a timestamp)."""
    ids = []
    for n in range(count):
        job_id = f"{prefix}-{n:05d}"
        created = TEST_NOW + timedelta(milliseconds=start_ms + n)
        fake.jobs.append(make_job(job_id, status="processing", created_at=created))
        ids.append(job_id)
    return ids


def test_few_pending_jobs_are_fetched_one_by_one(fake: FakeKrea, clock: FakeClock) -> None:
    """Five pending ids cost five GET /jobs/{id} and no list request."""
    ids = seed_jobs(fake, 5)
    with make_client(fake, clock) as krea:
        jobs = krea.poll_many(ids)
    assert [job.job_id for job in jobs] == ids
    assert fake.count("GET", "/jobs") == 0
    assert len(fake.requests) == 5


def test_many_pending_jobs_cost_about_one_request_per_thousand(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """5,000 pending ids cost five GET /jobs pages of 1,000 and no per-job GET."""
    ids = seed_jobs(fake, 5000)
    with make_client(fake, clock) as krea:
        jobs = krea.poll_many(ids)
    assert [job.job_id for job in jobs] == ids
    assert fake.count("GET", "/jobs") == 5
    assert len(fake.requests) == 5
    assert {r.url.params["limit"] for r in fake.requests} == {str(POLL_MANY_PAGE_SIZE)}


def test_ids_missing_from_the_pages_fall_back_to_get(fake: FakeKrea, clock: FakeClock) -> None:
    """Ids the list pages never showed are fetched with GET /jobs/{id}."""
    ids = seed_jobs(fake, 2000)
    hidden = [make_job(f"hidden-{n}", status="completed") for n in range(3)]
    pending = [*ids, *(job["job_id"] for job in hidden)]
    for job in hidden:  # reachable by id, not in the list (e.g. lost at a same-timestamp page edge)
        fake.on("GET", f"/jobs/{job['job_id']}", httpx.Response(200, json=job))
    with make_client(fake, clock) as krea:
        jobs = krea.poll_many(pending)
    assert [job.job_id for job in jobs] == pending
    assert fake.count("GET", "/jobs") == 2
    assert sorted(r.url.path for r in fake.requests if r.url.path != "/jobs") == [
        "/jobs/hidden-0",
        "/jobs/hidden-1",
        "/jobs/hidden-2",
    ]


def test_paging_stops_at_created_after(fake: FakeKrea, clock: FakeClock) -> None:
    """Pages stop once they reach jobs older than created_after minus the clock skew."""
    seed_jobs(fake, 5000, prefix="old", start_ms=-3_600_000)  # an hour older, never pending
    ids = seed_jobs(fake, 1500)
    with make_client(fake, clock) as krea:
        jobs = krea.poll_many(ids, created_after=TEST_NOW)
    assert [job.job_id for job in jobs] == ids
    assert fake.count("GET", "/jobs") == 2


def test_paging_gives_way_to_gets_when_they_are_cheaper(fake: FakeKrea, clock: FakeClock) -> None:
    """When pages stop finding pending ids, the client stops paging and GETs the rest."""
    seed_jobs(fake, 12_000, prefix="other")  # unrelated jobs fill every page
    pending = [f"gone-{n}" for n in range(POLL_MANY_DIRECT_THRESHOLD + 5)]
    for job_id in pending:
        fake.on("GET", f"/jobs/{job_id}", httpx.Response(200, json=make_job(job_id)))
    with make_client(fake, clock) as krea:
        krea.poll_many(pending)
    pages = fake.count("GET", "/jobs")
    assert pages <= len(pending)
    assert len(fake.requests) <= 2 * len(pending)


def test_duplicate_ids_are_fetched_once_and_returned_in_order(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """Repeated ids cost one request each and every position gets its job."""
    ids = seed_jobs(fake, 2)
    with make_client(fake, clock) as krea:
        jobs = krea.poll_many([ids[1], ids[0], ids[1]])
    assert [job.job_id for job in jobs] == [ids[1], ids[0], ids[1]]
    assert len(fake.requests) == 2


def test_an_unknown_id_raises_not_found(fake: FakeKrea, clock: FakeClock) -> None:
    """An id that neither the pages nor GET /jobs/{id} know is a NotFoundError."""
    with make_client(fake, clock) as krea, pytest.raises(NotFoundError):
        krea.poll_many(["nope"])
