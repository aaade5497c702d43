"""Fault injection: every decision drawn from a seeded random stream, counted by kind.

Each fault kind has its own ``random.Random`` seeded with ``f"{seed}:{kind}"``: a run is
reproducible for a given seed and request order, and enabling one fault does not change the
draws of another. A draw happens only when the fault's rate is above zero.

Kinds (the keys of ``faults_injected`` in the stats): ``latency``, ``error_5xx``, ``error_429``,
``burst_429``, ``accept_then_drop``, ``upload_accept_then_drop``, ``job_failure``, ``stuck``, ``webhook_duplicate``,
``webhook_delay``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from krea_dagster.emulator.config import EmulatorConfig

SERVER_ERROR_CODES = (500, 502, 503)


@dataclass(frozen=True)
class JobOutcome:
    """How a job will end: ``complete``, ``fail`` (with an error) or ``stuck`` (then timeout)."""

    kind: str = "complete"
    code: str | None = None
    message: str | None = None


class FaultInjector:
    """Seeded fault decisions for one emulator (config is read live, so PATCHes apply)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.counts: Counter[str] = Counter()
        self.reseed()

    def reseed(self) -> None:
        """Restart every stream from the configured seed and reset the burst counter."""
        self._streams: dict[str, random.Random] = {}
        self._generate_posts = 0
        self._burst_left = 0

    def _draw(self, kind: str, rate: float) -> bool:
        if rate <= 0:
            return False
        stream = self._streams.get(kind)
        if stream is None:
            stream = self._streams[kind] = random.Random(f"{self.config.seed}:{kind}")
        hit = stream.random() < rate
        if hit:
            self.counts[kind] += 1
        return hit

    @staticmethod
    def _scoped(route: str, scopes: list[str], explicit: bool) -> bool:
        # An empty scope list means every public API route; "explicit" routes (the CDN) are
        # affected only when a scope names them.
        if not scopes:
            return not explicit
        return any(route.startswith(scope) for scope in scopes)

    def latency_seconds(self, route: str, explicit: bool = False) -> float:
        """Extra latency for this request (0 when none)."""
        if self.config.latency_ms <= 0 or not self._scoped(
            route, self.config.latency_routes, explicit
        ):
            return 0.0
        self.counts["latency"] += 1
        return self.config.latency_ms / 1000.0

    def server_error(self, route: str, explicit: bool = False) -> int | None:
        """An injected 5xx status for this request, or None."""
        if not self._scoped(route, self.config.error_5xx_routes, explicit):
            return None
        if not self._draw("error_5xx", self.config.error_5xx_rate):
            return None
        return self._streams["error_5xx"].choice(SERVER_ERROR_CODES)

    def rate_limited(self) -> str | None:
        """``"burst_429"`` or ``"error_429"`` when this job-creating POST gets a 429, else None.

        Job-creating POSTs are ``POST /generate/...`` and ``POST /node-apps/{id}/execute``.
        """
        self._generate_posts += 1
        every, length = self.config.burst_429_every, self.config.burst_429_length
        if every and length and self._generate_posts % every == 0:
            self._burst_left = length
        if self._burst_left > 0:
            self._burst_left -= 1
            self.counts["burst_429"] += 1
            return "burst_429"
        return "error_429" if self._draw("error_429", self.config.error_429_rate) else None

    def drop_after_accept(self) -> bool:
        """Whether to drop the connection instead of answering this accepted POST (jobs exist)."""
        return self._draw("accept_then_drop", self.config.accept_then_drop_rate)

    def drop_after_upload(self) -> bool:
        """Whether an accepted upload's answer is lost (the asset exists, the client never hears)."""
        return self._draw("upload_accept_then_drop", self.config.upload_accept_then_drop_rate)

    def job_outcome(self) -> JobOutcome:
        """The fate of a new job."""
        if self._draw("job_failure", self.config.job_failure_rate):
            code, message = self._streams["job_failure"].choice(self.config.job_failures)
            return JobOutcome("fail", code, message)
        if self._draw("stuck", self.config.stuck_rate):
            return JobOutcome("stuck")
        return JobOutcome()

    def webhook_duplicate(self) -> bool:
        """Whether a webhook delivery is sent twice."""
        return self._draw("webhook_duplicate", self.config.webhook_duplicate_rate)

    def webhook_delay(self) -> float:
        """Seconds to hold a webhook delivery back (real seconds, not scaled)."""
        delay = self.config.webhook_delay_seconds
        if delay > 0:
            self.counts["webhook_delay"] += 1
        return delay
