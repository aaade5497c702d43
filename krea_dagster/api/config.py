"""Client settings: explicit timeouts, retry and rate-limit policies, download limits, clocks.

Every number the client acts on is a named ``DEFAULT_*`` constant here, so a reader can find
why the client waited, gave up or retried without reading the request loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import httpx

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DOWNLOAD_CHUNK_SIZE",
    "DEFAULT_DOWNLOAD_READ_TIMEOUT",
    "DEFAULT_EXTERNAL_WAIT_TIMEOUT",
    "DEFAULT_HOSTED_WAIT_TIMEOUT",
    "DEFAULT_INITIAL_BACKOFF",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_MAX_POLL_INTERVAL",
    "DEFAULT_MAX_REDIRECTS",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_POLL_BACKOFF_FACTOR",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_POOL_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_SUBMIT_429_BUDGET",
    "DEFAULT_SUBMIT_429_INITIAL_DELAY",
    "DEFAULT_SUBMIT_429_MAX_DELAY",
    "DEFAULT_TIMEOUTS",
    "DEFAULT_WRITE_TIMEOUT",
    "EXTERNAL_JOB_LIMIT",
    "KREA_HOSTED_JOB_LIMIT",
    "MAX_ANSWER_BYTES",
    "MAX_TEXT_BODY_CHARS",
    "POLL_MANY_DIRECT_THRESHOLD",
    "POLL_MANY_PAGE_SIZE",
    "RETRY_COUNT_HEADER",
    "ZDR_HEADER",
    "Clock",
    "DownloadSettings",
    "RetryPolicy",
    "SubmitRateLimitPolicy",
    "SystemClock",
    "Timeouts",
]

DEFAULT_BASE_URL = "https://api.krea.ai"
API_KEY_ENV = "KREA_API_KEY"
BASE_URL_ENV = "KREA_BASE_URL"

# JSON calls: Krea answers every call at once (generation is asynchronous), so 30 s of silence
# means something is wrong. Connect is short so a dead host fails fast; pool covers waiting for
# a free connection when many polls share the client.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_WRITE_TIMEOUT = 30.0
DEFAULT_POOL_TIMEOUT = 10.0
# Downloads: the longest silence tolerated between two chunks of a result file (CDNs can stall).
DEFAULT_DOWNLOAD_READ_TIMEOUT = 60.0

# Krea's JSON answers are small (a page of 1,000 jobs is about 1 MB): a body larger than this
# is not one of them, and is not read further. An error body that is not JSON (a gateway's
# page) is kept to this many characters, as evidence and for its first words.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
MAX_TEXT_BODY_CHARS = 64 * 1024

# Safe calls (GET, DELETE): Stainless-style exponential backoff with jitter.
DEFAULT_MAX_RETRIES = 3
DEFAULT_INITIAL_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 8.0
# A Retry-After up to this many seconds is honoured; a longer one ends the call with a typed
# error instead of retrying early (retrying early is what gets clients banned).
DEFAULT_MAX_RETRY_AFTER = 60.0

# 429 on POST /generate means "the account is at its concurrency cap": jobs take tens of seconds,
# so the waits are sized for that (Krea's own skills back off 10-30 s), inside a total budget.
DEFAULT_SUBMIT_429_INITIAL_DELAY = 10.0
DEFAULT_SUBMIT_429_MAX_DELAY = 60.0
DEFAULT_SUBMIT_429_BUDGET = 300.0

# wait(): start fast for quick image models, back off to spare the API on long jobs.
DEFAULT_POLL_INTERVAL = 1.5
DEFAULT_MAX_POLL_INTERVAL = 10.0
DEFAULT_POLL_BACKOFF_FACTOR = 1.5
# Krea fails jobs automatically after these limits (job-lifecycle docs) ...
KREA_HOSTED_JOB_LIMIT = 180.0
EXTERNAL_JOB_LIMIT = 7200.0
# ... so a wait that outlives them by a margin can only mean a stuck job or a lost poll.
DEFAULT_HOSTED_WAIT_TIMEOUT = KREA_HOSTED_JOB_LIMIT + 120.0
DEFAULT_EXTERNAL_WAIT_TIMEOUT = EXTERNAL_JOB_LIMIT + 600.0

# How far our clock and Krea's may disagree when comparing created_at with local times.
DEFAULT_CLOCK_SKEW = 30.0

# poll_many(): up to this many pending ids, GET /jobs/{id} each; more, page GET /jobs (up to
# POLL_MANY_PAGE_SIZE jobs a request) and GET only the ids the pages did not show.
POLL_MANY_DIRECT_THRESHOLD = 10
POLL_MANY_PAGE_SIZE = 1000

# Downloads: a 8192x8192 RGBA PNG is about 256 MiB at worst; bigger is not an image result.
DEFAULT_MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024
# Large chunks keep per-file CPU low (fewer Python-level iterations and hash updates).
DEFAULT_DOWNLOAD_CHUNK_SIZE = 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5

# Sized for many concurrent polls from one process (sensors, thread pools).
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

#: Sent on every attempt (0 on the first) so server logs can tell retries from new calls.
RETRY_COUNT_HEADER = "X-Retry-Count"
#: Krea's zero-data-retention switch (enterprise workspaces, Krea 2 models); media inputs must
#: then be ``data:`` URIs.
ZDR_HEADER = "X-Api-Zero-Data-Retention"


@dataclass(frozen=True)
class Timeouts:
    """Per-phase timeouts in seconds; ``None`` for a phase disables it (a conscious opt-out)."""

    connect: float | None = DEFAULT_CONNECT_TIMEOUT
    read: float | None = DEFAULT_READ_TIMEOUT
    write: float | None = DEFAULT_WRITE_TIMEOUT
    pool: float | None = DEFAULT_POOL_TIMEOUT
    #: Read timeout per chunk while downloading a result file.
    download_read: float | None = DEFAULT_DOWNLOAD_READ_TIMEOUT

    @classmethod
    def coerce(cls, value: Timeouts | float | None) -> Timeouts:
        """A ``Timeouts`` from an object, one number for every phase, or None for no timeouts."""
        if isinstance(value, Timeouts):
            return value
        if value is None:
            return cls(connect=None, read=None, write=None, pool=None, download_read=None)
        seconds = float(value)
        if seconds <= 0:
            raise ValueError("timeout must be positive (or None to disable timeouts)")
        return cls(
            connect=seconds, read=seconds, write=seconds, pool=seconds, download_read=seconds
        )

    def for_json(self) -> httpx.Timeout:
        """The httpx timeout of a JSON API call."""
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)

    def for_download(self) -> httpx.Timeout:
        """The httpx timeout of a result download (a longer per-chunk read)."""
        return httpx.Timeout(
            connect=self.connect, read=self.download_read, write=self.write, pool=self.pool
        )

    @property
    def request_window(self) -> float | None:
        """The longest a sent request can stay unanswered before we give up; None if unbounded."""
        phases = (self.connect, self.write, self.read)
        if any(phase is None for phase in phases):
            return None
        return sum(phase for phase in phases if phase is not None)


DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for safe calls: ``min(maximum, initial * 2**n)`` spread by ``jitter``."""

    initial_backoff: float = DEFAULT_INITIAL_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    #: 1.0 is full jitter: uniform over [0, 2d] capped at ``max_backoff``, spread both ways
    #: around the nominal delay d so a herd of pollers does not retry in lockstep.
    jitter: float = 1.0
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER


@dataclass(frozen=True)
class SubmitRateLimitPolicy:
    """How long ``submit()`` keeps retrying a 429 (concurrency cap) before RateLimitError."""

    initial_delay: float = DEFAULT_SUBMIT_429_INITIAL_DELAY
    max_delay: float = DEFAULT_SUBMIT_429_MAX_DELAY
    multiplier: float = 2.0
    #: +-25 %: spread, but each wait stays near its nominal value (10, 20, 40, 60, 60 s...).
    jitter: float = 0.25
    #: Total seconds a single submit may spend waiting out 429s.
    budget: float = DEFAULT_SUBMIT_429_BUDGET


@dataclass(frozen=True)
class DownloadSettings:
    """Limits of ``download()``."""

    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    chunk_size: int = DEFAULT_DOWNLOAD_CHUNK_SIZE
    max_redirects: int = DEFAULT_MAX_REDIRECTS


class Clock(Protocol):
    """Time sources of the client; tests pass a fake so nothing really waits."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (deadlines, budgets)."""
        ...

    def now(self) -> datetime:
        """The aware wall-clock time (comparisons with Krea's created_at)."""
        ...


class SystemClock:
    """The real clocks: ``time.monotonic`` and ``datetime.now(UTC)``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def __repr__(self) -> str:
        return "SystemClock()"
