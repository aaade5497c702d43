"""Test support for the client tests: constants, sample payloads, a fake clock and a fake Krea.

Nothing here touches the network or really sleeps: clients get ``httpx.MockTransport`` over a
``FakeKrea`` and a ``FakeClock`` whose ``sleep`` only advances time.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from PIL import Image

from krea_dagster.api import (
    AsyncKreaClient,
    DownloadSettings,
    KreaClient,
    SubmitRateLimitPolicy,
)

TEST_API_KEY = "0f8fad5b-d9cb-469f-a165-70867728950e:sk_live_Zx9TopSecretValue42"
TEST_BASE_URL = "https://api.krea.test"
TEST_CDN_URL = "https://cdn.krea-results.test"
#: Before the 2026-06-19 alias sunset, so deprecated camelCase names are still accepted.
TEST_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TEST_MODEL = "openai/gpt-image-2"
TEST_JOB_ID = "4d0e5f97-9721-4422-b88c-73a9032d7de1"  # the example id of GET /jobs/{id}

#: A small 429 budget so "429 forever" ends after a handful of fake waits.
TEST_RATE_LIMIT = SubmitRateLimitPolicy(initial_delay=10.0, max_delay=60.0, budget=120.0)

# Shapes from krea-openapi.json: POST /generate/... 200 (JobCreated: completed_at and result
# are null) and GET /jobs/{id} 200 (Job, with the x-change-note error object).
SAMPLE_JOB_CREATED: dict[str, Any] = {
    "job_id": TEST_JOB_ID,
    "status": "queued",
    "created_at": "2026-06-01T12:00:00.000Z",
    "completed_at": None,
    "result": None,
}
SAMPLE_JOB_COMPLETED: dict[str, Any] = {
    "job_id": TEST_JOB_ID,
    "status": "completed",
    "created_at": "2026-06-01T12:00:00.000Z",
    "completed_at": "2026-06-01T12:00:41.512Z",
    "result": {"urls": [f"{TEST_CDN_URL}/results/{TEST_JOB_ID}.png"]},
}
SAMPLE_JOB_FAILED: dict[str, Any] = {
    "job_id": TEST_JOB_ID,
    "status": "failed",
    "created_at": "2026-06-01T12:00:00.000Z",
    "completed_at": "2026-06-01T12:00:09.000Z",
    "error": {"code": "safety_filter", "message": "The prompt was flagged by moderation"},
}


def make_job(
    job_id: str = TEST_JOB_ID,
    status: str = "queued",
    created_at: datetime = TEST_NOW,
    **overrides: Any,
) -> dict[str, Any]:
    """A job body varying the fields a test cares about."""
    body: dict[str, Any] = {
        "job_id": job_id,
        "status": status,
        "created_at": created_at.isoformat().replace("+00:00", "Z"),
    }
    if status == "completed":
        body["completed_at"] = (created_at + timedelta(seconds=30)).isoformat()
        body["result"] = {"urls": [f"{TEST_CDN_URL}/results/{job_id}.png"]}
    body.update(overrides)
    return body


def png_bytes(width: int = 64, height: int = 48, fmt: str = "PNG") -> bytes:
    """A real image made with Pillow."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


class FakeClock:
    """Monotonic and wall time that only move when the client sleeps (or a test advances them)."""

    def __init__(self, start: datetime = TEST_NOW) -> None:
        self.start = start
        self.elapsed = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return 1_000.0 + self.elapsed

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


Reply = httpx.Response | Exception | type[Exception] | Callable[[httpx.Request], httpx.Response]


class FakeKrea:
    """Routes ``(method, path)`` to scripted replies; serves ``GET /jobs`` pages from ``jobs``.

    A script is a list of replies used in order, the last one repeating: an ``httpx.Response``,
    an exception (class or instance) to raise as the transport would, or a callable.
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.requests: list[httpx.Request] = []
        #: Jobs for the default GET /jobs and GET /jobs/{id} routes, any order.
        self.jobs: list[dict[str, Any]] = []

    def on(self, method: str, path: str, *replies: Reply) -> FakeKrea:
        self.routes[(method, path)] = list(replies)
        return self

    def count(self, method: str, path: str | None = None) -> int:
        return sum(
            1
            for request in self.requests
            if request.method == method and (path is None or request.url.path == path)
        )

    def paths(self) -> list[str]:
        return [f"{request.method} {request.url.path}" for request in self.requests]

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        script = self.routes.get((request.method, request.url.path))
        if script:
            reply = script.pop(0) if len(script) > 1 else script[0]
            return self._play(reply, request)
        if request.method == "GET" and request.url.path == "/jobs":
            return self._list(request)
        if request.method == "GET" and request.url.path.startswith("/jobs/"):
            job_id = request.url.path.removeprefix("/jobs/")
            for job in self.jobs:
                if job["job_id"] == job_id:
                    return httpx.Response(200, json=job)
        return httpx.Response(404, json={"error": "Not found"})

    @staticmethod
    def _play(reply: Reply, request: httpx.Request) -> httpx.Response:
        if isinstance(reply, httpx.Response):
            return reply
        if isinstance(reply, type) and issubclass(reply, Exception):
            if issubclass(reply, httpx.RequestError):
                raise reply(f"simulated {reply.__name__}", request=request)
            raise reply(f"simulated {reply.__name__}")
        if isinstance(reply, Exception):
            raise reply
        return reply(request)

    def _list(self, request: httpx.Request) -> httpx.Response:
        """Krea's paging: newest first, ``cursor`` = jobs created strictly before it."""
        limit = int(request.url.params.get("limit", 100))
        cursor = request.url.params.get("cursor")
        ordered = sorted(self.jobs, key=lambda job: _when(job["created_at"]), reverse=True)
        if cursor:
            ordered = [job for job in ordered if _when(job["created_at"]) < _when(cursor)]
        page = ordered[:limit]
        more = len(ordered) > limit
        return httpx.Response(
            200,
            json={"items": page, "next_cursor": page[-1]["created_at"] if more else None},
        )


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def make_client(fake: FakeKrea, clock: FakeClock, **overrides: Any) -> KreaClient:
    """A sync client on the fake: fake clock and sleep, seeded jitter, small 429 budget."""
    options: dict[str, Any] = {
        "base_url": TEST_BASE_URL,
        "transport": httpx.MockTransport(fake.handler),
        "clock": clock,
        "sleep": clock.sleep,
        "rng": random.Random(7),
        "submit_rate_limit": TEST_RATE_LIMIT,
        "download_settings": DownloadSettings(chunk_size=64 * 1024),
    }
    options.update(overrides)
    return KreaClient(TEST_API_KEY, **options)


def make_async_client(fake: FakeKrea, clock: FakeClock, **overrides: Any) -> AsyncKreaClient:
    """The async twin of ``make_client``."""
    options: dict[str, Any] = {
        "base_url": TEST_BASE_URL,
        "transport": httpx.MockTransport(fake.handler),
        "clock": clock,
        "sleep": clock.async_sleep,
        "rng": random.Random(7),
        "submit_rate_limit": TEST_RATE_LIMIT,
        "download_settings": DownloadSettings(chunk_size=64 * 1024),
    }
    options.update(overrides)
    return AsyncKreaClient(TEST_API_KEY, **options)
