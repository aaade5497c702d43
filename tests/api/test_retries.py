"""The retry predicate and the pure Retry-After and backoff helpers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from krea_dagster.api import SubmitRateLimitPolicy
from krea_dagster.api.retries import (
    RequestKind,
    Verdict,
    backoff_delay,
    decide,
    parse_retry_after,
    retry_after_from_body,
)

SAFE, CREATE = RequestKind.SAFE, RequestKind.CREATE
DONE, RETRY, CAPACITY, AMBIGUOUS = (
    Verdict.DONE,
    Verdict.RETRY,
    Verdict.RETRY_CAPACITY,
    Verdict.AMBIGUOUS,
)
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# status, verdict for GET/DELETE, verdict for POST /generate
STATUS_TABLE = [
    (200, DONE, DONE),
    (400, DONE, DONE),
    (401, DONE, DONE),
    (402, DONE, DONE),
    (403, DONE, DONE),
    (404, DONE, DONE),
    (408, RETRY, AMBIGUOUS),
    (409, RETRY, DONE),
    (422, DONE, DONE),
    (429, RETRY, CAPACITY),
    (500, RETRY, AMBIGUOUS),
    (502, RETRY, AMBIGUOUS),
    (503, RETRY, AMBIGUOUS),
    (504, RETRY, AMBIGUOUS),
]

# exception, verdict for GET/DELETE, verdict for POST /generate
EXCEPTION_TABLE = [
    (httpx.ConnectError, RETRY, RETRY),
    (httpx.ConnectTimeout, RETRY, RETRY),
    (httpx.PoolTimeout, RETRY, RETRY),
    (httpx.ReadTimeout, RETRY, AMBIGUOUS),
    (httpx.WriteTimeout, RETRY, AMBIGUOUS),
    (httpx.ReadError, RETRY, AMBIGUOUS),
    (httpx.WriteError, RETRY, AMBIGUOUS),
    (httpx.RemoteProtocolError, RETRY, AMBIGUOUS),
    (httpx.CloseError, RETRY, AMBIGUOUS),
    (httpx.LocalProtocolError, DONE, AMBIGUOUS),
    (httpx.ProxyError, DONE, AMBIGUOUS),
    (httpx.UnsupportedProtocol, DONE, DONE),
]


@pytest.mark.parametrize(
    ("kind", "status", "verdict"),
    [(SAFE, s, safe) for s, safe, _ in STATUS_TABLE]
    + [(CREATE, s, create) for s, _, create in STATUS_TABLE],
    ids=[f"GET/DELETE-{s}-{v.value}" for s, v, _ in STATUS_TABLE]
    + [f"POST-generate-{s}-{v.value}" for s, _, v in STATUS_TABLE],
)
def test_status_verdicts(kind: RequestKind, status: int, verdict: Verdict) -> None:
    """Each status gets its verdict: safe calls retry 408/409/429/5xx, creates never resend 5xx."""
    assert decide(kind, httpx.Response(status)).verdict is verdict


@pytest.mark.parametrize(
    ("kind", "exc_type", "verdict"),
    [(SAFE, e, safe) for e, safe, _ in EXCEPTION_TABLE]
    + [(CREATE, e, create) for e, _, create in EXCEPTION_TABLE],
    ids=[f"GET/DELETE-{e.__name__}-{v.value}" for e, v, _ in EXCEPTION_TABLE]
    + [f"POST-generate-{e.__name__}-{v.value}" for e, _, v in EXCEPTION_TABLE],
)
def test_exception_verdicts(kind: RequestKind, exc_type: type[Exception], verdict: Verdict) -> None:
    """A create is resent only when it never left; anything after the send is ambiguous."""
    assert decide(kind, exc_type("boom")).verdict is verdict


def test_non_transport_exceptions_are_final() -> None:
    """A bug in our own code is not a network blip: never retried."""
    assert decide(SAFE, ValueError("bug")).verdict is DONE
    assert decide(CREATE, KeyError("bug")).verdict is DONE


@pytest.mark.parametrize(
    ("kind", "status", "header", "verdict"),
    [
        (SAFE, 400, "true", RETRY),
        (SAFE, 503, "false", DONE),
        (SAFE, 429, "false", DONE),
        (CREATE, 429, "false", DONE),
        (CREATE, 503, "true", AMBIGUOUS),
        (CREATE, 400, "true", DONE),
    ],
    ids=[
        "safe-400-forced-retry",
        "safe-503-forbidden",
        "safe-429-forbidden",
        "create-429-forbidden",
        "create-503-true-still-ambiguous",
        "create-400-true-still-final",
    ],
)
def test_x_should_retry(kind: RequestKind, status: int, header: str, verdict: Verdict) -> None:
    """x-should-retry is honoured on safe calls; on creates it can only stop retries."""
    response = httpx.Response(status, headers={"x-should-retry": header})
    assert decide(kind, response).verdict is verdict


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": format_datetime(NOW + timedelta(seconds=30), usegmt=True)}, 30.0),
        ({"Retry-After": format_datetime(NOW - timedelta(seconds=30), usegmt=True)}, 0.0),
        ({"Retry-After": "in a minute"}, None),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "3600"}, 3600.0),
        ({}, None),
    ],
    ids=[
        "seconds",
        "fractional-seconds",
        "milliseconds",
        "ms-wins-over-seconds",
        "garbage-ms-falls-back",
        "http-date-ahead",
        "http-date-past",
        "garbage",
        "negative",
        "nan",
        "empty",
        "over-the-ceiling-still-parsed",
        "absent",
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """Retry-After in seconds, HTTP date and milliseconds parse; garbage means 'no hint'."""
    assert parse_retry_after(httpx.Headers(headers), now=NOW) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "busy", "retry_after": 8}, 8.0),
        ({"retry_after": "8"}, None),
        ({"retry_after": -1}, None),
        ({"retry_after": True}, None),
        ("retry_after: 8", None),
        (None, None),
    ],
    ids=["number", "string", "negative", "bool", "text-body", "no-body"],
)
def test_retry_after_from_body(body: object, expected: float | None) -> None:
    """A numeric retry_after in a JSON error body is a wait hint; anything else is not."""
    assert retry_after_from_body(body) == expected


def test_full_jitter_spreads_both_ways_and_respects_the_cap() -> None:
    """Full jitter spreads around the nominal delay (below and above it) and never exceeds the cap."""
    rng = random.Random(1)
    delays = [backoff_delay(2, initial=0.5, maximum=8.0, jitter=1.0, rng=rng) for _ in range(2000)]
    nominal = 2.0  # 0.5 * 2**2
    assert min(delays) >= 0.0
    assert max(delays) <= 8.0
    assert any(d < nominal * 0.5 for d in delays)
    assert any(d > nominal * 1.5 for d in delays)
    capped = [backoff_delay(10, initial=0.5, maximum=8.0, jitter=1.0, rng=rng) for _ in range(200)]
    assert max(capped) <= 8.0


def test_backoff_without_jitter_is_exponential_then_capped() -> None:
    """With jitter 0 the delays are 0.5, 1, 2, 4, 8, 8 seconds."""
    delays = [backoff_delay(n, initial=0.5, maximum=8.0, jitter=0.0) for n in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_submit_429_waits_are_sized_for_a_concurrency_cap() -> None:
    """The default 429 waits start near 10 s and grow to about 60 s, jittered by at most 25 %."""
    policy = SubmitRateLimitPolicy()
    rng = random.Random(3)
    delays = [
        backoff_delay(
            n,
            initial=policy.initial_delay,
            maximum=policy.max_delay,
            multiplier=policy.multiplier,
            jitter=policy.jitter,
            rng=rng,
        )
        for n in range(6)
    ]
    assert 7.5 <= delays[0] <= 12.5
    assert 15.0 <= delays[1] <= 25.0
    assert all(45.0 <= d <= 60.0 for d in delays[3:])
