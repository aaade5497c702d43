"""Sensors: batch discovery and deferred completion, tick by tick, with cursors carried between ticks."""

import json
import time

import dagster as dg
import pytest

from krea_dagster import build_krea_sensors
from krea_dagster.emulator.clock import ManualClock
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.state import DEMO_TOKEN, EmulatorState
from krea_dagster.emulator.testing import run_emulator
from krea_dagster.sensors import CompletionCursor, DiscoveryCursor

from .conftest import (
    make_resource,
    manifest_of,
    materialize,
    prompt_rows,
    record_pending_rows,
    write_batch,
)


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    cursor: str | None = None,
):
    """Evaluate one sensor tick the way the daemon does (instance_ref: dynamic partitions load)."""
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, cursor=cursor, resources=defs.resources
    ) as context:
        return sensor.evaluate_tick(context)


@pytest.fixture
def persistent_instance():
    with dg.instance_for_test() as instance:
        yield instance


def sensors_of(assets, **kwargs) -> dict[str, dg.SensorDefinition]:
    return {sensor.name: sensor for sensor in build_krea_sensors(assets, **kwargs)}


def test_discovery_adds_partitions_and_runs_new_batches_once(
    build, krea, persistent_instance, prompts_dir
):
    """New files become partitions and runs in one tick; the next tick with the cursor does nothing."""
    write_batch(prompts_dir, "alpha", prompt_rows(2))
    write_batch(prompts_dir, "beta", prompt_rows(3))
    assets = build()
    sensor = sensors_of(assets)["krea_test_batch_discovery"]
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    first = tick(sensor, persistent_instance, defs)
    assert [request.partition_key for request in first.run_requests] == ["alpha", "beta"]
    assert first.dynamic_partitions_requests[0].partition_keys == ["alpha", "beta"]
    assert {tuple(key.path) for key in first.run_requests[0].asset_selection} == {
        ("krea_test", "prompts"),
        ("krea_test", "jobs"),
    }
    assert first.run_requests[0].run_key.startswith("alpha:")
    persistent_instance.add_dynamic_partitions(assets.partitions_def.name, ["alpha", "beta"])
    second = tick(sensor, persistent_instance, defs, first.cursor)
    assert second.run_requests == []
    assert "no new or changed" in second.skip_message


def test_discovery_reruns_a_changed_batch_and_reports_a_removed_one(
    build, krea, persistent_instance, prompts_dir
):
    """A changed file gets a run with a new run key; a removed file is reported, not deleted."""
    write_batch(prompts_dir, "alpha", prompt_rows(2))
    beta = write_batch(prompts_dir, "beta", prompt_rows(2))
    assets = build()
    sensor = sensors_of(assets)["krea_test_batch_discovery"]
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    first = tick(sensor, persistent_instance, defs)
    persistent_instance.add_dynamic_partitions(assets.partitions_def.name, ["alpha", "beta"])
    write_batch(prompts_dir, "alpha", prompt_rows(3))
    beta.unlink()
    second = tick(sensor, persistent_instance, defs, first.cursor)
    assert [request.partition_key for request in second.run_requests] == ["alpha"]
    assert second.run_requests[0].run_key != first.run_requests[0].run_key
    assert second.dynamic_partitions_requests == []
    assert "beta" not in DiscoveryCursor.parse(second.cursor).hashes


def test_discovery_deletes_removed_batches_only_when_asked(
    build, krea, persistent_instance, prompts_dir
):
    """delete_removed_batches=True turns a removed file into a partition delete request."""
    beta = write_batch(prompts_dir, "beta", prompt_rows(1))
    assets = build()
    sensor = sensors_of(assets, delete_removed_batches=True)["krea_test_batch_discovery"]
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    first = tick(sensor, persistent_instance, defs)
    persistent_instance.add_dynamic_partitions(assets.partitions_def.name, ["beta"])
    beta.unlink()
    second = tick(sensor, persistent_instance, defs, first.cursor)
    assert second.dynamic_partitions_requests[0].partition_keys == ["beta"]


def test_discovery_reports_unusable_files(build, krea, persistent_instance, prompts_dir):
    """A file whose name is not a partition key, or that is not UTF-8, is reported in the tick."""
    write_batch(prompts_dir, "has space", prompt_rows(1))
    (prompts_dir / "latin1.csv").write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    assets = build()
    sensor = sensors_of(assets)["krea_test_batch_discovery"]
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    result = tick(sensor, persistent_instance, defs)
    message = result.skip_message
    assert "has space" in message and "not a valid partition key" in message
    assert "latin1.csv" in message and "UTF-8" in message


def test_cursors_round_trip_and_tolerate_garbage():
    """Cursors serialize and parse back; an unreadable cursor starts fresh instead of failing."""
    cursor = CompletionCursor(requested={"b1": "b1:g1:x"}, offset=7)
    assert CompletionCursor.parse(cursor.serialize()) == cursor
    discovery = DiscoveryCursor(hashes={"b1": "abc"})
    assert DiscoveryCursor.parse(discovery.serialize()) == discovery
    assert CompletionCursor.parse("not json") == CompletionCursor()
    assert DiscoveryCursor.parse(json.dumps({"version": 99})) == DiscoveryCursor()


def test_deferred_completion_requests_images_once_all_jobs_are_terminal(
    build, emulator, persistent_instance, prompts_dir
):
    """Jobs submitted by a jobs-only run are polled by the sensor, which launches images exactly once."""
    emulator.configure(render_seconds=3.0, time_scale=1.0)
    write_batch(prompts_dir, "b1", prompt_rows(4))
    assets = build()
    krea = make_resource(emulator)
    sensor = sensors_of(assets)["krea_test_completion"]
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    started = time.monotonic()
    assert materialize(
        assets, "b1", instance=persistent_instance, krea=krea, roles=("prompts", "jobs")
    ).success
    assert time.monotonic() - started < 30
    first = tick(sensor, persistent_instance, defs)
    assert first.run_requests == []
    assert "4 pending job(s)" in first.skip_message
    deadline = time.monotonic() + 20
    cursor, result = first.cursor, first
    while time.monotonic() < deadline:
        result = tick(sensor, persistent_instance, defs, cursor)
        cursor = result.cursor
        if result.run_requests:
            break
        time.sleep(0.1)
    assert [request.partition_key for request in result.run_requests] == ["b1"]
    assert result.run_requests[0].asset_selection == [assets.images.key]
    progress = [event for event in result.asset_events if event.asset_key == assets.jobs.key]
    assert progress and progress[0].metadata["completed"].value == 4
    again = tick(sensor, persistent_instance, defs, cursor)
    assert again.run_requests == []
    images = materialize(assets, "b1", instance=persistent_instance, krea=krea, roles=("images",))
    assert set(manifest_of(images, assets)["status"]) == {"completed"}
    assert emulator.stats()["jobs_created"] == 4
    after = tick(sensor, persistent_instance, defs, again.cursor)
    assert after.run_requests == []


def test_completion_cancels_jobs_pending_past_poll_timeout_and_moves_on(
    build, emulator, persistent_instance, prompts_dir
):
    """With on_poll_timeout=cancel, overdue jobs are cancelled (nothing billed), then images run."""
    emulator.configure(render_seconds=60.0, time_scale=1.0)
    write_batch(prompts_dir, "slow", prompt_rows(3))
    assets = build()
    krea = make_resource(emulator, poll_timeout=0.5, on_poll_timeout="cancel")
    sensor = sensors_of(assets)["krea_test_completion"]
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    assert materialize(
        assets, "slow", instance=persistent_instance, krea=krea, roles=("prompts", "jobs")
    ).success
    time.sleep(0.6)
    result = tick(sensor, persistent_instance, defs)
    assert [request.partition_key for request in result.run_requests] == ["slow"]
    rows = assets.pipeline.ledger.rows(assets.pipeline.scope, "slow")
    assert {row.state for row in rows} == {"cancelled"}
    stats = emulator.stats()
    assert (stats["jobs_created"], stats["jobs_billed"]) == (3, 0)


def test_sensor_loop_end_to_end_drop_a_file_get_images(
    build, emulator, persistent_instance, prompts_dir
):
    """Dropping a CSV into the source produces its images through discovery, jobs, completion and images runs."""
    assets = build()
    krea = make_resource(emulator)
    sensors = sensors_of(assets)
    defs = dg.Definitions(
        assets=assets.assets, sensors=list(sensors.values()), resources={"krea": krea}
    )
    write_batch(prompts_dir, "dropped", prompt_rows(3))
    discovery = tick(sensors["krea_test_batch_discovery"], persistent_instance, defs)
    for request in discovery.dynamic_partitions_requests:
        persistent_instance.add_dynamic_partitions(
            request.partitions_def_name, list(request.partition_keys)
        )
    (request,) = discovery.run_requests
    assert materialize(
        assets,
        request.partition_key,
        instance=persistent_instance,
        krea=krea,
        roles=("prompts", "jobs"),
    ).success
    cursor = None
    for _ in range(200):
        completion = tick(sensors["krea_test_completion"], persistent_instance, defs, cursor)
        cursor = completion.cursor
        if completion.run_requests:
            break
        time.sleep(0.05)
    (images_request,) = completion.run_requests
    result = materialize(
        assets,
        images_request.partition_key,
        instance=persistent_instance,
        krea=krea,
        roles=("images",),
    )
    assert set(manifest_of(result, assets)["status"]) == {"completed"}


@pytest.mark.parametrize("pending", [1_000, 10_000], ids=["1k-pending", "10k-pending"])
def test_completion_tick_with_many_pending_jobs_costs_about_one_request_per_1000(
    pending, build, persistent_instance, monkeypatch
):
    """A tick over N pending jobs makes about N/1000 list requests and stays inside its budget."""
    clock = ManualClock(start=time.time())
    config = EmulatorConfig(
        render_seconds=600.0, concurrency=20_000, backlog=20_000, balance_usd=1_000.0
    )
    state = EmulatorState(config, clock=clock, tokens=(DEMO_TOKEN,))
    account = state.by_token[DEMO_TOKEN]
    spec = state.models["image/bfl/flux-1-dev"]
    jobs = [state.submit(account, spec, {"prompt": f"p{index}"}) for index in range(pending)]
    assets = build()
    record_pending_rows(assets, jobs, "big", krea_clock=False)
    persistent_instance.add_dynamic_partitions(assets.partitions_def.name, ["big"])
    with run_emulator(state=state, clock=clock) as emulator:
        krea = make_resource(emulator)
        sensor = sensors_of(assets, tick_budget_seconds=20.0)["krea_test_completion"]
        defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
        started = time.monotonic()
        result = tick(sensor, persistent_instance, defs)
        elapsed = time.monotonic() - started
        requests = emulator.stats()["requests_by_route"]
        list_requests = requests.get("GET /jobs", 0)
        assert list_requests <= pending // 1000 + 1
        assert requests.get("GET /jobs/{id}", 0) == 0
        assert elapsed < 20.0
        assert result.run_requests == []
        clock.advance(601.0)
        done = tick(sensor, persistent_instance, defs, result.cursor)
        assert [request.partition_key for request in done.run_requests] == ["big"]
