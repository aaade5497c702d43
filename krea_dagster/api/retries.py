"""What is retried, and how long to wait: one predicate and pure helpers.

``decide()`` is the only place that looks at an outcome (a response or a transport exception)
and says what happens next. The request loops in ``_core`` only carry out its verdict.

Two kinds of request, because Krea has no idempotency key and bills every completed job:

- ``SAFE`` (GET, DELETE, downloads): sending twice cannot create a second paid job, so 408, 409,
  429, 5xx and transport failures are retried with exponential backoff (Stainless rules).
- ``CREATE`` (POST /generate/...): resent only when Krea provably never saw the request
  (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``: no byte left this machine) or refused
  it with 429 (the concurrency cap: nothing was created). A failure after the request may have
  arrived (read/write errors and timeouts, a dropped connection, 5xx, 408) is *ambiguous*: a
  job may exist, so the submission stops and the caller reconciles through ``GET /jobs``.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import httpx

__all__ = [
    "RequestKind",
    "RetryDecision",
    "Verdict",
    "backoff_delay",
    "decide",
    "parse_retry_after",
    "retry_after_from_body",
]


class RequestKind(Enum):
    """Whether repeating a request could create (and bill) a second job."""

    SAFE = "safe"
    CREATE = "create"


class Verdict(Enum):
    """What to do with an outcome."""

    #: Final: a success, or an error that retrying cannot fix.
    DONE = "done"
    #: Send again after the standard backoff (or Retry-After).
    RETRY = "retry"
    #: 429 on a create: wait for the concurrency cap to free a slot, within a time budget.
    RETRY_CAPACITY = "retry_capacity"
    #: A create that may have reached Krea: never resend; the caller must reconcile.
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class RetryDecision:
    """A verdict and the reason, written to the log line of the branch taken."""

    verdict: Verdict
    reason: str


# Transport failures where the request provably never reached Krea: the connection was never
# established (or never taken from the pool), so not one byte of the body was sent.
_NEVER_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Failures that happen before any network activity and that retrying cannot fix.
_NEVER_SENT_FINAL: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol,)
# Transient transport failures worth repeating on a safe request.
_TRANSIENT: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def decide(kind: RequestKind, outcome: httpx.Response | BaseException) -> RetryDecision:
    """The retry predicate: what to do after ``outcome`` of a ``kind`` request."""
    if isinstance(outcome, BaseException):
        return _decide_exception(kind, outcome)
    return _decide_response(kind, outcome)


def _decide_exception(kind: RequestKind, exc: BaseException) -> RetryDecision:
    name = type(exc).__name__
    if isinstance(exc, _NEVER_SENT_FINAL) or not isinstance(exc, httpx.TransportError):
        return RetryDecision(Verdict.DONE, f"{name} cannot be fixed by retrying")
    if kind is RequestKind.CREATE:
        if isinstance(exc, _NEVER_SENT):
            return RetryDecision(Verdict.RETRY, f"{name}: the request never reached Krea")
        # Everything else (ReadTimeout, WriteTimeout, ReadError, WriteError,
        # RemoteProtocolError, and any transport error we do not know) may have happened after
        # Krea read the request: default to "a job may exist".
        return RetryDecision(Verdict.AMBIGUOUS, f"{name} after the request may have reached Krea")
    if isinstance(exc, _TRANSIENT):
        return RetryDecision(Verdict.RETRY, f"transient {name}")
    return RetryDecision(Verdict.DONE, f"{name} is not transient")


def _decide_response(kind: RequestKind, response: httpx.Response) -> RetryDecision:
    status = response.status_code
    if status < 400:
        return RetryDecision(Verdict.DONE, f"status {status}")
    should_retry = response.headers.get("x-should-retry", "").strip().lower()
    if kind is RequestKind.CREATE:
        # x-should-retry: true is NOT trusted on a create: a server hint cannot make a job that
        # may exist safe to pay for twice. "false" is honoured (it only ever stops retries).
        if status == 429:
            if should_retry == "false":
                return RetryDecision(Verdict.DONE, "429 with x-should-retry: false")
            return RetryDecision(
                Verdict.RETRY_CAPACITY, "429: the account is at its concurrency cap"
            )
        if status == 408 or status >= 500:
            return RetryDecision(
                Verdict.AMBIGUOUS, f"status {status}: Krea may have created the job"
            )
        return RetryDecision(Verdict.DONE, f"status {status} is final for a create")
    if should_retry == "true":
        return RetryDecision(Verdict.RETRY, f"status {status} with x-should-retry: true")
    if should_retry == "false":
        return RetryDecision(Verdict.DONE, f"status {status} with x-should-retry: false")
    if status in _RETRYABLE_STATUSES or status >= 500:
        return RetryDecision(Verdict.RETRY, f"status {status} is transient")
    return RetryDecision(Verdict.DONE, f"status {status} is final")


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, then ``Retry-After`` (seconds or HTTP date).

    Returns None when no header is present or its value is garbage (negative, not a number,
    not a date), so the caller falls back to its own backoff. A date in the past is 0.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    milliseconds = _non_negative(lowered.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _non_negative(raw)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


def retry_after_from_body(body: object) -> float | None:
    """A ``retry_after`` number in a JSON error body (Replicate-style APIs put it there)."""
    if isinstance(body, Mapping):
        value = body.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value) if math.isfinite(value) and value >= 0 else None
    return None


def backoff_delay(
    retries_taken: int,
    *,
    initial: float,
    maximum: float,
    jitter: float,
    multiplier: float = 2.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry number ``retries_taken + 1``.

    The nominal delay ``d = min(maximum, initial * multiplier**retries_taken)`` is spread
    uniformly over ``[d*(1-jitter), d*(1+jitter)]`` and capped at ``maximum``: jitter 1.0 is
    full jitter (anywhere from 0 to 2d), spread both ways rather than only shortened.
    """
    nominal = min(maximum, initial * multiplier ** max(0, retries_taken))
    spread = max(0.0, min(1.0, jitter))
    low, high = nominal * (1 - spread), nominal * (1 + spread)
    return min(maximum, (rng or random).uniform(low, high))


def _non_negative(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
