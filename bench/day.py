"""A time-scaled day of work through a production-like deployment (issue 15).

``python -m bench.day [--batches 100] [--per-batch 200]`` drops ``batches`` prompt files of
``per-batch`` prompts, one after the other, into the prompt source of the system tests'
deployment (``tests/system/harness.py``): the real ``dagster-daemon`` and a code server on a
PostgreSQL instance (run, event-log and schedule storage), the queued run coordinator limited
to two run workers at once, the krea ledger on PostgreSQL, the image store on ``s3://`` (the
moto server of ``scripts/services/``) and a krea-emulator subprocess whose renders are
time-scaled. Everything is deferred, as in production: discovery launches each batch's jobs
run, the completion sensor polls, stores images as jobs complete and launches its images run.

Files are fed so that at most ``--in-flight`` batches are between their drop and their images
materialization: the load the ticks see stays the same all day while the ledger, the event log
and the store fill up, so the tick times at the start and the end of the day differ only by the
history. Results (``day_*`` keys, ``completion_tick_end_over_start``) are merged into
``bench/results/latest.json``, every other key kept.
"""

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "latest.json"
PREFIX = "system"
# The deployment's sensors tick every 2 s (krea_location.SENSOR_INTERVAL_SECONDS); the share of
# the day whose ticks count as "start" and "end".
EDGE_FRACTION = 0.15


def _say(message: str) -> None:
    print(f"[day {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def services_env() -> dict[str, str]:
    """PostgreSQL and the S3 server: the environment's (``eval "$(scripts/services/up.sh)"``)
    when it names both, else started (or found) by ``scripts/services/up.sh postgres s3``."""
    names = ("KREA_TEST_PG_URL", "KREA_TEST_S3_BUCKET", "AWS_ENDPOINT_URL")
    if all(os.environ.get(name) for name in names):
        return {
            name: value
            for name, value in os.environ.items()
            if name.startswith(("AWS_", "KREA_TEST_"))
        }
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "services" / "up.sh"), "postgres", "s3"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "KREA_PYTHON": sys.executable},
    )
    if out.returncode != 0:
        raise RuntimeError(f"scripts/services/up.sh postgres s3 failed:\n{out.stderr[-2000:]}")
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


def _admin(pg_url: str) -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    return psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True
    )


def _database(pg_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    with _admin(pg_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(pg_url).set(database=name).render_as_string(hide_password=False)


def _drop(pg_url: str, name: str) -> None:
    with contextlib.suppress(Exception), _admin(pg_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _prompts(batch: int, count: int) -> list[str]:
    return [f"day batch {batch} prompt {index}: a lighthouse at dusk" for index in range(count)]


def _tick_durations(instance: Any, name: str) -> list[tuple[float, float]]:
    """(start timestamp, seconds) of every finished tick of the sensor called ``name``."""
    from dagster._core.scheduler.instigation import InstigatorType as Kind

    ticks: list[tuple[float, float]] = []
    for state in instance.all_instigator_state(instigator_type=Kind.SENSOR):
        if state.name != name:
            continue
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id):
            if tick.end_timestamp is not None:
                ticks.append((tick.timestamp, tick.end_timestamp - tick.timestamp))
    return sorted(ticks)


def _run_stats(instance: Any) -> dict[str, float]:
    """Median seconds a run waited for a worker (created to started) and ran, by kind."""
    waited: list[float] = []
    ran: dict[str, list[float]] = {"jobs": [], "images": []}
    for record in instance.get_run_records():
        run = record.dagster_run
        if record.start_time is None or record.end_time is None:
            continue
        waited.append(record.start_time - record.create_timestamp.timestamp())
        keys = {key.path[-1] for key in (run.asset_selection or [])}
        ran["images" if "images" in keys else "jobs"].append(record.end_time - record.start_time)
    return {
        "run_wait_seconds_median": statistics.median(waited) if waited else 0.0,
        "jobs_run_seconds_median": statistics.median(ran["jobs"]) if ran["jobs"] else 0.0,
        "images_run_seconds_median": statistics.median(ran["images"]) if ran["images"] else 0.0,
    }


IDLE_TICKS = 3


def _idle_ticks(deployed: Any, *, since: float, deadline: float) -> tuple[float, float]:
    """Median seconds of the discovery and completion ticks that start after ``since``: the
    first one is skipped (it may hold the last one's work), the next ``IDLE_TICKS`` count."""
    medians = []
    for name in (f"{PREFIX}_batch_discovery", f"{PREFIX}_completion"):
        while True:
            ticks = [s for t, s in _tick_durations(deployed.instance, name) if t >= since]
            if len(ticks) > IDLE_TICKS:
                medians.append(statistics.median(ticks[1 : IDLE_TICKS + 1]))
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {len(ticks)} tick(s) since {since:.0f}")
            time.sleep(1.0)
    return medians[0], medians[1]


def _edges(ticks: list[tuple[float, float]], start: float, end: float) -> tuple[float, float]:
    """Median tick seconds in the first and the last ``EDGE_FRACTION`` of the day."""
    span = end - start
    first = [s for t, s in ticks if start <= t <= start + EDGE_FRACTION * span]
    last = [s for t, s in ticks if end - EDGE_FRACTION * span <= t <= end]
    if not first or not last:
        raise RuntimeError(f"too few ticks to compare the day's start and end: {len(ticks)}")
    return statistics.median(first), statistics.median(last)


def run_day(
    *,
    batches: int,
    per_batch: int,
    in_flight: int,
    time_scale: float,
    concurrency: int,
    scratch: Path,
    timeout: float,
) -> dict[str, Any]:
    """The day, start to end; the raw figures."""
    sys.path.insert(0, str(REPO))
    from krea_dagster.emulator.testing import spawn_emulator
    from tests.system.harness import IMAGES_KEY, Deployment, write_prompts

    env = services_env()
    pg_url = env["KREA_TEST_PG_URL"]
    s3_env = {k: v for k, v in env.items() if k.startswith("AWS_")}
    suffix = secrets.token_hex(4)
    names = (f"krea_day_dagster_{suffix}", f"krea_day_ledger_{suffix}")
    dagster_url, ledger_url = (_database(pg_url, name) for name in names)
    root = scratch / f"day-{suffix}"
    root.mkdir(parents=True)
    knobs = {
        "seed": 15,
        "time_scale": time_scale,
        "concurrency": concurrency,
        "backlog": max(2_000, per_batch * in_flight),
        "balance_usd": 10.0 * batches * per_batch,
    }
    (root / "emulator.json").write_text(json.dumps(knobs), encoding="utf-8")
    token = f"krday{secrets.token_hex(4)}:kSECRET{secrets.token_hex(16)}"
    prompts_total = batches * per_batch
    emulator = spawn_emulator("--config", str(root / "emulator.json"), "--token", token)
    deployed = None
    try:
        deployed = Deployment(
            root,
            dagster_db_url=dagster_url,
            ledger_url=ledger_url,
            store_uri=f"s3://{env['KREA_TEST_S3_BUCKET']}/day/{suffix}",
            s3_env=s3_env,
            emulator=emulator,
            api_key=token,
        )
        # Two run workers: at most two runs in progress at once.
        config_file = deployed.home / "dagster.yaml"
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        config["concurrency"]["runs"]["max_concurrent_runs"] = 2
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        _say(f"starting the deployment; {batches} batches x {per_batch} prompts")
        deployed.start()
        deadline = time.monotonic() + timeout
        # Idle ticks before the first file and after the last batch: the same (no) work, with
        # no history and with the whole day's, so they differ only by what history costs.
        idle_start = _idle_ticks(deployed, since=time.time(), deadline=deadline)
        started = time.time()
        written = 0
        done: set[str] = set()
        names_all = [f"day{index:03d}" for index in range(batches)]
        last_report = 0.0
        while len(done) < batches:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the day did not finish in {timeout:.0f} s: {len(done)} of {batches} "
                    f"batches done\n{deployed.diagnostics()[-4000:]}"
                )
            done = set(deployed.materialized(IMAGES_KEY)) & set(names_all)
            while written < batches and written - len(done) < in_flight:
                write_prompts(
                    deployed.prompts_dir, names_all[written], _prompts(written, per_batch)
                )
                written += 1
            if deployed.failed_runs():
                raise RuntimeError(f"a run failed:\n{deployed.diagnostics()[-6000:]}")
            if time.monotonic() - last_report > 30:
                _say(f"{len(done)}/{batches} batches done, {written} dropped")
                last_report = time.monotonic()
            time.sleep(0.5)
        while not all(run.is_finished for run in deployed.runs()):
            time.sleep(0.5)
        ended = time.time()
        _say(f"day done in {ended - started:.0f} s")
        idle_end = _idle_ticks(deployed, since=ended, deadline=deadline)
        day = _measure(deployed, ledger_url, dagster_url, started, ended, prompts_total, batches)
        for index, name in enumerate(("discovery", "completion")):
            first, last = idle_start[index], idle_end[index]
            day[f"{name}_tick_start_seconds"] = first
            day[f"{name}_tick_end_seconds"] = last
            day[f"{name}_tick_end_over_start"] = last / first
        return day
    finally:
        if deployed is not None:
            deployed.stop()
            # The processes' logs outlive the scratch directory (test-artifacts/ is git-ignored).
            kept = REPO / "test-artifacts" / "day" / suffix
            with contextlib.suppress(OSError):
                shutil.copytree(deployed.log_dir, kept)
                _say(f"deployment logs kept in {kept}")
        emulator.close()
        for name in names:
            _drop(pg_url, name)


def _measure(
    deployed: Any,
    ledger_url: str,
    dagster_url: str,
    started: float,
    ended: float,
    prompts: int,
    batches: int,
) -> dict[str, Any]:
    import sqlalchemy as sa

    from krea_dagster.engine.ledger import Ledger

    stats = deployed.emulator.stats()
    ledger = Ledger(ledger_url)
    rows = ledger.rows(PREFIX)
    latest: dict[tuple[str, str], Any] = {}
    paid: dict[tuple[str, str], int] = {}
    for row in rows:
        latest[(row.batch, row.prompt_key)] = row
        if row.is_paid:
            paid[(row.batch, row.prompt_key)] = paid.get((row.batch, row.prompt_key), 0) + 1
    ledger_duplicates = sum(count - 1 for count in paid.values() if count > 1)
    images = sum(1 for row in latest.values() if row.image_uri)
    with ledger.engine.connect() as conn:
        ledger_bytes = conn.execute(
            sa.text("SELECT pg_total_relation_size('krea_submissions')")
        ).scalar_one()
    ledger.dispose()
    engine = sa.create_engine(dagster_url)
    with engine.connect() as conn:
        events, event_bytes = conn.execute(
            sa.text("SELECT count(*), coalesce(sum(octet_length(event)), 0) FROM event_logs")
        ).one()
        runs = conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one()
    engine.dispose()
    instance = deployed.instance
    run_stats = _run_stats(instance)
    discovery = _tick_durations(instance, f"{PREFIX}_batch_discovery")
    completion = _tick_durations(instance, f"{PREFIX}_completion")
    # Busy ticks (the first and last part of the day), whose time follows the work in flight.
    discovery_start, discovery_end = _edges(discovery, started, ended)
    completion_start, completion_end = _edges(completion, started, ended)
    retried_keys = {(row.batch, row.prompt_key) for row in rows if row.attempt > 1}
    wall = ended - started
    per_prompt_seconds = wall / prompts
    return {
        "batches": batches,
        "prompts": prompts,
        "wall_seconds": wall,
        "runs": runs,
        "jobs_created": stats["jobs_created"],
        "jobs_billed": stats["jobs_billed"],
        "emulator_duplicate_submissions": stats["duplicate_submissions"],
        "ledger_paid_duplicates": ledger_duplicates,
        # Three views of one thing (a prompt paid twice): take the worst.
        "duplicates": max(
            stats["duplicate_submissions"], ledger_duplicates, stats["jobs_billed"] - prompts
        ),
        # Every attempt of the prompts sent more than once: why each was sent again.
        "retried": [
            {
                "batch": row.batch,
                "prompt_key": row.prompt_key,
                "attempt": row.attempt,
                "state": row.state,
                "job_id": row.job_id,
                "error_code": row.error_code,
                "error_message": (row.error_message or "")[:300],
                "intent_at": row.intent_at.isoformat(),
            }
            for row in rows
            if (row.batch, row.prompt_key) in retried_keys
        ][:40],
        "images": images,
        "images_over_prompts": images / prompts,
        "cdn_downloads": stats["cdn_downloads"],
        "discovery_ticks": len(discovery),
        "completion_ticks": len(completion),
        "discovery_tick_busy_start_seconds": discovery_start,
        "discovery_tick_busy_end_seconds": discovery_end,
        "completion_tick_busy_start_seconds": completion_start,
        "completion_tick_busy_end_seconds": completion_end,
        "ledger_rows": len(rows),
        "ledger_rows_per_batch": len(rows) / batches,
        "ledger_bytes_per_batch": ledger_bytes / batches,
        "event_log_events_per_batch": events / batches,
        "event_log_bytes_per_batch": event_bytes / batches,
        "seconds_per_prompt": per_prompt_seconds,
        "seconds_per_batch": wall / batches,
        # What bounds the day: every batch is two runs (jobs; images + image_report) through
        # two run workers.
        **run_stats,
        "projection_100k": {
            "batches": 100_000 / (prompts / batches),
            "ledger_rows": len(rows) / prompts * 100_000,
            "ledger_bytes": ledger_bytes / prompts * 100_000,
            "event_log_bytes": event_bytes / prompts * 100_000,
            "wall_seconds_at_this_throughput": per_prompt_seconds * 100_000,
        },
    }


def figures(day: dict[str, Any]) -> dict[str, float]:
    """The flat keys this scenario adds to ``latest.json``."""
    return {
        "day_prompts": day["prompts"],
        "day_batches": day["batches"],
        "day_wall_seconds": day["wall_seconds"],
        "day_duplicates": day["duplicates"],
        "day_images_over_prompts": day["images_over_prompts"],
        "day_discovery_tick_start_seconds": day["discovery_tick_start_seconds"],
        "day_discovery_tick_end_seconds": day["discovery_tick_end_seconds"],
        "day_completion_tick_start_seconds": day["completion_tick_start_seconds"],
        "day_completion_tick_end_seconds": day["completion_tick_end_seconds"],
        "day_completion_tick_busy_start_seconds": day["completion_tick_busy_start_seconds"],
        "day_completion_tick_busy_end_seconds": day["completion_tick_busy_end_seconds"],
        "completion_tick_end_over_start": day["completion_tick_end_over_start"],
        "day_ledger_rows_per_batch": day["ledger_rows_per_batch"],
        "day_ledger_bytes_per_batch": day["ledger_bytes_per_batch"],
        "day_event_log_bytes_per_batch": day["event_log_bytes_per_batch"],
        "day_projection_100k_event_log_bytes": day["projection_100k"]["event_log_bytes"],
        "day_projection_100k_ledger_rows": day["projection_100k"]["ledger_rows"],
    }


GOALS = {
    "day_duplicates": ("0", lambda v: v == 0),
    "day_images_over_prompts": ("1.0", lambda v: v == 1.0),
    "completion_tick_end_over_start": ("<= 1.5", lambda v: v <= 1.5),
}


def merge_into(path: Path, day: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """``latest.json`` with this day's keys added or replaced; every other key kept."""
    record: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    values = figures(day)
    record.update(values)
    goals = record.setdefault("goals", {})
    for key, (text, met) in GOALS.items():
        goals[key] = {"goal": text, "met": bool(met(values[key]))}
    record.setdefault("scenarios", {})["day"] = {**day, "params": args}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--per-batch", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=3, help="batches fed ahead at most")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.02,
        help="emulator time scale (flux's ~7 s render becomes ~0.14 s at 0.02)",
    )
    parser.add_argument("--concurrency", type=int, default=50, help="the account's jobs at once")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after (s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="latest.json to merge into")
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="krea-day-", dir=args.scratch) as scratch:
        day = run_day(
            batches=args.batches,
            per_batch=args.per_batch,
            in_flight=args.in_flight,
            time_scale=args.time_scale,
            concurrency=args.concurrency,
            scratch=Path(scratch),
            timeout=args.timeout,
        )
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    params["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    values = merge_into(args.out, day, params)
    print(json.dumps({**values, "projection_100k": day["projection_100k"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
