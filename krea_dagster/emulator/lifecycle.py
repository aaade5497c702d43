"""Job lifecycle as data: the statuses, the allowed transitions and the phase timing table.

A job is ``backlogged`` while its account is at its concurrency limit, holds a concurrency slot
from ``queued`` on, walks through the pending phases below and ends ``completed``, ``failed`` or
``cancelled``. The render time of a job is split over the pending phases by
:data:`PHASE_FRACTIONS` (Krea documents no such split; the table only has to be plausible and
keep ``sampling`` the longest phase).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """The nine job statuses, in the order of the OpenAPI enum."""

    BACKLOGGED = "backlogged"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    SAMPLING = "sampling"
    INTERMEDIATE_COMPLETE = "intermediate-complete"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

# Share of the render time spent in each pending phase, in lifecycle order (sums to 1).
PHASE_FRACTIONS: tuple[tuple[JobStatus, float], ...] = (
    (JobStatus.QUEUED, 0.10),
    (JobStatus.SCHEDULED, 0.10),
    (JobStatus.PROCESSING, 0.20),
    (JobStatus.SAMPLING, 0.45),
    (JobStatus.INTERMEDIATE_COMPLETE, 0.15),
)
PHASES: tuple[JobStatus, ...] = tuple(status for status, _ in PHASE_FRACTIONS)


def _phase_starts() -> tuple[float, ...]:
    starts, total = [], 0.0
    for _, fraction in PHASE_FRACTIONS:
        starts.append(total)
        total += fraction
    return (*starts, 1.0)


# PHASE_STARTS[i] is the fraction of the render time at which phase i begins; the last entry
# (1.0) is the end of the render, when the job turns terminal.
PHASE_STARTS: tuple[float, ...] = _phase_starts()

# The phase in which a job fetches its input files (a deleted asset fails it there).
FETCH = JobStatus.PROCESSING

# The phase a stuck job never leaves (until the automatic timeout fails it).
STUCK_PHASE = PHASES.index(JobStatus.SAMPLING)

_NEXT_PHASE = {PHASES[i]: PHASES[i + 1] for i in range(len(PHASES) - 1)}
TRANSITIONS: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {(JobStatus.BACKLOGGED, JobStatus.QUEUED)}
    | {(status, nxt) for status, nxt in _NEXT_PHASE.items()}
    | {(PHASES[-1], JobStatus.COMPLETED)}
    # Any non-terminal job can be cancelled, fail (timeout, injected or forced failure) or be
    # forced to complete through the admin API.
    | {
        (status, end)
        for status in (JobStatus.BACKLOGGED, *PHASES)
        for end in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.COMPLETED)
    }
)


class InvalidTransition(RuntimeError):
    """A status change the lifecycle does not allow (an emulator bug, never a client error)."""


def check_transition(old: JobStatus, new: JobStatus) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is in :data:`TRANSITIONS`."""
    if (old, new) not in TRANSITIONS:
        raise InvalidTransition(f"job cannot go from {old.value!r} to {new.value!r}")
