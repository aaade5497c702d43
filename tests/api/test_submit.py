"""submit(): validation before any paid call, and never a blind re-POST."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from krea_dagster.api import (
    AmbiguousSubmitError,
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    JobStatus,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    SubmitRateLimitPolicy,
    UnknownModelError,
    UnprocessableEntityError,
)
from krea_dagster.api.config import DEFAULT_MAX_RETRIES

from .support import (
    SAMPLE_JOB_CREATED,
    TEST_MODEL,
    TEST_NOW,
    TEST_RATE_LIMIT,
    FakeClock,
    FakeKrea,
    make_client,
)

GENERATE = f"/generate/image/{TEST_MODEL}"
CREATED = httpx.Response(200, json=SAMPLE_JOB_CREATED)
PROMPT = {"prompt": "a lighthouse at dusk"}

AMBIGUOUS_FAILURES: list[tuple[str, Any]] = [
    ("ReadTimeout", httpx.ReadTimeout),
    ("WriteTimeout", httpx.WriteTimeout),
    ("ReadError", httpx.ReadError),
    ("WriteError", httpx.WriteError),
    ("RemoteProtocolError", httpx.RemoteProtocolError),
    ("500", httpx.Response(500, json={"error": "internal"})),
    ("502", httpx.Response(502, text="<html>bad gateway</html>")),
    ("503", httpx.Response(503)),
    ("504", httpx.Response(504)),
    ("408", httpx.Response(408)),
    ("503-x-should-retry-true", httpx.Response(503, headers={"x-should-retry": "true"})),
    ("200-unreadable", httpx.Response(200, text="<html>ok</html>")),
]


def posts(fake: FakeKrea) -> int:
    return fake.count("POST", GENERATE)


def test_submit_returns_the_created_job(fake: FakeKrea, clock: FakeClock) -> None:
    """A valid request is POSTed once with its JSON body and the created job is returned."""
    fake.on("POST", GENERATE, CREATED)
    with make_client(fake, clock) as krea:
        job = krea.submit(TEST_MODEL, PROMPT)
        assert krea.stats.jobs_submitted == 1
    assert job.status is JobStatus.QUEUED
    assert job.job_id == SAMPLE_JOB_CREATED["job_id"]
    assert json.loads(fake.requests[0].content) == PROMPT
    assert fake.requests[0].headers["Content-Type"] == "application/json"


def test_invalid_request_never_reaches_krea(fake: FakeKrea, clock: FakeClock) -> None:
    """Every problem is listed and nothing is sent (an invalid request could be billed or fail)."""
    with make_client(fake, clock) as krea, pytest.raises(RequestValidationError) as caught:
        krea.submit(TEST_MODEL, {"prompt": "", "quality": "ultra", "seed": 3})
    assert fake.requests == []
    assert {(p.field, p.rule) for p in caught.value.problems} == {
        ("prompt", "minLength"),
        ("quality", "enum"),
        ("seed", "additionalProperties"),
    }
    assert caught.value.submission_id is not None


def test_unknown_model_never_reaches_krea(fake: FakeKrea, clock: FakeClock) -> None:
    """An unknown model is refused locally with close matches."""
    with make_client(fake, clock) as krea, pytest.raises(UnknownModelError, match="gpt-image-2"):
        krea.submit("openai/gpt-image-22", PROMPT)
    assert fake.requests == []


def test_validate_false_sends_models_newer_than_the_catalog(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """validate=False posts to the given path unchecked (for models the catalog lacks)."""
    fake.on("POST", "/generate/image/acme/new-model", CREATED)
    with make_client(fake, clock) as krea:
        krea.submit("acme/new-model", {"anything": 1}, validate=False)
    assert fake.count("POST", "/generate/image/acme/new-model") == 1


@pytest.mark.parametrize(
    "failure", [row[1] for row in AMBIGUOUS_FAILURES], ids=[row[0] for row in AMBIGUOUS_FAILURES]
)
def test_ambiguous_failure_makes_exactly_one_post(
    fake: FakeKrea, clock: FakeClock, failure: Any
) -> None:
    """A failure after the request may have reached Krea raises AmbiguousSubmitError, never resends."""
    fake.on("POST", GENERATE, failure, CREATED)
    with make_client(fake, clock) as krea, pytest.raises(AmbiguousSubmitError) as caught:
        krea.submit(TEST_MODEL, PROMPT)
    assert posts(fake) == 1
    assert clock.sleeps == []
    error = caught.value
    assert error.model == TEST_MODEL
    assert error.kind == "image"
    assert error.submitted_at == TEST_NOW
    assert uuid.UUID(error.submission_id).version == 4
    assert krea.stats.ambiguous_submits == 1


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout],
    ids=["ConnectError", "ConnectTimeout", "PoolTimeout"],
)
def test_never_sent_failures_are_resent(fake: FakeKrea, clock: FakeClock, failure: Any) -> None:
    """A request that provably never left (connect/pool failures) is safely sent again."""
    fake.on("POST", GENERATE, failure, failure, CREATED)
    with make_client(fake, clock) as krea:
        job = krea.submit(TEST_MODEL, PROMPT)
    assert job.job_id == SAMPLE_JOB_CREATED["job_id"]
    assert posts(fake) == 3
    assert len(clock.sleeps) == 2


def test_never_sent_failures_give_up_without_ambiguity(fake: FakeKrea, clock: FakeClock) -> None:
    """When connecting keeps failing the error is a plain connection error: nothing was created."""
    fake.on("POST", GENERATE, httpx.ConnectError)
    with make_client(fake, clock) as krea, pytest.raises(APIConnectionError) as caught:
        krea.submit(TEST_MODEL, PROMPT)
    assert not isinstance(caught.value, AmbiguousSubmitError)
    assert posts(fake) == DEFAULT_MAX_RETRIES + 1
    assert caught.value.submission_id is not None


def test_connect_error_then_ambiguous_failure_stops(fake: FakeKrea, clock: FakeClock) -> None:
    """After a safe resend, an ambiguous failure still stops at once (two POSTs in all)."""
    fake.on("POST", GENERATE, httpx.ConnectError, httpx.ReadTimeout, CREATED)
    with make_client(fake, clock) as krea, pytest.raises(AmbiguousSubmitError):
        krea.submit(TEST_MODEL, PROMPT)
    assert posts(fake) == 2


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, APIStatusError),
        (422, UnprocessableEntityError),
    ],
    ids=["400", "401", "402", "403", "404", "409", "422"],
)
def test_refusals_are_never_retried(
    fake: FakeKrea, clock: FakeClock, status: int, cls: type[Exception]
) -> None:
    """400/401/402/403/404/409/422 on submit raise their class after exactly one POST."""
    fake.on("POST", GENERATE, httpx.Response(status, json={"error": "refused"}), CREATED)
    with make_client(fake, clock) as krea, pytest.raises(cls) as caught:
        krea.submit(TEST_MODEL, PROMPT)
    assert type(caught.value) is cls
    assert posts(fake) == 1


def test_429_is_retried_with_concurrency_sized_waits(fake: FakeKrea, clock: FakeClock) -> None:
    """A 429 on submit waits ~10 s, then ~20 s (jittered) and sends again."""
    limited = httpx.Response(429, json={"error": "maximum number of concurrent jobs"})
    fake.on("POST", GENERATE, limited, limited, CREATED)
    with make_client(fake, clock) as krea:
        job = krea.submit(TEST_MODEL, PROMPT)
        assert krea.stats.rate_limited_waits == 2
    assert job.job_id == SAMPLE_JOB_CREATED["job_id"]
    assert posts(fake) == 3
    assert 7.5 <= clock.sleeps[0] <= 12.5
    assert 15.0 <= clock.sleeps[1] <= 25.0


def test_429_until_the_budget_is_spent_raises_rate_limit_error(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """Persistent 429s end in RateLimitError with the attempt count, within the time budget."""
    fake.on("POST", GENERATE, httpx.Response(429, json={"error": "concurrent jobs"}))
    with make_client(fake, clock) as krea, pytest.raises(RateLimitError) as caught:
        krea.submit(TEST_MODEL, PROMPT)
    assert sum(clock.sleeps) <= TEST_RATE_LIMIT.budget
    assert caught.value.attempts == posts(fake) >= 3
    assert f"after {posts(fake)} attempts" in str(caught.value)
    assert "concurrency cap" in str(caught.value)


def test_429_budget_is_configurable(fake: FakeKrea, clock: FakeClock) -> None:
    """A caller can shrink the 429 policy (here: no waiting at all)."""
    fake.on("POST", GENERATE, httpx.Response(429))
    policy = SubmitRateLimitPolicy(initial_delay=1.0, max_delay=1.0, budget=0.0)
    with make_client(fake, clock, submit_rate_limit=policy) as krea, pytest.raises(RateLimitError):
        krea.submit(TEST_MODEL, PROMPT)
    assert posts(fake) == 1


@pytest.mark.parametrize(
    "limited",
    [
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(429, json={"error": "busy", "retry_after": 3}),
    ],
    ids=["Retry-After-header", "retry_after-in-body"],
)
def test_429_honours_the_servers_wait(
    fake: FakeKrea, clock: FakeClock, limited: httpx.Response
) -> None:
    """A wait hint from Krea (header, or retry_after in the body) replaces the backoff."""
    fake.on("POST", GENERATE, limited, CREATED)
    with make_client(fake, clock) as krea:
        krea.submit(TEST_MODEL, PROMPT)
    assert clock.sleeps == [3.0]


def test_429_with_x_should_retry_false_is_final(fake: FakeKrea, clock: FakeClock) -> None:
    """x-should-retry: false turns a 429 into an immediate RateLimitError."""
    fake.on("POST", GENERATE, httpx.Response(429, headers={"x-should-retry": "false"}), CREATED)
    with make_client(fake, clock) as krea, pytest.raises(RateLimitError):
        krea.submit(TEST_MODEL, PROMPT)
    assert posts(fake) == 1


def test_each_submit_mints_a_new_submission_id(fake: FakeKrea, clock: FakeClock) -> None:
    """Every call mints a fresh uuid4 submission id, attached to its errors."""
    fake.on("POST", GENERATE, httpx.ReadTimeout)
    ids = set()
    with make_client(fake, clock) as krea:
        for _ in range(3):
            with pytest.raises(AmbiguousSubmitError) as caught:
                krea.submit(TEST_MODEL, PROMPT)
            ids.add(caught.value.submission_id)
    assert len(ids) == 3


def test_submission_id_is_logged_and_webhook_url_is_not(
    fake: FakeKrea, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The X-Webhook-URL header is sent but never logged; the submission id is."""
    webhook = "https://hooks.example.com/krea?token=hook-secret-123"
    fake.on("POST", GENERATE, CREATED)
    with caplog.at_level(logging.DEBUG, logger="krea_dagster"), make_client(fake, clock) as krea:
        krea.submit(TEST_MODEL, PROMPT, webhook_url=webhook)
    assert fake.requests[0].headers["X-Webhook-URL"] == webhook
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "hook-secret-123" not in text
    assert "hooks.example.com" not in text
    assert any(getattr(record, "krea_submission_id", None) for record in caplog.records)
    assert "a lighthouse" not in text  # bodies are never logged


def test_deprecated_alias_is_sent_under_its_new_name_before_the_sunset(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """Before 2026-06-19 a camelCase alias is rewritten; the body Krea gets uses the new name."""
    fake.on("POST", GENERATE, CREATED)
    with make_client(fake, clock) as krea:
        krea.submit(TEST_MODEL, {"prompt": "a", "imageUrls": ["https://example.com/a.png"]})
    assert json.loads(fake.requests[0].content) == {
        "prompt": "a",
        "image_urls": ["https://example.com/a.png"],
    }


def test_deprecated_alias_is_refused_after_the_sunset(fake: FakeKrea) -> None:
    """After the sunset the alias is a validation problem and nothing is sent."""
    late = FakeClock(start=datetime(2026, 11, 24, tzinfo=UTC))
    with make_client(fake, late) as krea, pytest.raises(RequestValidationError, match="image_urls"):
        krea.submit(TEST_MODEL, {"prompt": "a", "imageUrls": []})
    assert fake.requests == []


def test_other_kinds_use_their_path(fake: FakeKrea, clock: FakeClock) -> None:
    """kind='video' validates against the video catalog and posts to /generate/video/..."""
    fake.on("POST", "/generate/video/kling/kling-2.1", CREATED)
    with make_client(fake, clock) as krea:
        krea.submit("kling/kling-2.1", {"prompt": "waves", "duration": 10}, kind="video")
    assert fake.count("POST", "/generate/video/kling/kling-2.1") == 1
