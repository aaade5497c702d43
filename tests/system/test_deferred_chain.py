"""A three-step chain from a table asset, deferred through the real daemon's sensors.

``chain_location.py`` on the production-like deployment (gRPC code server, ``dagster-daemon``,
``dagster-webserver``, PostgreSQL instance and ledger, S3 store on moto, the emulator in a
subprocess): the sample product table (two batches of two products, local photos) ->
gpt-image-2 edit of each photo -> Topaz upscale of the edit -> the emulator's demo node app
(two jobs per row) from the upscale.

The test materializes the table as the UI's Materialize button does (GraphQL); from there the
sensors do everything: discovery launches each batch's first submission, and the completion
sensor launches each step's collection together with the next step's submission.

Krea is the emulator with a render time of half an hour, and the test plays Krea finishing the
renders (the emulator's admin ``complete``), one step at a time, once every run launched so far
has ended. So "no run waits on Krea" is not a race against a clock: a run that waited for a
render would never end, and the ledger's ``completed_at`` of every job, set by Krea, is compared
with the start and end of the runs that submitted and collected it.
"""

import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.dagster_run import DagsterRunStatus

from krea_dagster.emulator.testing import TERMINAL
from krea_dagster.samples import SAMPLE_PRODUCTS, write_sample_products

from .chain_location import EDIT_SIZE, PREFIX, UPSCALE_SIZE
from .harness import (
    CHECK_NAMES,
    LOCATION_NAME,
    Deployment,
    s3_environment,
    wait_for,
)
from .test_production_topology import ledger_rows, lineage_edges

# One module, one deployment: its tests run on one xdist worker (--dist loadgroup).
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("test_deferred_chain")]

CHAIN_LOCATION = Path(__file__).with_name("chain_location.py")
BATCHES = sorted({batch for batch, *_ in SAMPLE_PRODUCTS})
ROWS = len(SAMPLE_PRODUCTS)
STEPS = ("edit", "upscale", "angles")
#: Krea jobs per row of each step: the demo node app runs two.
JOBS_PER_ROW = {"edit": 1, "upscale": 1, "angles": 2}
JOBS = ROWS * sum(JOBS_PER_ROW.values())
#: The emulator's render time of every job: no run may come anywhere near it.
RENDER_SECONDS = 1800.0
STAGE_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def chain(deployment_factory, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    products = tmp_path_factory.mktemp("products")
    write_sample_products(products)
    return deployment_factory(
        "chain",
        emulator_knobs={"seed": 18, "render_seconds": RENDER_SECONDS, "concurrency": 16},
        webserver=True,
        location_file=CHAIN_LOCATION,
        location_env={"KREA_CHAIN_PRODUCTS": str(products)},
    )


def scope(step: str) -> str:
    return f"{PREFIX}.{step}"


def step_rows(deployed: Deployment, step: str) -> list[dict[str, Any]]:
    """The ledger's rows of one step that carry a Krea job."""
    return [row for row in ledger_rows(deployed) if row["scope"] == scope(step) and row["job_id"]]


def quiet(deployed: Deployment) -> bool:
    """Every run launched so far has ended (and at least one was launched)."""
    runs = deployed.runs()
    return bool(runs) and all(run.is_finished for run in runs)


def outputs_runs(deployed: Deployment, step: str) -> list[Any]:
    key = dg.AssetKey([PREFIX, step])
    return [run for run in deployed.runs() if key in (run.asset_selection or ())]


@pytest.fixture(scope="module")
def finished(chain: Deployment) -> dict[str, Any]:
    """Materialize the table, then finish Krea's renders one step at a time; what was seen."""
    from dagster_graphql import DagsterGraphQLClient

    seen: dict[str, Any] = {"rendering": {}}
    started = time.time()
    client = DagsterGraphQLClient("127.0.0.1", port_number=chain.webserver_port, timeout=120)
    client.submit_job_execution(
        "__ASSET_JOB",
        repository_location_name=LOCATION_NAME,
        repository_name="__repository__",
        asset_selection=[["products"]],
    )
    for step in STEPS:
        jobs_key = dg.AssetKey([PREFIX, f"{step}_jobs"])
        expected = ROWS * JOBS_PER_ROW[step]
        wait_for(
            lambda jobs_key=jobs_key: chain.materialized(jobs_key) == set(BATCHES) and quiet(chain),
            timeout=STAGE_TIMEOUT,
            what=f"the sensors submitted step {step} of every batch, and every run ended",
            interval=0.5,
            diagnostics=chain.diagnostics,
        )
        rows = step_rows(chain, step)
        assert len(rows) == expected, rows
        # Every run has ended, and Krea is still rendering every job of the step.
        seen["rendering"][step] = {
            row["job_id"]: chain.emulator.job(row["job_id"])["status"] for row in rows
        }
        if step == STEPS[0]:
            seen["stored_while_rendering"] = store_one_while_the_rest_render(chain, rows)
        for row in rows:
            if chain.emulator.job(row["job_id"])["status"] != "completed":
                chain.emulator.complete_job(row["job_id"])
    last = dg.AssetKey([PREFIX, STEPS[-1]])
    wait_for(
        lambda: chain.materialized(last) == set(BATCHES) and quiet(chain),
        timeout=STAGE_TIMEOUT,
        what="the last step collected for every batch, and every run ended",
        interval=0.5,
        diagnostics=chain.diagnostics,
    )
    print(f"\nruns (seconds after the table's launch):\n{chain.timeline(started)}")
    return seen


def store_one_while_the_rest_render(
    deployed: Deployment, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Krea finishes one job of the first step: the completion sensor stores its output while
    the other jobs of its batch still render, and launches no collection for the batch yet."""
    first = rows[0]
    deployed.emulator.complete_job(first["job_id"])

    def stored() -> dict[str, Any] | None:
        (row,) = [r for r in ledger_rows(deployed) if r["job_id"] == first["job_id"]]
        return row if row["image_uri"] else None

    row = wait_for(
        stored,
        timeout=STAGE_TIMEOUT,
        what="the completion sensor stored the output of the one finished job",
        interval=0.5,
        diagnostics=deployed.diagnostics,
    )
    # The tick that stored it has ended (and submitted whatever runs it requested) once a tick
    # of the sensor ends after the output was seen stored.
    seen = time.time()
    wait_for(
        lambda: any(
            tick.status != TickStatus.STARTED and (tick.end_timestamp or 0) >= seen
            for tick in deployed.sensor_ticks(f"{PREFIX}_completion")
        ),
        timeout=STAGE_TIMEOUT,
        what="a completion tick ended after the output was stored",
        interval=0.5,
        diagnostics=deployed.diagnostics,
    )
    others = [r for r in rows if r["batch"] == first["batch"] and r["job_id"] != first["job_id"]]
    return {
        "row": row,
        "others": {r["job_id"]: deployed.emulator.job(r["job_id"])["status"] for r in others},
        "outputs_runs": [run.run_id for run in outputs_runs(deployed, STEPS[0])],
    }


def run_records(deployed: Deployment) -> dict[str, Any]:
    return {record.dagster_run.run_id: record for record in deployed.instance.get_run_records()}


def epoch(value: datetime) -> float:
    return value.timestamp()


def test_no_run_waits_on_krea(chain, finished):
    """Every run of the chain ends while Krea still renders the jobs it submitted, every collection starts after all of its step's jobs were terminal, and no run lasts anywhere near the render time."""
    # When each step was submitted, every run had ended and every job of the step still rendered.
    for step, statuses in finished["rendering"].items():
        assert statuses and set(statuses.values()).isdisjoint(TERMINAL), (step, statuses)
    # One finished job of a batch still rendering: stored by the sensor, no collection launched.
    early = finished["stored_while_rendering"]
    assert early["row"]["image_uri"].startswith("s3://")
    assert early["others"] and set(early["others"].values()).isdisjoint(TERMINAL)
    assert early["outputs_runs"] == []

    records = run_records(chain)
    runs = [record.dagster_run for record in records.values()]
    assert all(run.status == DagsterRunStatus.SUCCESS for run in runs), chain.diagnostics()
    rows_by = defaultdict(list)
    for row in ledger_rows(chain):
        rows_by[row["scope"], row["batch"]].append(row)
    for step in STEPS:
        for batch in BATCHES:
            rows = rows_by[scope(step), batch]
            done = [epoch(row["completed_at"]) for row in rows]
            assert len(done) == JOBS_PER_ROW[step] * sum(
                1 for b, *_ in SAMPLE_PRODUCTS if b == batch
            )
            # The run that submitted the step's jobs had ended before Krea finished any of them.
            submitters = {row["run_id"] for row in rows if row["parent_id"] is None}
            assert len(submitters) == 1, (step, batch, submitters)
            submitter = submitters.pop()
            assert records[submitter].end_time < min(done), (step, batch)
            # The step's collection started only once every one of its jobs was terminal.
            collectors = [
                run for run in outputs_runs(chain, step) if run.tags.get("krea/batch") == batch
            ]
            assert len(collectors) == 1, (step, batch, [run.run_id for run in collectors])
            assert records[collectors[0].run_id].start_time > max(done), (step, batch)
    durations = {run_id: record.end_time - record.start_time for run_id, record in records.items()}
    print(
        f"\n{len(runs)} runs, the longest {max(durations.values()):.1f} s; "
        f"every job renders {RENDER_SECONDS:.0f} s"
    )
    assert max(durations.values()) < RENDER_SECONDS / 10

    # Nobody launched anything but the table: discovery and completion did the rest, one run
    # per batch and stage (3 steps: the first submission, then 3 collections).
    sensors = defaultdict(list)
    for run in runs:
        sensors[run.tags.get("dagster/sensor_name")].append(run)
    assert {name: len(found) for name, found in sensors.items()} == {
        None: 1,
        f"{PREFIX}_batch_discovery": len(BATCHES),
        f"{PREFIX}_completion": len(BATCHES) * len(STEPS),
    }


def test_every_output_of_every_step_is_verified(chain, finished):
    """The four checks of every step's collection pass for every batch, and every stored output decodes at its recorded size, which is the requested size where the request names one."""
    for step in STEPS:
        collections = outputs_runs(chain, step)
        assert sorted(run.tags["krea/batch"] for run in collections) == BATCHES
        for run in collections:
            assert chain.check_results(run.run_id) == dict.fromkeys(CHECK_NAMES, True), (
                step,
                run.tags,
            )
    requested = {"edit": EDIT_SIZE, "upscale": UPSCALE_SIZE}
    import s3fs
    from PIL import Image

    with s3_environment(chain):
        fs = s3fs.S3FileSystem()
        for step in STEPS:
            rows = step_rows(chain, step)
            assert len(rows) == ROWS * JOBS_PER_ROW[step]
            for row in rows:
                assert row["state"] == "completed" and row["image_uri"].startswith(chain.store_uri)
                with fs.open(row["image_uri"].removeprefix("s3://"), "rb") as handle:
                    image = Image.open(handle)
                    image.load()
                assert image.size == (row["width"], row["height"]), row
                if step in requested:
                    assert image.size == requested[step], row


def test_nothing_is_paid_or_uploaded_twice(chain, finished):
    """Krea billed exactly the chain's jobs, none twice; every reference file (photo, edit, upscale) was uploaded exactly once, and every output downloaded once (by the sensor's tick or the collection run, never both)."""
    stats = chain.emulator.stats()
    print(
        f"\nchain: {stats['jobs_created']} jobs, {stats['jobs_billed']} billed, "
        f"{stats['uploads']} uploads, {stats['node_app_executions']} node-app executions"
    )
    assert stats["jobs_created"] == stats["jobs_billed"] == JOBS
    assert stats["duplicate_submissions"] == 0
    assert stats["node_app_executions"] == ROWS and stats["node_app_jobs"] == 2 * ROWS
    # Uploaded: the photos for the edits, the edits for the upscales, the upscales for the app.
    assert stats["uploads"] == 3 * ROWS and stats["duplicate_uploads"] == 0
    assert stats["cdn_downloads"] == JOBS


def test_lineage_runs_from_the_table_through_every_step(chain, finished):
    """The webserver's asset graph: products -> edit -> upscale -> angles, each step's prompts, jobs and outputs in order."""
    edges = lineage_edges(chain)
    wanted = set()
    for before, step in zip(("products", *STEPS), STEPS, strict=False):
        wanted |= {
            (before, f"{step}_prompts"),
            (f"{step}_prompts", f"{step}_jobs"),
            (f"{step}_jobs", step),
        }
    assert wanted <= edges, sorted(wanted - edges)
