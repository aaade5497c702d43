"""How far Krea's clock is from ours, measured from Krea's own answers (never assumed).

Every HTTP response carries a ``Date`` header: Krea's clock, truncated to the second, read
while it answered. A request sent at ``sent`` and answered at ``received`` (our clock) was
answered somewhere in between, so Krea's clock minus ours lies in
``[date - received, date + 1 s - sent]``. ``ClockOffset`` keeps the intersection of these
bounds over the answers of one client; an answer that contradicts it (a clock was stepped)
starts it again. ``created_at`` times Krea gives to jobs are on the same clock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

__all__ = ["ClockOffset", "OffsetBounds"]

#: A ``Date`` header names a whole second; Krea's clock was somewhere in it.
DATE_RESOLUTION = timedelta(seconds=1)


@dataclass(frozen=True)
class OffsetBounds:
    """Krea's clock minus ours lies in ``[low, high]``; ``measured_at`` is our clock's time of
    the latest answer that went into it."""

    low: timedelta
    high: timedelta
    measured_at: datetime

    def intersect(self, other: OffsetBounds) -> OffsetBounds | None:
        """Bounds both allow, or None when they contradict each other."""
        low, high = max(self.low, other.low), min(self.high, other.high)
        if low > high:
            return None
        return OffsetBounds(low, high, max(self.measured_at, other.measured_at))


class ClockOffset:
    """The offset bounds of one client, from the ``Date`` header of every answer it got."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bounds: OffsetBounds | None = None

    def observe(self, date_header: str | None, sent: datetime, received: datetime) -> None:
        """Take one answer into account (one without a readable ``Date`` proves nothing)."""
        if not date_header:
            return
        try:
            date = parsedate_to_datetime(date_header)
        except (TypeError, ValueError, IndexError):
            return
        if date.tzinfo is None:
            date = date.replace(tzinfo=UTC)
        sample = OffsetBounds(date - received, date + DATE_RESOLUTION - sent, received)
        with self._lock:
            known = self._bounds
            merged = None if known is None else known.intersect(sample)
            self._bounds = sample if merged is None else merged

    def bounds(self, *, now: datetime, max_age: float) -> OffsetBounds | None:
        """The bounds, when an answer at most ``max_age`` seconds old went into them."""
        with self._lock:
            known = self._bounds
        if known is None or (now - known.measured_at).total_seconds() > max_age:
            return None
        return known
