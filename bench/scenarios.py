"""One function per scenario, named for what it times; each returns a JSON-ready dict.

Every scenario starts from a reset emulator (jobs, counters, knobs and accounts back to the
values the bench started it with) and a fresh work directory, ledger and Dagster instance, so
the counters it reads are its own.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from bench import emulator_capacity
from bench.naive import generate_in_parallel, generate_sequentially
from bench.params import BenchParams
from bench.workload import (
    BATCH,
    api_requests,
    build_assets,
    diff_requests,
    krea_span,
    make_resource,
    materialize,
    post_jobs,
    prompt_texts,
    record_submitted,
    request_body,
    step_key,
    step_times,
    total_requests,
    write_prompts,
)
from krea_dagster import build_krea_sensors
from krea_dagster.emulator.testing import SpawnedEmulator
from krea_dagster.engine.crashpoints import CRASH_ENV

REPO = Path(__file__).resolve().parent.parent
POST_ROUTE = "POST /generate/image/{provider}/{model}"


@dataclass
class Bench:
    """What every scenario needs: the parameters, the running emulator, a scratch directory."""

    params: BenchParams
    emulator: SpawnedEmulator
    scratch: Path

    def workdir(self, name: str) -> Path:
        path = self.scratch / name
        path.mkdir(parents=True)
        return path

    def fresh_emulator(self) -> None:
        self.emulator.reset(config=True, accounts=True)

    def requests(self) -> dict[str, int]:
        return api_requests(self.emulator.stats())


@contextlib.contextmanager
def dagster_instance(workdir: Path) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance on disk (SQLite storages) that subprocesses can open too."""
    home = workdir / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


def _breakdown(bench: Bench, start: float, end: float) -> dict[str, float]:
    """Where a krea-dagster wall goes: before the first job exists at Krea, Krea's own span
    (first job created to last job completed: the account's concurrency at work), and after."""
    first_created, last_completed = krea_span(bench.emulator.base_url, bench.emulator.token)
    return {
        "before_first_job_seconds": first_created - start,
        "krea_span_seconds": last_completed - first_created,
        "after_last_job_seconds": end - last_completed,
    }


def _per_image(requests: dict[str, int], images: int) -> float:
    return total_requests(requests) / images if images else math.nan


# -- 1./2. throughput and requests per image ------------------------------------------------------


def time_inline_batch(bench: Bench, size: int, tag: str = "inline") -> dict[str, Any]:
    """krea-dagster, one run materializing prompts, jobs and images (images polls inline).

    ``seconds``: from the jobs step's STEP_START to the images asset's materialization event
    (logged once the manifest is stored): submitting, waiting, downloading, verifying,
    storing, the manifest, its metadata. The prompts step and run start-up are excluded
    (``run_seconds`` has them).
    """
    bench.fresh_emulator()
    params = bench.params
    workdir = bench.workdir(f"{tag}-{size}")
    write_prompts(workdir / "prompts", BATCH, prompt_texts(size, f"{tag} {size}"))
    assets = build_assets(workdir, params)
    krea = make_resource(bench.emulator.base_url, bench.emulator.token, params)
    with dagster_instance(workdir) as instance:
        started = time.perf_counter()
        result = materialize(assets, instance, krea)
        run_seconds = time.perf_counter() - started
        times = step_times(instance, result.run_id)
        manifest = result.output_for_node(step_key(assets, "images"))
    jobs, images = step_key(assets, "jobs"), step_key(assets, "images")
    start, end = times[f"{jobs}:STEP_START"], times[f"{images}:ASSET_MATERIALIZATION"]
    seconds = end - start
    requests = bench.requests()
    done = int((manifest["status"] == "completed").sum())
    return {
        "size": size,
        "seconds": seconds,
        **_breakdown(bench, start, end),
        "run_seconds": run_seconds,
        "jobs_step_seconds": times[f"{jobs}:STEP_SUCCESS"] - times[f"{jobs}:STEP_START"],
        "images": done,
        "requests": requests,
        "requests_per_image": _per_image(requests, done),
        "ideal_seconds": params.ideal_seconds(size),
        "over_ideal": seconds / params.ideal_seconds(size),
    }


def time_deferred_batch(bench: Bench, size: int) -> dict[str, Any]:
    """krea-dagster, deferred: a jobs run, completion-sensor ticks, then the images run.

    Ticks are evaluated in this process every ``sensor_interval`` (tick start to tick start,
    like the daemon's minimum interval); when a tick requests the images run it is executed at
    once in process. ``seconds``: jobs STEP_START to the images materialization, so it holds
    the wait for the next tick and the images run's start-up, but not a run launcher's
    (a daemon launching a real run adds its own seconds).
    """
    bench.fresh_emulator()
    params = bench.params
    workdir = bench.workdir(f"deferred-{size}")
    write_prompts(workdir / "prompts", BATCH, prompt_texts(size, f"deferred {size}"))
    assets = build_assets(workdir, params)
    krea = make_resource(bench.emulator.base_url, bench.emulator.token, params)
    (sensor,) = build_krea_sensors(assets, discovery=False)
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    with dagster_instance(workdir) as instance:
        jobs_run = materialize(assets, instance, krea, roles=("prompts", "jobs"))
        cursor, ticks, tick_seconds = None, 0, []
        next_tick = time.perf_counter()
        while True:
            started = time.perf_counter()
            with dg.build_sensor_context(
                instance_ref=instance.get_ref(),
                definitions=defs,
                cursor=cursor,
                resources=defs.resources,
            ) as context:
                tick = sensor.evaluate_tick(context)
            tick_seconds.append(time.perf_counter() - started)
            ticks += 1
            cursor = tick.cursor
            if tick.run_requests:
                break
            next_tick += params.sensor_interval
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        images_run = materialize(assets, instance, krea, roles=("images",))
        jobs_times = step_times(instance, jobs_run.run_id)
        images_times = step_times(instance, images_run.run_id)
        manifest = images_run.output_for_node(step_key(assets, "images"))
    jobs, images = step_key(assets, "jobs"), step_key(assets, "images")
    start = jobs_times[f"{jobs}:STEP_START"]
    end = images_times[f"{images}:ASSET_MATERIALIZATION"]
    seconds = end - start
    requests = bench.requests()
    done = int((manifest["status"] == "completed").sum())
    return {
        "size": size,
        "seconds": seconds,
        **_breakdown(bench, start, end),
        "ticks": ticks,
        "tick_seconds_median": statistics.median(tick_seconds),
        "images_step_seconds": images_times[f"{images}:STEP_SUCCESS"]
        - images_times[f"{images}:STEP_START"],
        "images": done,
        "requests": requests,
        "requests_per_image": _per_image(requests, done),
        "ideal_seconds": params.ideal_seconds(size),
        "over_ideal": seconds / params.ideal_seconds(size),
    }


def _naive(bench: Bench, size: int, parallel: bool) -> dict[str, Any]:
    bench.fresh_emulator()
    params = bench.params
    kind = "parallel" if parallel else "sequential"
    workdir = bench.workdir(f"naive-{kind}-{size}")
    bodies = [request_body(params, p) for p in prompt_texts(size, f"naive {kind} {size}")]
    args = (
        bench.emulator.base_url,
        bench.emulator.token,
        f"/generate/image/{params.model}",
        bodies,
        params.poll_interval,
        workdir / "images",
    )
    if parallel:
        run = generate_in_parallel(*args, workers=params.parallel_workers)
    else:
        run = generate_sequentially(*args)
    requests = bench.requests()
    return {
        "size": size,
        "seconds": run.seconds,
        "images": run.images,
        "requests": requests,
        "requests_per_image": _per_image(requests, run.images),
        "ideal_seconds": params.ideal_seconds(size),
        "over_ideal": run.seconds / params.ideal_seconds(size),
    }


def time_naive_sequential(bench: Bench, size: int) -> dict[str, Any]:
    """Baseline: submit, poll, download, one prompt after the other (``bench/naive.py``)."""
    return _naive(bench, size, parallel=False)


def time_naive_parallel(bench: Bench, size: int) -> dict[str, Any]:
    """Baseline: the same per-prompt loop on a thread pool of 8."""
    return _naive(bench, size, parallel=True)


def extrapolate(points: list[tuple[int, float]], size: int) -> float:
    """Least-squares line through measured (size, seconds), evaluated at ``size``."""
    if len(points) == 1:
        only_size, only_seconds = points[0]
        return only_seconds * size / only_size
    xs, ys = [float(p[0]) for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return mean_y + slope * (size - mean_x)


# -- 3. completion-sensor tick ------------------------------------------------------------------


def time_completion_tick(bench: Bench, pending: int) -> dict[str, Any]:
    """One completion-sensor tick over ``pending`` pending jobs: seconds and API requests.

    The jobs are POSTed straight to the emulator (backlogged beyond the account's concurrency,
    as a big batch is) and their ledger rows written in bulk (``workload.record_submitted``);
    then ``sensor_ticks`` ticks run one after the other, each with the previous cursor, the
    way the daemon evaluates them. Each tick's time covers everything the sensor does: reading
    the pending rows, polling Krea, writing status changes, the per-batch progress and run
    requests.
    """
    bench.fresh_emulator()
    params = bench.params
    workdir = bench.workdir(f"sensor-{pending}")
    prompts = prompt_texts(pending, f"sensor {pending}")
    jobs = post_jobs(bench.emulator.base_url, bench.emulator.token, params, prompts)
    assets = build_assets(workdir, params)
    record_submitted(assets, params, prompts, jobs)
    krea = make_resource(bench.emulator.base_url, bench.emulator.token, params)
    (sensor,) = build_krea_sensors(assets, discovery=False)
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    ticks = []
    with dagster_instance(workdir) as instance:
        instance.add_dynamic_partitions(assets.partitions_def.name or "", [BATCH])
        cursor = None
        for _ in range(params.sensor_ticks):
            before = bench.requests()
            started = time.perf_counter()
            with dg.build_sensor_context(
                instance_ref=instance.get_ref(),
                definitions=defs,
                cursor=cursor,
                resources=defs.resources,
            ) as context:
                tick = sensor.evaluate_tick(context)
            seconds = time.perf_counter() - started
            cursor = tick.cursor
            requests = diff_requests(bench.requests(), before)
            ticks.append({"seconds": seconds, "requests": requests})
    return {
        "pending": pending,
        "still_pending_after": len(assets.pipeline.ledger.pending(assets.prefix)),
        "ticks": ticks,
        "seconds": statistics.median(t["seconds"] for t in ticks),
        "requests": statistics.median(total_requests(t["requests"]) for t in ticks),
    }


# -- 4./5. images step: memory and CPU ----------------------------------------------------------


def measure_images_step(bench: Bench, size: int) -> dict[str, Any]:
    """Peak RSS and CPU of a process that runs only the images step over ``size`` images.

    Preparation (not measured): the prompts and jobs steps run here with the account's
    concurrency raised and a short render so the jobs finish fast, and the bench waits until
    the emulator reports every job completed. Then ``bench/images_step.py`` runs the images
    asset alone in a fresh process and measures itself (see its docstring).
    """
    bench.fresh_emulator()
    params = bench.params
    emulator = bench.emulator
    emulator.set_concurrency(max(params.concurrency, size))
    emulator.configure(render_seconds=0.05)
    workdir = bench.workdir(f"images-{size}")
    write_prompts(workdir / "prompts", BATCH, prompt_texts(size, f"memory {size}"))
    assets = build_assets(workdir, params)
    krea = make_resource(emulator.base_url, emulator.token, params)
    with dagster_instance(workdir) as instance:
        materialize(assets, instance, krea, roles=("prompts", "jobs"))
        home = instance.root_directory
    emulator.wait_until(
        lambda stats: stats["jobs_by_status"]["completed"] >= size, timeout=60 + size / 50
    )
    before = bench.requests()
    spec = {
        "mode": params.mode,
        "workdir": str(workdir),
        "base_url": emulator.base_url,
        "token": emulator.token,
    }
    process = subprocess.run(
        [sys.executable, "-m", "bench.images_step", json.dumps(spec)],
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": home},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"images step failed ({process.returncode}): {process.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    report["size"] = size
    report["requests"] = diff_requests(bench.requests(), before)
    report["cpu_ms_per_image"] = report["cpu_seconds"] / report["images"] * 1000
    report["rss_growth_bytes"] = report["rss_peak_bytes"] - report["rss_before_bytes"]
    return report


# -- 6. emulator capacity -----------------------------------------------------------------------


def measure_emulator_capacity(bench: Bench) -> dict[str, Any]:
    """``bench/emulator_capacity.py`` with this bench's counts (its own emulators)."""
    params = bench.params
    args = argparse.Namespace(
        requests=params.capacity_requests,
        clients=params.capacity_clients,
        live=params.capacity_live,
        rounds=params.capacity_rounds,
        render_seconds=600.0,
        images=params.capacity_images,
    )
    report: dict[str, Any] = {"png_ms_1024": emulator_capacity.measure_png_ms(20)}
    report.update(emulator_capacity.bench_get_job_rate(args))
    report.update(emulator_capacity.bench_cdn(args))
    return report


# -- 7. crash cost ------------------------------------------------------------------------------


def count_crash_cost(bench: Bench, point: str) -> dict[str, Any]:
    """kill -9 of the run worker at the ``crash_after``-th pass through ``point``, then a re-run.

    The worker (``bench/crash_driver.py``) materializes prompts, jobs and images in a
    subprocess and is SIGKILLed mid-batch. The re-run is the jobs run, then the images run, in
    this process, so the counters can be read in between:

    - ``extra_billed_jobs``: jobs billed beyond one per prompt (the goal: 0), with
      ``duplicate_submissions`` (the emulator's same-body detector) and ``extra_posts``;
    - ``extra_requests``: what the re-run's jobs run asked Krea beyond the POSTs still owed
      (prompts the killed worker never submitted): reconciliation's ``GET /jobs`` listing and
      any ``GET /jobs/{id}``, plus any POST sent twice;
    - ``rerun_images_requests``: the images run's polls (work the killed run left undone, not
      extra); ``extra_cdn_downloads``: images downloaded twice.
    """
    bench.fresh_emulator()
    params = bench.params
    size = params.crash_size
    workdir = bench.workdir(f"crash-{point}")
    write_prompts(workdir / "prompts", BATCH, prompt_texts(size, f"crash {point}"))
    assets = build_assets(workdir, params)
    krea = make_resource(bench.emulator.base_url, bench.emulator.token, params)
    spec = {
        "mode": params.mode,
        "workdir": str(workdir),
        "base_url": bench.emulator.base_url,
        "token": bench.emulator.token,
        "crash_after": params.crash_after,
    }
    with dagster_instance(workdir) as instance:
        instance.add_dynamic_partitions(assets.partitions_def.name or "", [BATCH])
        worker = subprocess.run(
            [sys.executable, "-m", "bench.crash_driver", json.dumps(spec)],
            cwd=REPO,
            env={**os.environ, "DAGSTER_HOME": instance.root_directory, CRASH_ENV: point},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if worker.returncode != -signal.SIGKILL:
            raise RuntimeError(f"the worker was not killed at {point}: {worker.stderr[-3000:]}")
        crashed = bench.emulator.stats()
        started = time.perf_counter()
        materialize(assets, instance, krea, roles=("prompts", "jobs"))
        after_jobs = bench.emulator.stats()
        result = materialize(assets, instance, krea, roles=("images",))
        rerun_seconds = time.perf_counter() - started
        manifest = result.output_for_node(step_key(assets, "images"))
    stats = bench.emulator.stats()
    owed = size - crashed["jobs_created"]
    rerun_jobs = diff_requests(api_requests(after_jobs), api_requests(crashed))
    return {
        "point": point,
        "size": size,
        "crash_after": params.crash_after,
        "jobs_created_before_crash": crashed["jobs_created"],
        "requests_before_crash": api_requests(crashed),
        "rerun_jobs_requests": rerun_jobs,
        "rerun_images_requests": diff_requests(api_requests(stats), api_requests(after_jobs)),
        "rerun_seconds": rerun_seconds,
        "images": int((manifest["status"] == "completed").sum()),
        "jobs_billed": stats["jobs_billed"],
        "extra_billed_jobs": stats["jobs_billed"] - size,
        "duplicate_submissions": stats["duplicate_submissions"],
        "extra_posts": api_requests(stats).get(POST_ROUTE, 0) - size,
        "extra_requests": total_requests(rerun_jobs) - owed,
        "extra_cdn_downloads": stats["cdn_downloads"] - size,
    }
