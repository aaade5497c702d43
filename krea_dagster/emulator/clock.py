"""The injected clock and the timestamp format.

The state reads time only through a ``Clock``: a callable returning wall-clock seconds since the
Unix epoch (``time.time`` in a server). Wall-clock rather than monotonic time, because a
``--state-file`` run must keep jobs progressing across a restart of the process. Unit tests pass
a :class:`ManualClock` and move it forward instead of sleeping.

Timestamps are held as integer microseconds since the epoch and written as ISO 8601 UTC with
six fractional digits and a ``Z`` (``2026-06-18T12:00:00.000001Z``), so a ``created_at`` read
back as a ``cursor`` lands on exactly the same microsecond.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

Clock = Callable[[], float]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)


class ManualClock:
    """A clock that only moves when told to (for unit tests)."""

    def __init__(self, start: float = 1_781_265_600.0) -> None:  # 2026-06-12T12:00:00Z
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


def to_micros(seconds: float) -> int:
    """Epoch seconds to integer epoch microseconds."""
    return round(seconds * 1_000_000)


@lru_cache(maxsize=65_536)  # the same created_at is written on every poll of a job
def format_micros(micros: int) -> str:
    """Integer epoch microseconds to ISO 8601 UTC with a ``Z``."""
    moment = EPOCH + timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> int:
    """An ISO 8601 date-time (``Z``, offset, or naive = UTC) to epoch microseconds.

    Raises ValueError when the text is not a date-time.
    """
    moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // ONE_MICROSECOND


def utc_date(seconds: float) -> date:
    """The UTC calendar date of an epoch time."""
    return datetime.fromtimestamp(seconds, tz=UTC).date()
