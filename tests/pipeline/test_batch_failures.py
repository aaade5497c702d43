"""A batch with failed prompts is not green: the per-batch check, the step, the run and the partition say so."""

import logging
import random
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from krea_dagster.metadata import KreaCheckMetadata, KreaImagesMetadata

from .conftest import check_results, manifest_of, materialize, prompt_rows, write_batch

FAILURE = ["safety_filter", "The output was blocked by the safety filter."]


def seed_failing(count: int, of: int, rate: float) -> int:
    """The first emulator seed whose job_failure stream fails exactly ``count`` of ``of`` jobs.

    Mirrors krea_dagster.emulator.faults: one random() per new job, a choice() of the error
    after each hit, from random.Random(f"{seed}:job_failure").
    """
    for seed in range(10_000):
        stream = random.Random(f"{seed}:job_failure")
        hits = 0
        for _ in range(of):
            if stream.random() < rate:
                hits += 1
                stream.choice([FAILURE])
        if hits == count:
            return seed
    raise AssertionError(f"no seed fails {count} of {of} at rate {rate}")


def fail_jobs(emulator, count: int, of: int) -> None:
    rate = 0.7 if count * 2 > of else 0.3
    emulator.configure(
        seed=seed_failing(count, of, rate), job_failure_rate=rate, job_failures=[FAILURE]
    )


def evaluation(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    (found,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return found


def partition_status(instance: dg.DagsterInstance, assets, batch: str) -> str:
    cache = get_and_update_asset_status_cache_value(
        instance, assets.images.key, assets.partitions_def
    )
    assert cache is not None
    if (
        batch
        in cache.deserialize_failed_partition_subsets(assets.partitions_def).get_partition_keys()
    ):
        return "failed"
    materialized = cache.deserialize_materialized_partition_subsets(assets.partitions_def)
    return "materialized" if batch in materialized.get_partition_keys() else "missing"


def test_five_of_six_failed_fails_check_step_run_and_partition(
    build, emulator, krea, instance, prompts_dir
):
    """5 failed jobs of 6 fail the batch's check with ERROR, the images step, the run (its last event counts them) and the partition, while the one image, the gallery and the manifest copy are stored."""
    fail_jobs(emulator, 5, 6)
    write_batch(prompts_dir, "b1", prompt_rows(6))
    assets = build(max_attempts=1)
    result = materialize(assets, "b1", instance=instance, krea=krea)

    assert emulator.stats()["faults_injected"]["job_failure"] == 5
    assert not result.success
    check = evaluation(result, "no_failed_prompts")
    assert (check.passed, check.severity, check.partition) == (
        False,
        dg.AssetCheckSeverity.ERROR,
        "b1",
    )
    judged = KreaCheckMetadata.extract(check.metadata)
    assert (judged.batch, judged.generation, judged.failed_prompts, judged.prompts) == (
        "b1",
        "1",
        5,
        6,
    )
    assert check.description and "batch 'b1'" in check.description
    # The images step failed and says how many; the run's last event carries that message.
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == assets.images.node_def.name
    description = failure.step_failure_data.user_failure_data.description
    assert "5 of 6 prompts failed (safety_filter x5)" in description
    last = instance.all_logs(result.run_id)[-1]
    assert last.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE
    assert "5 of 6 prompts failed" in str(last.dagster_event.event_specific_data.error)
    # No materialization in the failing run: Dagster marks the partition Failed.
    assert result.asset_materializations_for_node(assets.images.node_def.name) == []
    assert partition_status(instance, assets, "b1") == "failed"
    # What succeeded is kept and linked from the failure.
    linked = KreaImagesMetadata.extract(failure.step_failure_data.user_failure_data.metadata)
    assert (linked.images, linked.failed_prompts) == (1, 5)
    assert linked.gallery_path is not None and linked.manifest_copy is not None
    copy = pd.read_parquet(linked.manifest_copy.value)
    assert sorted(copy["status"]) == ["completed"] + ["failed"] * 5
    (stored,) = copy.loc[copy["status"] == "completed", "uri"]
    assert Path(stored).is_file()
    page = Path(linked.gallery_path.value).read_text(encoding="utf-8")
    assert page.count("<figure") == 6
    assert page.count("blocked by the safety filter") == 5


def test_failures_within_the_threshold_warn_and_materialize(
    build, emulator, krea, instance, prompts_dir
):
    """One failed job of six (below max_failed_fraction) fails the check with WARN, materializes the partition, and the step's last log line counts it."""
    fail_jobs(emulator, 1, 6)
    write_batch(prompts_dir, "b1", prompt_rows(6))
    assets = build(max_attempts=1)
    result = materialize(assets, "b1", instance=instance, krea=krea)

    assert result.success
    check = evaluation(result, "no_failed_prompts")
    assert (check.passed, check.severity, check.partition) == (
        False,
        dg.AssetCheckSeverity.WARN,
        "b1",
    )
    assert check_results(result)["every_prompt_resolved"] is True
    assert partition_status(instance, assets, "b1") == "materialized"
    manifest = manifest_of(result, assets)
    assert (manifest["status"] == "completed").sum() == 5
    step_events = [
        event
        for event in instance.all_logs(result.run_id)
        if event.step_key == assets.images.node_def.name
    ]
    assert step_events[-1].dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
    said_last = step_events[-2]
    assert said_last.dagster_event is None and said_last.level == logging.WARNING
    assert "5 of 6 outputs stored, 1 of 6 prompts failed (safety_filter x1)" in said_last.message


def test_run_config_accepts_a_failed_batch_without_paying_again(
    build, emulator, krea, instance, prompts_dir
):
    """Re-running images with max_failed_fraction 1 materializes the failed batch's successes and submits nothing."""
    fail_jobs(emulator, 5, 6)
    write_batch(prompts_dir, "b1", prompt_rows(6))
    assets = build(max_attempts=1)
    assert not materialize(assets, "b1", instance=instance, krea=krea).success
    created = emulator.stats()["jobs_created"]

    config = {"ops": {assets.images.node_def.name: {"config": {"max_failed_fraction": 1.0}}}}
    again = materialize(
        assets, "b1", instance=instance, krea=krea, roles=("images",), run_config=config
    )
    assert again.success
    assert emulator.stats()["jobs_created"] == created
    assert (manifest_of(again, assets)["status"] == "completed").sum() == 1
    assert evaluation(again, "no_failed_prompts").severity == dg.AssetCheckSeverity.WARN
    assert partition_status(instance, assets, "b1") == "materialized"


def test_zero_threshold_fails_the_batch_on_its_first_failure(
    build, emulator, krea, instance, prompts_dir
):
    """With max_failed_fraction 0, a single failed job fails the batch."""
    fail_jobs(emulator, 1, 6)
    write_batch(prompts_dir, "b1", prompt_rows(6))
    assets = build(max_attempts=1, max_failed_fraction=0)
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert not result.success
    assert evaluation(result, "no_failed_prompts").severity == dg.AssetCheckSeverity.ERROR
    assert partition_status(instance, assets, "b1") == "failed"


def test_every_check_result_names_its_batch(build, emulator, krea, instance, prompts_dir):
    """Each check result of each batch is recorded for that batch's partition and names the batch."""
    write_batch(prompts_dir, "spring", prompt_rows(2, "spring"))
    write_batch(prompts_dir, "autumn", prompt_rows(2, "autumn"))
    assets = build()
    for batch in ("spring", "autumn"):
        result = materialize(assets, batch, instance=instance, krea=krea)
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == 4
        for found in evaluations:
            assert found.partition == batch
            assert KreaCheckMetadata.extract(found.metadata).batch == batch
            assert found.description and f"batch {batch!r}" in found.description
    specs = list(assets.images.check_specs)
    assert {spec.name for spec in specs} == {
        "no_failed_prompts",
        "every_prompt_resolved",
        "images_have_requested_size",
        "no_duplicate_paid_jobs",
    }
    assert all(spec.partitions_def == assets.partitions_def for spec in specs)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
def test_max_failed_fraction_out_of_range_is_refused(build, bad):
    """A max_failed_fraction that is not a number from 0 to 1 is refused with what to give."""
    with pytest.raises(ValueError, match=r"must be a number from 0 to 1"):
        build(max_failed_fraction=bad)


def test_run_config_threshold_out_of_range_fails_the_step_saying_why(
    build, emulator, krea, instance, prompts_dir
):
    """A run config max_failed_fraction outside 0..1 fails the images step with what to give."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build()
    config = {"ops": {assets.images.node_def.name: {"config": {"max_failed_fraction": 2.0}}}}
    result = materialize(assets, "b1", instance=instance, krea=krea, run_config=config)
    (failure,) = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert "run config max_failed_fraction=2.0 must be a number from 0 to 1" in description
