"""The completion sensor on the real daemon while an images run is still storing a batch.

Krea's CDN answers slowly here (3 s a file, 8 downloads at a time), so storing a 20-image batch
spans two or three sensor ticks. Each stored image moves the batch's ledger watermark; the sensor
must see that its images run is still going and not launch another one for the same batch.
"""

import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus

from .harness import CHECK_NAMES, Deployment, wait_for, write_prompts

# One module, one deployment: its tests run on one xdist worker (--dist loadgroup).
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("test_deferred_completion")]

BATCH, PROMPTS = "slowcdn", 20


@pytest.fixture(scope="module")
def slow_cdn(deployment_factory) -> Deployment:
    return deployment_factory(
        "slowcdn",
        emulator_knobs={
            "seed": 4,
            "time_scale": 0.02,
            "latency_ms": 3000,
            "latency_routes": ["CDN"],
        },
        # The images run must do the slow downloads itself, across ticks (not the tick).
        location_env={"KREA_SYSTEM_COLLECT_IN_TICK": "0"},
    )


def test_completion_sensor_launches_one_images_run_while_it_is_storing(slow_cdn):
    """While an images run stores a batch across several sensor ticks, the completion sensor launches no second images run for that batch."""
    write_prompts(
        slow_cdn.prompts_dir,
        BATCH,
        [f"a slow download number {index}: harbor lights" for index in range(PROMPTS)],
    )
    wait_for(
        lambda: slow_cdn.batch_done([BATCH]),
        timeout=240,
        what=f"batch {BATCH} materialized",
        interval=0.5,
        diagnostics=slow_cdn.diagnostics,
    )
    images_runs = slow_cdn.images_runs(BATCH)
    records = slow_cdn.instance.get_run_records()
    collecting = [
        record.end_time - record.start_time
        for record in records
        if record.dagster_run.run_id in {run.run_id for run in images_runs}
    ]
    stats = slow_cdn.emulator.stats()
    print(
        f"\nslow CDN: {len(images_runs)} images run(s), the longest lasting {max(collecting):.1f} s; "
        f"{stats['cdn_downloads']} downloads, {stats['jobs_billed']} billed"
    )
    # The run really spanned sensor ticks (the daemon evaluates sensors every 5 s)...
    assert max(collecting) > 6
    # ...and it was the only one.
    assert len(images_runs) == 1, [(run.run_id, run.status) for run in images_runs]
    assert images_runs[0].status == DagsterRunStatus.SUCCESS
    assert slow_cdn.check_results(images_runs[0].run_id) == dict.fromkeys(CHECK_NAMES, True)
    assert stats["cdn_downloads"] == PROMPTS
    assert stats["jobs_billed"] == PROMPTS and stats["duplicate_submissions"] == 0
