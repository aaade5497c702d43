"""The completion tick's deadline reaches every Krea call: a slow page ends the tick on time."""

import time

import dagster as dg
import pytest

from krea_dagster import build_krea_sensors
from krea_dagster.api import KreaClient
from krea_dagster.emulator.clock import ManualClock
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.state import DEMO_TOKEN, EmulatorState
from krea_dagster.emulator.testing import run_emulator
from krea_dagster.sensors import DAGSTER_SENSOR_TIMEOUT_SECONDS, tick_deadline

from .conftest import make_resource, record_pending_rows

BUDGET = 3.5
PAGE_SECONDS = 2.5  # one GET /jobs page fits in the budget, two do not
# How late after the deadline the last poll may return: the clipped read timeout fires at the
# deadline, plus scheduling on a loaded machine. Without the deadline inside poll_many the
# first tick's polls end after three pages, 7.5 s.
LATE = 1.0
CANCEL_BUDGET = 2.5


@pytest.fixture
def poll_spans(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """(start, end) in time.monotonic() of every KreaClient.poll_many call (a timing wrapper)."""
    spans: list[tuple[float, float]] = []
    real = KreaClient.poll_many

    def timed(self, *args, **kwargs):
        started = time.monotonic()
        try:
            return real(self, *args, **kwargs)
        finally:
            spans.append((started, time.monotonic()))

    monkeypatch.setattr(KreaClient, "poll_many", timed)
    return spans


@pytest.fixture
def persistent_instance():
    with dg.instance_for_test() as instance:
        yield instance


def tick(sensor, instance, defs, cursor=None):
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, cursor=cursor, resources=defs.resources
    ) as context:
        return sensor.evaluate_tick(context)


def submitted_jobs(count: int, clock: ManualClock) -> tuple[EmulatorState, list]:
    """``count`` jobs ten milliseconds apart at an emulator whose renders take 600 s."""
    config = EmulatorConfig(
        render_seconds=600.0, concurrency=count, backlog=count, balance_usd=1_000.0
    )
    state = EmulatorState(config, clock=clock, tokens=(DEMO_TOKEN,))
    account, spec = state.by_token[DEMO_TOKEN], state.models["image/bfl/flux-1-dev"]
    jobs = []
    for index in range(count):
        jobs.append(state.submit(account, spec, {"prompt": f"p{index}"}))
        clock.advance(0.01)
    return state, jobs


def test_a_slow_page_ends_the_tick_on_time_and_the_next_tick_continues(
    build, persistent_instance, poll_spans
):
    """GET /jobs pages of 2.5 s against a 3.5 s budget: each tick stops on time with what it polled, and ticks resume until all 3,000 are done."""
    clock = ManualClock(start=time.time())
    state, jobs = submitted_jobs(3_000, clock)
    assets = build()
    record_pending_rows(assets, jobs, "big", krea_clock=True)
    persistent_instance.add_dynamic_partitions(assets.partitions_def.name, ["big"])
    clock.advance(601.0)  # every job completed at Krea; the ledger does not know yet
    with run_emulator(state=state, clock=clock) as emulator:
        emulator.configure(latency_ms=PAGE_SECONDS * 1000, latency_routes=["GET /jobs"])
        krea = make_resource(emulator, read_timeout=10.0)
        (sensor,) = build_krea_sensors(assets, discovery=False, tick_budget_seconds=BUDGET)
        defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
        pending, cursor, result = [3_000], None, None
        for _ in range(10):
            # A new sensor object each tick with the serialized cursor, as after a restart.
            (sensor,) = build_krea_sensors(assets, discovery=False, tick_budget_seconds=BUDGET)
            started = time.monotonic()
            poll_spans.clear()
            result = tick(sensor, persistent_instance, defs, cursor)
            # Krea is asked nothing after the deadline (the ledger work after it is not timed).
            last = max(end for _, end in poll_spans) - started
            assert last < BUDGET + LATE, f"the tick polled until {last:.2f} s"
            cursor = result.cursor
            pending.append(len(assets.pipeline.ledger.pending(assets.prefix)))
            if result.run_requests:
                break
        # Partial ticks (three pages never fit in one), each continuing where the last stopped.
        assert pending[-1] == 0 and len(pending) >= 4
        assert pending == sorted(pending, reverse=True)
        assert any(0 < count < 3_000 for count in pending)
        assert [request.partition_key for request in result.run_requests] == ["big"]


def test_cancels_of_overdue_jobs_stop_at_the_deadline_and_resume_next_tick(
    build, persistent_instance
):
    """Cancels of 1 s each against a 2.5 s budget: a tick cancels what fits, the next tick the rest."""
    clock = ManualClock(start=time.time())
    state, jobs = submitted_jobs(8, clock)
    assets = build()
    record_pending_rows(assets, jobs, "slow", krea_clock=True)
    persistent_instance.add_dynamic_partitions(assets.partitions_def.name, ["slow"])
    with run_emulator(state=state, clock=clock) as emulator:
        emulator.configure(latency_ms=1000, latency_routes=["DELETE /jobs"])
        krea = make_resource(emulator, poll_timeout=0.5, on_poll_timeout="cancel")
        (sensor,) = build_krea_sensors(assets, discovery=False, tick_budget_seconds=CANCEL_BUDGET)
        defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
        time.sleep(0.6)  # every row is now pending longer than poll_timeout
        left, cursor, result = [8], None, None
        for _ in range(8):
            started = time.monotonic()
            result = tick(sensor, persistent_instance, defs, cursor)
            # Eight cancels take 8 s; a tick's few rows of ledger work take well under 3 s.
            assert time.monotonic() - started < CANCEL_BUDGET + 3.0
            cursor = result.cursor
            left.append(len(assets.pipeline.ledger.pending(assets.prefix)))
            if result.run_requests:
                break
        # Eight cancels of 1 s never fit in one tick: ticks cancel part each, the last the rest.
        assert left[-1] == 0 and left[1] > 0 and len(left) >= 3
        assert left == sorted(left, reverse=True)
        assert [request.partition_key for request in result.run_requests] == ["slow"]
        assert emulator.stats()["jobs_billed"] == 0


def test_the_tick_deadline_is_the_budget_capped_at_half_of_dagsters(monkeypatch):
    """The deadline is start + budget, never past half of Dagster's sensor timeout (env or 60 s)."""
    monkeypatch.delenv("DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS", raising=False)
    monkeypatch.delenv("DAGSTER_GRPC_TIMEOUT_SECONDS", raising=False)
    assert tick_deadline(20.0, started=100.0) == 120.0
    assert tick_deadline(50.0, started=100.0) == 100.0 + DAGSTER_SENSOR_TIMEOUT_SECONDS / 2
    monkeypatch.setenv("DAGSTER_GRPC_TIMEOUT_SECONDS", "30")
    assert tick_deadline(20.0, started=100.0) == 115.0
    monkeypatch.setenv("DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS", "10")
    assert tick_deadline(20.0, started=100.0) == 105.0
    monkeypatch.setenv("DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS", "soon")
    with pytest.raises(ValueError, match="DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS='soon'"):
        tick_deadline(20.0)


def test_a_budget_that_is_not_positive_is_refused(build):
    """tick_budget_seconds <= 0 is a clear error naming the setting, not a sensor that never polls."""
    with pytest.raises(ValueError, match="tick_budget_seconds must be a positive"):
        build_krea_sensors(build(), tick_budget_seconds=0)
