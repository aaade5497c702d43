"""Four run workers at once on one PostgreSQL ledger and one S3 store: nothing paid twice, nothing lost.

Two workers materialize two different batches while two more materialize a third batch at the
same moment (a sensor and a person clicking "Materialize", or a retry overlapping its original).
The workers are separate processes on the deployment's PostgreSQL instance; they meet at a
rendezvous after importing everything, so their runs start within milliseconds of each other.
The ledger starts empty: the workers also race to create its schema.
"""

import hashlib
import io
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.ledger.schema import submissions_table

from .conftest import keep_logs
from .harness import Deployment, s3_environment, store_text, wait_for, write_prompts

# One module, one deployment: its tests run on one xdist worker (--dist loadgroup).
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("test_concurrency")]

WORKER = Path(__file__).with_name("concurrent_worker.py")
BATCHES = {"north": 4, "south": 4, "shared": 6}
# (batch, how many workers materialize it at once)
WORKERS = [("north", 1), ("south", 1), ("shared", 2)]
WORKER_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def shared(deployment_factory) -> Deployment:
    # Renders of ~1.4 s: both workers of "shared" are still polling when its jobs complete, so
    # they download and store the same images at the same time.
    return deployment_factory(
        "concurrency", emulator_knobs={"seed": 5, "time_scale": 0.2}, start=False
    )


def run_workers(deployed: Deployment, root: Path) -> list[dict[str, Any]]:
    rendezvous = root / "rendezvous"
    rendezvous.mkdir()
    env = {**deployed.location_env, "KREA_SYSTEM_CRASH_ONCE": ""}
    processes = []
    for batch, copies in WORKERS:
        for copy in range(copies):
            result = root / f"result-{batch}-{copy}.json"
            log = (deployed.log_dir / f"worker-{batch}-{copy}.log").open("wb")
            process = subprocess.Popen(
                [sys.executable, str(WORKER), batch, str(rendezvous), str(result)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            processes.append((process, result))
    try:
        wait_for(
            lambda: (
                len(list(rendezvous.glob("ready-*"))) == len(processes)
                or any(process.poll() is not None for process, _ in processes)
            ),
            timeout=WORKER_TIMEOUT,
            what="every worker is ready",
            interval=0.05,
        )
        (rendezvous / "go").touch()
        for process, _ in processes:
            process.wait(timeout=WORKER_TIMEOUT)
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    if any(process.returncode != 0 for process, _ in processes):
        kept = keep_logs(deployed, "concurrency")
        errors = {
            path.name: [
                line for line in path.read_text(errors="replace").splitlines() if "Error" in line
            ]
            for path in deployed.log_dir.glob("worker-*")
        }
        raise AssertionError(f"a worker failed (logs in {kept}): {errors}")
    return [json.loads(result.read_text()) for _, result in processes]


def test_parallel_and_same_batch_runs_share_ledger_and_store_without_double_pay(shared, tmp_path):
    """Two batches in parallel plus one batch materialized twice at once, sharing the PostgreSQL ledger and S3 store, pay each prompt once and leave every manifest file whole in S3."""
    for batch, count in BATCHES.items():
        write_prompts(
            shared.prompts_dir,
            batch,
            [f"{batch} view number {index}, oil painting" for index in range(count)],
        )
    shared.instance.add_dynamic_partitions("system_batches", list(BATCHES))
    # Four krea steps at once: the pool must not serialize the race away.
    shared.instance.event_log_storage.set_concurrency_slots("krea", len(BATCHES) + 1)
    started = time.monotonic()
    results = run_workers(shared, tmp_path)
    seconds = time.monotonic() - started
    stats = shared.emulator.stats()
    prompt_count = sum(BATCHES.values())

    engine = sa.create_engine(shared.ledger_url)
    try:
        with engine.connect() as conn:
            rows = [dict(row) for row in conn.execute(sa.select(submissions_table)).mappings()]
            generations = conn.execute(
                sa.text("SELECT batch, generation FROM krea_generations")
            ).all()
    finally:
        engine.dispose()
    with s3_environment(shared):
        objects = store_text(shared.store_uri)
    print(
        f"\nconcurrency: {len(results)} runs, {prompt_count} prompts, "
        f"{stats['jobs_created']} jobs created, {stats['jobs_billed']} billed, "
        f"{stats['duplicate_submissions']} duplicates, {len(rows)} ledger rows, "
        f"{len(objects)} stored objects, {seconds:.1f} s"
    )

    # Paid once: one job per prompt, whoever submitted it.
    assert stats["duplicate_submissions"] == 0
    assert stats["jobs_created"] == prompt_count
    assert stats["jobs_billed"] == prompt_count
    assert sorted(generations) == sorted((batch, 1) for batch in BATCHES)
    assert Counter(row["batch"] for row in rows) == Counter(BATCHES)
    assert {row["state"] for row in rows} == {"completed"}

    # Every run's manifest is whole: each URI is in S3 with the recorded hash, size and pixels.
    by_uri = {row["image_uri"]: row for row in rows}
    for result in results:
        manifest = result["manifest"]
        assert manifest is not None
        broken = [e for e in manifest if e["status"] != "completed"]
        assert not broken, [
            (e["batch"], e["status"], e["error_code"], e["error_message"]) for e in broken
        ]
        for entry in manifest:
            key = entry["uri"].removeprefix("s3://")
            blob = objects[key]
            assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
            assert len(blob) == by_uri[entry["uri"]]["size_bytes"]
            with Image.open(io.BytesIO(blob)) as image:
                assert image.size == (entry["width"], entry["height"])
    # No partial or stray object: every image object is a verified image named by its own
    # hash (the rest are each batch's gallery page and manifest copy).
    images = {key: blob for key, blob in objects.items() if "/batches/" not in key}
    assert len(images) == len({row["sha256"] for row in rows})
    for key, blob in images.items():
        assert Path(key).stem == hashlib.sha256(blob).hexdigest(), key
    assert Counter(result["batch"] for result in results) == Counter(dict(WORKERS))


def test_workers_starting_a_new_batch_together_share_its_first_generation(fresh_pg_database):
    """Workers that open a new batch's first generation at the same instant on PostgreSQL all get generation 1 (a second generation would pay for the whole batch again)."""
    url = fresh_pg_database("krea_generations")
    workers = 4
    ledgers = [Ledger(url) for _ in range(workers)]
    try:
        for ledger in ledgers:
            assert ledger.engine is not None  # schema created before the race starts
        for trial in range(10):
            barrier = threading.Barrier(workers)
            opened: list[int] = []

            def open_first(
                ledger: Ledger,
                batch: str,
                barrier: threading.Barrier = barrier,
                opened: list[int] = opened,
            ) -> None:
                barrier.wait(timeout=30)
                opened.append(ledger.ensure_generation("race", batch, run_id=None))

            threads = [
                threading.Thread(target=open_first, args=(ledger, f"batch{trial}"))
                for ledger in ledgers
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert opened == [1] * workers, f"trial {trial}: generations {sorted(opened)}"
    finally:
        for ledger in ledgers:
            ledger.dispose()
