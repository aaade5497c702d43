"""Scheduled regeneration (modes changed and all, cost log, budget guard) and declarative automation."""

import logging
from datetime import UTC, datetime

import dagster as dg
import pytest

from krea_dagster.execution import REGENERATE_TAG
from krea_dagster.schedules import build_krea_regeneration_schedule

from .conftest import materialize, prompt_rows, write_batch

TICK_TIME = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


class Lines(logging.Handler):
    """Collects the schedule's log lines (Dagster sends them to its console, not to caplog)."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + "\n"


def evaluate(schedule, assets, krea, instance, log: Lines):
    """One tick as the daemon runs it: with the repository (to resolve the target) and the instance."""
    defs = dg.Definitions(assets=assets.assets, schedules=[schedule], resources={"krea": krea})
    context = dg.build_schedule_context(
        instance_ref=instance.get_ref(),
        scheduled_execution_time=TICK_TIME,
        repository_def=defs.get_repository_def(),
    )
    context.log.addHandler(log)
    return schedule.evaluate_tick(context)


@pytest.fixture
def caplog() -> Lines:  # the schedule's own log lines, under the usual name
    return Lines()


@pytest.fixture
def two_batches(build, emulator, krea, instance, prompts_dir):
    """Batches b1 (2 prompts) and b2 (3 prompts), both generated once."""
    write_batch(prompts_dir, "b1", prompt_rows(2, "first batch"))
    write_batch(prompts_dir, "b2", prompt_rows(3, "second batch"))
    assets = build()
    for batch in ("b1", "b2"):
        assert materialize(assets, batch, instance=instance, krea=krea).success
    return assets


def test_changed_mode_requests_only_batches_with_new_prompts(
    two_batches, krea, instance, prompts_dir, caplog
):
    """Mode changed skips untouched batches and logs the estimated cost of the changed one."""
    write_batch(prompts_dir, "b2", [*prompt_rows(3, "second batch"), {"prompt": "one more"}])
    schedule = build_krea_regeneration_schedule(
        two_batches, cron_schedule="0 3 * * *", mode="changed"
    )
    result = evaluate(schedule, two_batches, krea, instance, caplog)
    assert [request.partition_key for request in result.run_requests] == ["b2"]
    assert REGENERATE_TAG not in result.run_requests[0].tags
    assert "b2: 1 prompt(s) to generate, estimated $0.0070" in caplog.text
    assert "b1: nothing changed" in caplog.text
    assert "tick estimate: 1 batch run(s), $0.0070 in total" in caplog.text


def test_changed_mode_skips_when_nothing_changed(two_batches, krea, instance, caplog):
    """With every prompt generated, mode changed requests nothing."""
    schedule = build_krea_regeneration_schedule(
        two_batches, cron_schedule="0 3 * * *", mode="changed"
    )
    result = evaluate(schedule, two_batches, krea, instance, caplog)
    assert not result.run_requests
    assert "no batch to regenerate" in result.skip_message


def test_all_mode_regenerates_selected_batches_with_the_regenerate_tag(
    two_batches, krea, instance, caplog
):
    """Mode all requests a new generation of each selected batch, tagged krea/regenerate."""
    schedule = build_krea_regeneration_schedule(
        two_batches, cron_schedule="0 3 * * *", mode="all", batches=["b2", "missing"]
    )
    result = evaluate(schedule, two_batches, krea, instance, caplog)
    (request,) = result.run_requests
    assert request.partition_key == "b2"
    assert request.tags[REGENERATE_TAG] == "true"
    assert "b2: 3 prompt(s) to generate, estimated $0.0210" in caplog.text


def test_all_mode_run_pays_for_a_new_generation(two_batches, emulator, krea, instance, caplog):
    """Running what mode all requested submits every prompt of the batch again, once."""
    schedule = build_krea_regeneration_schedule(
        two_batches, cron_schedule="0 3 * * *", mode="all", batches=["b1"]
    )
    (request,) = evaluate(schedule, two_batches, krea, instance, caplog).run_requests
    before = emulator.stats()["jobs_created"]
    assert materialize(
        two_batches, "b1", instance=instance, krea=krea, tags=dict(request.tags)
    ).success
    assert emulator.stats()["jobs_created"] == before + 2
    assert emulator.stats()["duplicate_submissions"] == 0


def test_schedule_honours_the_budget_guard(build, emulator, krea, instance, prompts_dir, caplog):
    """A batch whose regeneration is estimated above max_usd_per_run is skipped with a log line."""
    write_batch(prompts_dir, "b1", prompt_rows(5))
    assets = build(max_usd_per_run=0.02)
    instance.add_dynamic_partitions(assets.partitions_def.name, ["b1"])
    schedule = build_krea_regeneration_schedule(assets, cron_schedule="0 3 * * *", mode="all")
    result = evaluate(schedule, assets, krea, instance, caplog)
    assert not result.run_requests
    assert "exceed max_usd_per_run" in caplog.text


def test_selector_function_chooses_batches(two_batches, krea, instance, caplog):
    """A callable selects among the existing batches."""
    schedule = build_krea_regeneration_schedule(
        two_batches, cron_schedule="0 3 * * *", mode="all", batches=lambda names: names[:1]
    )
    assert [
        r.partition_key
        for r in evaluate(schedule, two_batches, krea, instance, caplog).run_requests
    ] == ["b1"]


def test_eager_automation_refreshes_a_batch_when_its_file_changes(
    build, emulator, krea, instance, prompts_dir
):
    """With eager(), a new version of one prompt file requests that batch's chain, paying only for new rows."""
    write_batch(prompts_dir, "b1", prompt_rows(1, "first batch"))
    write_batch(prompts_dir, "b2", prompt_rows(1, "second batch"))
    assets = build(automation_condition=dg.AutomationCondition.eager())
    defs = dg.Definitions(assets=assets.assets, resources={"krea": krea})
    for batch in ("b1", "b2"):
        assert materialize(assets, batch, instance=instance, krea=krea).success
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0

    # What the discovery sensor reports when b1.csv changes.
    write_batch(prompts_dir, "b1", [*prompt_rows(1, "first batch"), {"prompt": "added"}])
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            assets.source.key, partition="b1", tags={"dagster/data_version": "v2"}
        )
    )
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    for asset in (assets.prompts, assets.jobs, assets.images):
        assert second.get_requested_partitions(asset.key) == {"b1"}
    before = emulator.stats()["jobs_created"]
    assert materialize(assets, "b1", instance=instance, krea=krea).success
    assert emulator.stats()["jobs_created"] == before + 1
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.total_requested == 0


def test_a_model_only_the_live_catalog_knows_does_not_break_the_tick(
    build, krea, instance, prompts_dir, caplog
):
    """A schedule plans with the bundled catalog: a newer model is skipped with a warning, not a crash."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build(model="krea/krea-3")
    instance.add_dynamic_partitions(assets.partitions_def.name or "", ["b1"])
    schedule = build_krea_regeneration_schedule(assets, cron_schedule="0 3 * * *", mode="all")
    result = evaluate(schedule, assets, krea, instance, caplog)
    assert not result.run_requests
    assert "b1: not regenerated, cannot be planned: unknown image model 'krea/krea-3'" in (
        caplog.text
    )
