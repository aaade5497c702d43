"""Every fixed count and knob of a bench run, recorded as is in ``latest.json``.

Times are scaled from a real workload to a short render so the whole bench runs in minutes: Krea's
gpt-image-2 renders for about 55 s and Krea advises polling every few seconds (3 s here), so at
the emulator's 1 s render a poll interval of 3/55 s (0.055 s) is the same habit. Every client in
the comparison, ours and the baselines, polls at that interval; the completion sensor ticks at its
builder default (10 s) scaled the same way.
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SEED = 1234
MODEL = "bfl/flux-1-dev"
MODEL_PATH = f"/generate/image/{MODEL}"
# The real job the times are scaled from, and the habits of a user running it.
REFERENCE_RENDER_SECONDS = 55.0  # gpt-image-2
REFERENCE_POLL_SECONDS = 3.0  # Krea: "poll every few seconds"
REFERENCE_SENSOR_SECONDS = 10.0  # build_krea_sensors(completion_interval_seconds=10)


#: README's setting for a big account (``KreaResource.submit_lanes``): the second krea-dagster
#: contender of scenario 11.
BIG_ACCOUNT_SUBMIT_LANES = 4


@dataclass(frozen=True)
class AccountCase:
    """One big account over a real network: Krea's concurrency, the latency every API request
    gets (the emulator's ``latency_ms``), the render time and the batch size ``size`` (N)."""

    concurrency: int
    latency_ms: float
    render_seconds: float
    size: int

    @property
    def ideal_seconds(self) -> float:
        """Whole waves of renders at the account's concurrency: ceil(N / concurrency) x render."""
        return math.ceil(self.size / self.concurrency) * self.render_seconds

    @property
    def poll_interval(self) -> float:
        """Krea's advice (a 3 s poll of a 55 s render) scaled to this render time."""
        return self.render_seconds * REFERENCE_POLL_SECONDS / REFERENCE_RENDER_SECONDS

    @property
    def label(self) -> str:
        """``c64_100ms_5s_n640``: the key of this case's figures in ``latest.json``."""
        return (
            f"c{self.concurrency}_{self.latency_ms:g}ms_{self.render_seconds:g}s_n{self.size}"
        ).replace(".", "p")

    @classmethod
    def parse(cls, text: str) -> "AccountCase":
        """``CONCURRENCY:LATENCY_MS:RENDER_SECONDS:N``, e.g. ``64:100:5:640``."""
        parts = text.strip().split(":")
        try:
            if len(parts) != 4:
                raise ValueError
            case = cls(int(parts[0]), float(parts[1]), float(parts[2]), int(parts[3]))
        except ValueError:
            raise ValueError(
                f"{text!r} is not CONCURRENCY:LATENCY_MS:RENDER_SECONDS:N (e.g. 64:100:5:640)"
            ) from None
        if case.concurrency < 1 or case.size < 1 or case.render_seconds <= 0 or case.latency_ms < 0:
            raise ValueError(
                f"{text!r}: concurrency and N must be at least 1, the render time above 0 and "
                "the latency 0 or more"
            )
        return case


# Issue 21's scenario: 100 ms on every API request, concurrency 64, 5 s renders, N = 640 (ideal
# 50 s); then 8, 16 and 32 concurrency at both ends of 50-200 ms, ten waves each (ideal 50 s).
ISSUE_ACCOUNT_CASES = (
    AccountCase(64, 100, 5, 640),
    *(AccountCase(c, ms, 5, 10 * c) for c in (8, 16, 32) for ms in (50, 200)),
)
# The full run's default: the issue's headline case, and the smaller accounts at the slow end
# of the range over five waves (the whole issue set, ``--big-account issue``, adds about ten
# minutes to the bench).
DEFAULT_ACCOUNT_CASES = (
    AccountCase(64, 100, 5, 640),
    *(AccountCase(c, 200, 5, 5 * c) for c in (8, 16, 32)),
)


@dataclass(frozen=True)
class BenchParams:
    """One bench configuration (``FULL`` or ``SMOKE``)."""

    mode: str
    seed: int = SEED
    model: str = MODEL
    width: int = 1024
    height: int = 1024
    # Emulator (fixed at start; scenarios that need other settings change them at run time
    # through the admin API and say so).
    concurrency: int = 8
    render_seconds: float = 1.0
    backlog: int = 20_000
    balance_usd: float = 1_000_000.0
    # 1. throughput
    throughput_sizes: tuple[int, ...] = (50, 100, 200)
    sequential_sizes: tuple[int, ...] = (10, 30)
    parallel_workers: int = 8
    deferred_size: int = 200
    # 3. completion-sensor tick
    sensor_pending: tuple[int, ...] = (1_000, 10_000)
    sensor_ticks: int = 3
    # 4./5. images step memory and CPU
    memory_sizes: tuple[int, int] = (100, 5_000)
    # 6. emulator capacity (bench/emulator_capacity.py)
    capacity_requests: int = 5_000
    capacity_clients: int = 16
    capacity_live: int = 10_000
    capacity_rounds: int = 3
    capacity_images: int = 200
    # 7. crash cost
    crash_size: int = 24
    crash_after: int = 12  # the k-th pass through the crash point kills the worker
    crash_points: tuple[str, ...] = ("submit.after_post", "collect.after_download")
    # 8. discovery tick over one big unchanged prompt file
    discovery_rows: int = 1_000_000
    discovery_ticks: int = 3
    # 9. launch-to-manifest through `dagster asset materialize` (the last size is the headline)
    end_to_end_sizes: tuple[int, ...] = (100, 200)
    # 11. a big account over a real network (the first case is the headline), and a kill -9 of
    # the worker mid-submission: after ``kill_after_jobs`` jobs exist at Krea, with the request
    # timeouts of the crash tests (connect, write, read) so the re-run's windows close fast.
    account_cases: tuple[AccountCase, ...] = DEFAULT_ACCOUNT_CASES
    account_kill_case: AccountCase = AccountCase(64, 100, 5, 128)
    account_kill_after_jobs: int = 40
    account_kill_timeouts: tuple[float, float, float] = (1.0, 1.0, 2.0)
    # 10. the time-scaled day (bench/day.py; 0 batches: skipped, as in the smoke run, which
    # must not need PostgreSQL and S3). On this 2-core machine a batch takes about 40 s, so the
    # full 100 batches take over an hour: `--day-batches` runs fewer.
    day_batches: int = 100
    day_per_batch: int = 200
    day_in_flight: int = 3
    day_time_scale: float = 0.02
    day_concurrency: int = 50
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def poll_interval(self) -> float:
        """Seconds between polls, for every client: Krea's advice scaled to the render time."""
        return self.render_seconds * REFERENCE_POLL_SECONDS / REFERENCE_RENDER_SECONDS

    @property
    def sensor_interval(self) -> float:
        """Seconds between completion-sensor ticks (the builder default, scaled)."""
        return self.render_seconds * REFERENCE_SENSOR_SECONDS / REFERENCE_RENDER_SECONDS

    @property
    def headline_size(self) -> int:
        return max(self.throughput_sizes)

    def ideal_seconds(self, size: int) -> float:
        """Wall time of ``size`` jobs at the account's concurrency: whole waves of renders."""
        return math.ceil(size / self.concurrency) * self.render_seconds

    def emulator_args(self) -> list[str]:
        return [
            "--seed", str(self.seed),
            "--concurrency", str(self.concurrency),
            "--backlog", str(self.backlog),
            "--balance-usd", str(self.balance_usd),
            "--render-seconds", str(self.render_seconds),
        ]  # fmt: skip

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(
            poll_interval=round(self.poll_interval, 6),
            sensor_interval=round(self.sensor_interval, 6),
            reference_render_seconds=REFERENCE_RENDER_SECONDS,
            reference_poll_seconds=REFERENCE_POLL_SECONDS,
            reference_sensor_seconds=REFERENCE_SENSOR_SECONDS,
            emulator_args=self.emulator_args(),
        )
        return record


FULL = BenchParams(mode="full")
SMOKE = BenchParams(
    mode="smoke",
    render_seconds=0.1,
    throughput_sizes=(8,),
    sequential_sizes=(2,),
    deferred_size=8,
    sensor_pending=(20, 50),
    sensor_ticks=1,
    memory_sizes=(4, 12),
    capacity_requests=200,
    capacity_clients=4,
    capacity_live=50,
    capacity_rounds=1,
    capacity_images=10,
    crash_size=6,
    crash_after=3,
    crash_points=("submit.after_post",),
    discovery_rows=2_000,
    discovery_ticks=1,
    end_to_end_sizes=(8,),
    account_cases=(AccountCase(4, 20, 0.3, 8),),
    account_kill_case=AccountCase(4, 20, 0.3, 8),
    account_kill_after_jobs=3,
    account_kill_timeouts=(0.3, 0.3, 0.6),
    day_batches=0,
)
