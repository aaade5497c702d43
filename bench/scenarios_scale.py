"""Scenarios of what a deployment and a user see at scale: one function each, JSON-ready dicts.

- ``time_discovery_tick``: the discovery sensor over one big unchanged prompt file.
- ``time_end_to_end``: the wall time a user waits, from launching ``dagster asset
  materialize`` (prompts + jobs + images of one partition, a real Dagster run in its own
  process) until the manifest is stored, with Dagster's own start-up beside it.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from bench.scenarios import Bench, dagster_instance
from bench.workload import (
    BATCH,
    QUIET_RUN_CONFIG,
    build_assets,
    krea_span,
    make_resource,
    prompt_texts,
    step_key,
    total_requests,
    write_prompts,
)
from krea_dagster import build_krea_sensors
from krea_dagster.node import KreaImageAssets

REPO = Path(__file__).resolve().parent.parent
EXECUTORS = ("in_process", "multiprocess")


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: Any, cursor: Any):
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, cursor=cursor, resources=defs.resources
    ) as context:
        return sensor.evaluate_tick(context)


# -- discovery over a big unchanged file --------------------------------------------------------


def time_discovery_tick(bench: Bench, rows: int) -> dict[str, Any]:
    """Discovery ticks over one CSV of ``rows`` prompts: the first (reads it), then unchanged.

    The file's mtime is set a minute back (a file the user dropped earlier; a file modified in
    the last 2 s is read every tick until it settles). Then: the first tick (reads and hashes
    the file, adds the partition and requests its run), ``discovery_ticks`` ticks with the file
    unchanged, each with the previous cursor (median reported), and one tick after ``touch``
    (new mtime, same bytes: read once, nothing launched).
    """
    params = bench.params
    workdir = bench.workdir(f"discovery-{rows}")
    path = write_prompts(workdir / "prompts", BATCH, prompt_texts(rows, "discovery"))
    _age(path, 60)
    assets = build_assets(workdir, params)
    krea = make_resource(bench.emulator.base_url, bench.emulator.token, params)
    (sensor,) = build_krea_sensors(assets, completion=False)
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    with dagster_instance(workdir) as instance:
        started = time.perf_counter()
        first = _tick(sensor, instance, defs, None)
        first_seconds = time.perf_counter() - started
        for request in first.dynamic_partitions_requests:
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        cursor = first.cursor
        unchanged = []
        for _ in range(params.discovery_ticks):
            started = time.perf_counter()
            result = _tick(sensor, instance, defs, cursor)
            unchanged.append(time.perf_counter() - started)
            if result.run_requests:
                raise RuntimeError("an unchanged file launched a run")
            cursor = result.cursor
        _age(path, 30)  # touched: new fingerprint, same content
        started = time.perf_counter()
        touched = _tick(sensor, instance, defs, cursor)
        touched_seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "file_bytes": path.stat().st_size,
        "first_tick_seconds": first_seconds,
        "first_tick_runs": len(first.run_requests),
        "unchanged_tick_seconds": unchanged,
        "seconds": statistics.median(unchanged),
        "touched_tick_seconds": touched_seconds,
        "touched_tick_runs": len(touched.run_requests),
        "cursor_bytes": len(cursor or ""),
    }


def _age(path: Path, seconds: float) -> None:
    stamp = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(stamp, stamp))


# -- launch to manifest -------------------------------------------------------------------------


def time_python_import_dagster() -> float:
    """Seconds for a fresh interpreter to ``import dagster`` (a floor under any Dagster command)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dagster"], check=True, cwd=REPO)
    return time.perf_counter() - started


@dataclass
class Launched:
    """One ``dagster asset materialize`` command: when it started and ended (epoch seconds),
    whether the bench killed it, and the first timestamp of each event of its run
    (``<step>:<EVENT>``, ``run:<EVENT>`` for run events)."""

    launched: float
    exited: float
    killed: bool
    events: dict[str, float]

    @property
    def command_seconds(self) -> float:
        return self.exited - self.launched


def launch_materialize(
    instance: dg.DagsterInstance,
    *,
    module: str,
    selection: str,
    env: dict[str, str],
    executor: str = "in_process",
    partition: str | None = None,
    timeout: float = 600.0,
    kill_when: Callable[[], bool] | None = None,
) -> Launched:
    """Run ``dagster asset materialize -m module --select selection`` in a fresh process on
    ``instance`` (its ``DAGSTER_HOME``) with ``executor``, as a user launches it.

    ``kill_when``, when given, is asked every 20 ms while the command runs; once it says yes
    the process is SIGKILLed (the run worker dies mid-step, nothing flushed).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    run_config = {**QUIET_RUN_CONFIG, "execution": {"config": {executor: {}}}}
    command = [
        sys.executable, "-m", "dagster", "asset", "materialize",
        "-m", module, "-d", str(REPO), "--select", selection,
        *(["--partition", partition] if partition else []),
        "--config-json", json.dumps(run_config),
    ]  # fmt: skip
    full_env = {
        **os.environ,
        **env,
        "DAGSTER_HOME": instance.root_directory,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    killed = False
    with tempfile.TemporaryFile("w+") as stderr:
        launched = time.time()
        process = subprocess.Popen(
            command, cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
        try:
            while process.poll() is None:
                if time.time() - launched > timeout:
                    raise TimeoutError(f"{' '.join(command[:8])} ran over {timeout:.0f} s")
                if kill_when is not None and not killed and kill_when():
                    os.kill(process.pid, signal.SIGKILL)
                    killed = True
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        exited = time.time()
        stderr.seek(0)
        errors = stderr.read()
    if process.returncode != 0 and not killed:
        raise RuntimeError(
            f"dagster asset materialize failed ({process.returncode}): {errors[-3000:]}"
        )
    if kill_when is not None and not killed:
        raise RuntimeError("the command finished before the bench could kill it")
    (run,) = instance.get_runs(limit=1)
    events: dict[str, float] = {}
    for entry in instance.all_logs(run.run_id):
        event = entry.dagster_event
        if event is not None:
            events.setdefault(
                f"{event.step_key or 'run'}:{event.event_type_value}", entry.timestamp
            )
    return Launched(launched, exited, killed, events)


def krea_selection(assets: KreaImageAssets) -> str:
    """The prompts, jobs and images assets of one krea-dagster instance, for ``--select``."""
    return ",".join(
        "/".join(asset.key.path) for asset in (assets.prompts, assets.jobs, assets.images)
    )


def e2e_env(bench: Bench, workdir: Path, **resource: Any) -> dict[str, str]:
    """The environment ``bench/e2e_defs.py`` reads: the work directory, the emulator and the
    resource fields set beyond the bench's defaults."""
    spec = {
        "mode": bench.params.mode,
        "workdir": str(workdir),
        "base_url": bench.emulator.base_url,
        "token": bench.emulator.token,
        "resource": resource,
    }
    return {"KREA_BENCH_E2E": json.dumps(spec)}


def time_end_to_end(bench: Bench, size: int, executor: str) -> dict[str, Any]:
    """``dagster asset materialize`` of prompts, jobs and images for one partition, timed from
    the launch of the command to the images asset's materialization (the manifest is stored).

    A fresh process, as a user runs it: it imports Dagster and the code location
    (``bench/e2e_defs.py``), creates the run in an on-disk instance (SQLite under
    ``DAGSTER_HOME``, the instance the other scenarios use) and executes it with ``executor``
    (``multiprocess``, Dagster's default: one process per step; ``in_process``: every step in
    the command's process), selected by run config. The partition exists beforehand (the
    discovery sensor would have added it). The breakdown: ``startup_seconds`` (launch to the
    first step's start: interpreter, imports, code loading, run creation, the executor and,
    multiprocess, the step process), ``steps`` (each step's start and end),
    ``handoff_seconds`` (between one step's end and the next one's start), ``exit_seconds``
    (manifest to the command's exit, not waited for by a user watching the UI but by a
    script).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    bench.fresh_emulator()
    params = bench.params
    workdir = bench.workdir(f"e2e-{executor}-{size}")
    write_prompts(workdir / "prompts", BATCH, prompt_texts(size, f"e2e {executor} {size}"))
    assets = build_assets(workdir, params)
    with dagster_instance(workdir) as instance:
        instance.add_dynamic_partitions(assets.partitions_def.name or "", [BATCH])
        run = launch_materialize(
            instance,
            module="bench.e2e_defs",
            selection=krea_selection(assets),
            env=e2e_env(bench, workdir),
            executor=executor,
            partition=BATCH,
            timeout=600 + size,
        )
        requests = bench.requests()
    images_done = stored_images(assets)
    result = krea_run_breakdown(bench, assets, run)
    ideal = params.ideal_seconds(size)
    return {
        "size": size,
        "executor": executor,
        **result,
        "ideal_seconds": ideal,
        "over_ideal": result["seconds"] / ideal,
        "images": images_done,
        "requests": requests,
        "requests_per_image": total_requests(requests) / images_done if images_done else 0.0,
    }


def stored_images(assets: KreaImageAssets) -> int:
    """Prompts of the bench batch whose completed job's image is in the store (ledger)."""
    return sum(
        1
        for row in assets.pipeline.ledger.rows(assets.prefix, BATCH)
        if row.image_uri and row.state == "completed"
    )


def krea_run_breakdown(bench: Bench, assets: KreaImageAssets, run: Launched) -> dict[str, Any]:
    """Where a launched krea-dagster run's time went: ``seconds`` (launch to the manifest),
    start-up, each step, the hand-overs, Krea's span, and the exit.

    Reads the account's jobs (``GET /jobs``): call it after reading the request counters.
    """
    events, launched = run.events, run.launched
    keys = [step_key(assets, role) for role in ("prompts", "jobs", "images")]
    manifest_at = events[f"{keys[2]}:ASSET_MATERIALIZATION"]
    steps = {
        role: {
            "start": events[f"{key}:STEP_START"] - launched,
            "end": events[f"{key}:STEP_SUCCESS"] - launched,
        }
        for role, key in zip(("prompts", "jobs", "images"), keys, strict=True)
    }
    handoff = (steps["jobs"]["start"] - steps["prompts"]["end"]) + (
        steps["images"]["start"] - steps["jobs"]["end"]
    )
    first_created, last_completed = krea_span(bench.emulator.base_url, bench.emulator.token)
    return {
        "seconds": manifest_at - launched,
        "startup_seconds": steps["prompts"]["start"],
        "run_start_seconds": events[f"run:{dg.DagsterEventType.RUN_START.value}"] - launched,
        "steps": steps,
        "handoff_seconds": handoff,
        "before_first_job_seconds": first_created - launched,
        "krea_span_seconds": last_completed - first_created,
        "after_last_job_seconds": manifest_at - last_completed,
        "jobs_start_to_manifest_seconds": manifest_at - launched - steps["jobs"]["start"],
        "exit_seconds": run.exited - manifest_at,
        "command_seconds": run.command_seconds,
    }
