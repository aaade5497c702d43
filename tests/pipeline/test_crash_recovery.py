"""kill -9 of the run worker at the worst moments, then a re-run: nothing paid twice, nothing lost."""

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from krea_dagster.engine.crashpoints import CRASH_ENV

from .conftest import check_results, manifest_of, materialize, prompt_rows, write_batch

DRIVER = Path(__file__).with_name("crash_driver.py")


@contextmanager
def worker_setup(tmp_path, build, emulator):
    """The assets, a persistent instance, and the command of a separate run-worker process."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    store, ledger = tmp_path / "store", f"sqlite:///{tmp_path / 'ledger.db'}"
    assets = build("crash", store=store, ledger=ledger)
    command = [sys.executable, str(DRIVER), str(tmp_path / "prompts"), str(store), ledger]
    command += [emulator.base_url, emulator.token, "b1"]
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        instance.add_dynamic_partitions(assets.partitions_def.name, ["b1"])
        yield assets, instance, command, {**os.environ, "DAGSTER_HOME": str(home)}


@pytest.mark.parametrize(
    "crash_at",
    ["submit.after_intent", "submit.after_post", "collect.after_download"],
    ids=["before-post", "between-post-and-ledger", "while-downloading"],
)
def test_kill_9_then_rerun_pays_once_and_finishes(
    crash_at, tmp_path, build, emulator, krea, prompts_dir
):
    """A worker killed at a crash point leaves a ledger the next run completes without a duplicate job."""
    write_batch(prompts_dir, "b1", prompt_rows(6))
    with worker_setup(tmp_path, build, emulator) as (assets, instance, command, env):
        env[CRASH_ENV] = crash_at
        worker = subprocess.run(command, env=env, capture_output=True, timeout=300)
        assert worker.returncode == -signal.SIGKILL, worker.stderr.decode()[-3000:]
        crashed = emulator.stats()
        result = materialize(assets, "b1", instance=instance, krea=krea)
        assert result.success
        stats = emulator.stats()
        assert stats["duplicate_submissions"] == 0
        assert stats["jobs_created"] == 6
        assert stats["jobs_billed"] == 6
        assert set(manifest_of(result, assets)["status"]) == {"completed"}
        assert check_results(result)["no_duplicate_paid_jobs"] is True
        if crash_at == "submit.after_intent":
            assert crashed["jobs_created"] == 0
        if crash_at == "submit.after_post":
            assert crashed["jobs_created"] == 1


def test_terminating_the_run_cancels_its_pending_jobs(tmp_path, build, emulator, prompts_dir):
    """An interrupted run (SIGINT, what terminating a run delivers) cancels its jobs still rendering at Krea."""
    import time

    emulator.configure(render_seconds=120.0, time_scale=1.0)
    write_batch(prompts_dir, "b1", prompt_rows(3))
    with worker_setup(tmp_path, build, emulator) as (assets, _instance, command, env):
        worker = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 120
            while emulator.stats()["jobs_created"] < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2.0)  # the images step is now polling the rendering jobs
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.send_signal(signal.SIGUSR1)  # the driver dumps every thread's stack
                time.sleep(2)
                worker.kill()
                _, stderr = worker.communicate(timeout=30)
                raise AssertionError(
                    "the interrupted worker did not exit; its threads:\n"
                    + stderr.decode(errors="replace")[-20000:]
                ) from None
        finally:
            if worker.poll() is None:
                worker.kill()
        stats = emulator.stats()
        assert stats["jobs_by_status"]["cancelled"] == 3, worker.stderr.read().decode()[-2000:]
        assert stats["jobs_billed"] == 0
        assert {row.state for row in assets.pipeline.ledger.rows("crash", "b1")} == {"cancelled"}
