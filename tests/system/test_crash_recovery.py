"""kill -9 of real processes mid-batch: a run worker, then the daemon; the deployment recovers.

The run worker is killed twice: at the crash point between Krea's answer and the ledger write
(the job exists, the ledger does not know it), armed for the first run worker of one batch only;
and with SIGKILL from outside while it submits. ``run_retries`` in deploy/dagster.yaml re-launches
the run (the code server reports the dead worker's run as failed, the daemon retries it), the
retry reconciles the unknown submission through ``GET /jobs`` and submits only what is missing.
The daemon is killed while a batch renders and restarted; its sensors resume from their cursors.
Every batch must end with all its images, each paid for once.
"""

import os
import signal
import time
from typing import Any

import psutil
import pytest
import sqlalchemy as sa
from dagster._core.storage.dagster_run import DagsterRunStatus

from krea_dagster.engine.ledger.schema import submissions_table

from .harness import (
    CHECK_NAMES,
    JOBS_KEY,
    Deployment,
    wait_for,
    write_prompts,
)

# One module, one deployment: its tests run on one xdist worker (--dist loadgroup).
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("test_crash_recovery")]

CRASH_BATCH = "crashpoint"
RECOVERY_TIMEOUT = 240.0


def prompts(batch: str, count: int) -> list[str]:
    return [f"{batch} scene number {index}: a quiet street at dawn" for index in range(count)]


@pytest.fixture(scope="module")
def crashy(deployment_factory, tmp_path_factory) -> Deployment:
    marker = tmp_path_factory.mktemp("crash") / "crashed-once"
    return deployment_factory(
        "crash",
        emulator_knobs={"seed": 3, "time_scale": 0.05},
        location_env={
            "KREA_SYSTEM_CRASH_ONCE": "submit.after_post",
            "KREA_SYSTEM_CRASH_MARKER": str(marker),
            "KREA_SYSTEM_CRASH_BATCH": CRASH_BATCH,
        },
    )


def ledger_rows(deployed: Deployment, batch: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(deployed.ledger_url)
    try:
        with engine.connect() as conn:
            query = sa.select(submissions_table).where(submissions_table.c.batch == batch)
            return [dict(row) for row in conn.execute(query).mappings()]
    finally:
        engine.dispose()


def wait_done(deployed: Deployment, batch: str) -> None:
    wait_for(
        lambda: deployed.batch_done([batch]),
        timeout=RECOVERY_TIMEOUT,
        what=f"batch {batch} materialized after the crash",
        interval=0.5,
        diagnostics=deployed.diagnostics,
    )


def assert_paid_once(
    deployed: Deployment, batch: str, count: int, before: dict[str, Any]
) -> dict[str, int]:
    """Every prompt of the batch has its image; Krea created and billed one job per prompt."""
    stats = deployed.emulator.stats()
    figures = {
        "prompts": count,
        "jobs_created": stats["jobs_created"] - before["jobs_created"],
        "jobs_billed": stats["jobs_billed"] - before["jobs_billed"],
        "duplicates": stats["duplicate_submissions"] - before["duplicate_submissions"],
    }
    rows = ledger_rows(deployed, batch)
    latest = {}
    for row in sorted(rows, key=lambda row: row["attempt"]):
        latest[row["prompt_key"]] = row
    assert len(latest) == count
    assert {row["state"] for row in latest.values()} == {"completed"}, rows
    assert all(row["image_uri"] for row in latest.values())
    assert figures["duplicates"] == 0, figures
    assert figures["jobs_billed"] == count, figures
    assert figures["jobs_created"] == count, figures
    (images_run, *later) = deployed.images_runs(batch)
    assert not later, "the completion sensor launched the images of one batch twice"
    assert images_run.status == DagsterRunStatus.SUCCESS
    assert deployed.check_results(images_run.run_id) == dict.fromkeys(CHECK_NAMES, True)
    return figures


def retried_pair(deployed: Deployment, batch: str) -> tuple[Any, Any]:
    """The crashed discovery run and the retry the daemon launched for it."""
    images = {run.run_id for run in deployed.images_runs(batch)}
    runs = [run for run in deployed.runs(batch) if run.run_id not in images]
    crashed = [run for run in runs if run.status == DagsterRunStatus.FAILURE]
    retries = [run for run in runs if run.tags.get("dagster/parent_run_id")]
    assert len(crashed) == 1 and len(retries) == 1, [(r.run_id, r.status, r.tags) for r in runs]
    assert retries[0].tags["dagster/parent_run_id"] == crashed[0].run_id
    assert retries[0].status == DagsterRunStatus.SUCCESS
    return crashed[0], retries[0]


def test_run_worker_killed_between_post_and_ledger_is_retried_and_pays_once(crashy):
    """A run worker SIGKILLed after Krea created a job but before the ledger recorded it is retried by run_retries, and the retry adopts that job instead of paying again."""
    before = crashy.emulator.stats()
    started = time.monotonic()
    write_prompts(crashy.prompts_dir, CRASH_BATCH, prompts(CRASH_BATCH, 5))
    wait_done(crashy, CRASH_BATCH)
    crashed, _retry = retried_pair(crashy, CRASH_BATCH)
    crash_log = "\n".join(
        record.message or "" for record in crashy.instance.all_logs(crashed.run_id)
    )
    assert "terminated by signal 9 (SIGKILL)" in crash_log, crash_log[-2000:]
    figures = assert_paid_once(crashy, CRASH_BATCH, 5, before)
    # The job Krea created for the killed POST was adopted (reconciled), not paid for again.
    assert crashy.latest_metadata(JOBS_KEY, CRASH_BATCH)["krea/reconciled"] == 1
    print(f"\nrun worker crash point: {figures}, {time.monotonic() - started:.1f} s")


def test_run_worker_killed_from_outside_mid_submission_is_retried_and_pays_once(crashy):
    """A run worker SIGKILLed from outside while it submits a batch is retried, and the retry submits only the prompts Krea never received."""
    batch, count = "killed", 8
    before = crashy.emulator.stats()
    # Slow POSTs, so the kill lands in the middle of the submissions.
    crashy.emulator.configure(latency_ms=400, latency_routes=["POST /generate"])
    started = time.monotonic()
    try:
        write_prompts(crashy.prompts_dir, batch, prompts(batch, count))

        def submitting_worker() -> int | None:
            created = crashy.emulator.stats()["jobs_created"] - before["jobs_created"]
            if created < 3:
                return None
            (run,) = [run for run in crashy.runs(batch) if run.status == DagsterRunStatus.STARTED]
            return crashy.run_pid(run.run_id)

        pid = wait_for(
            submitting_worker,
            timeout=120,
            what="the run worker has submitted 3 jobs",
            interval=0.05,
            diagnostics=crashy.diagnostics,
        )
        worker = psutil.Process(pid)
        assert worker.environ().get("KREA_API_KEY"), "that pid is not a run worker of ours"
        os.kill(pid, signal.SIGKILL)
        killed_at = crashy.emulator.stats()["jobs_created"] - before["jobs_created"]
        assert killed_at < count, "the worker had already submitted everything"
    finally:
        crashy.emulator.configure(latency_ms=0, latency_routes=[])
    wait_done(crashy, batch)
    retried_pair(crashy, batch)
    figures = assert_paid_once(crashy, batch, count, before)
    # The POST in flight at the kill (if any) was settled through GET /jobs, never re-sent blind.
    reconciled = crashy.latest_metadata(JOBS_KEY, batch)["krea/reconciled"]
    assert reconciled <= 1
    print(
        f"\nrun worker kill -9 after {killed_at} of {count} jobs ({reconciled} reconciled): "
        f"{figures}, "
        f"{time.monotonic() - started:.1f} s"
    )


def test_daemon_killed_mid_batch_restarts_and_finishes_the_batch(crashy):
    """The daemon SIGKILLed while a batch renders at Krea is restarted; the completion sensor resumes from its cursor and launches the batch's images exactly once."""
    batch, count = "daemon", 6
    before = crashy.emulator.stats()
    crashy.emulator.configure(render_seconds=8.0)
    started = time.monotonic()
    try:
        write_prompts(crashy.prompts_dir, batch, prompts(batch, count))
        wait_for(
            lambda: crashy.emulator.stats()["jobs_created"] - before["jobs_created"] >= 2,
            timeout=120,
            what="the batch's jobs are being submitted",
            interval=0.1,
            diagnostics=crashy.diagnostics,
        )
        crashy.daemon.kill9()
        pending_at_kill = [
            row for row in ledger_rows(crashy, batch) if row["state"] not in ("completed",)
        ]
        assert crashy.materialized_for(batch) == set(), "killed too late: images already done"
    finally:
        crashy.emulator.configure(render_seconds=None)
    # The deployment's supervisor (Kubernetes, systemd, docker restart policy) starts it again.
    crashy.start_daemon()
    wait_done(crashy, batch)
    figures = assert_paid_once(crashy, batch, count, before)
    assert all(run.status == DagsterRunStatus.SUCCESS for run in crashy.runs(batch))
    print(
        f"\ndaemon kill -9 with {len(pending_at_kill)} of {count} jobs unfinished: {figures}, "
        f"{time.monotonic() - started:.1f} s"
    )
