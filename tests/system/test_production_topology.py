"""The real daemon, code server and webserver on PostgreSQL, S3 and a Krea emulator subprocess.

Two prompt files dropped into the source directory must become images with nobody launching
anything: the discovery sensor adds the partitions and launches prompts + jobs, the completion
sensor launches images + the downstream report once Krea has finished. One job is failed by
the emulator (``safety_filter``) so the UI has a failure to show and the checks have to count a
recorded failure as resolved (and the failed-prompts check of that batch to warn: one of three
is under ``max_failed_fraction``).
"""

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster._core.storage.dagster_run import DagsterRunStatus

from krea_dagster.engine.ledger.schema import submissions_table

from .harness import (
    CHECK_NAMES,
    IMAGES_KEY,
    PREFIX,
    REPORT_KEY,
    Deployment,
    database_text,
    files_text,
    hits,
    s3_environment,
    store_text,
    wait_for,
    write_prompts,
)

# One module, one deployment: its tests run on one xdist worker (--dist loadgroup).
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("test_production_topology")]

BATCHES = {
    "harbor": [
        "a lighthouse over a stormy harbor at dusk",
        "fishing boats moored under a pink morning sky",
        "a harbor crane silhouetted against the moon",
    ],
    "forest": [
        "a mossy forest path after rain",
        "sunbeams through tall redwoods",
        "a fox asleep among ferns",
    ],
}
PROMPT_COUNT = sum(len(prompts) for prompts in BATCHES.values())
FAILURE_CODE = "safety_filter"
# With this seed and rate the emulator fails exactly one of the first 16 jobs it creates (the
# third): one failure whatever the order in which the two batches' jobs arrive. Another seed
# for another count: simulate random.Random(f"{seed}:job_failure") as krea_dagster.emulator.faults
# draws it (random() per job, then choice() of the code after a hit).
EMULATOR_KNOBS = {
    "seed": 89,
    "job_failure_rate": 0.2,
    "job_failures": [[FAILURE_CODE, "The output was blocked by the safety filter."]],
    "time_scale": 0.05,
}
E2E_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def topology(deployment_factory) -> Deployment:
    return deployment_factory("topology", emulator_knobs=EMULATOR_KNOBS, webserver=True)


@pytest.fixture(scope="module")
def finished(topology: Deployment) -> dict[str, Any]:
    """Drop the two prompt files, then wait until both batches are fully materialized."""
    started, dropped_at = time.monotonic(), time.time()
    for batch, prompts in BATCHES.items():
        write_prompts(topology.prompts_dir, batch, prompts)
    wait_for(
        lambda: topology.batch_done(BATCHES),
        timeout=E2E_TIMEOUT,
        what="both batches materialized by the sensors alone",
        interval=0.5,
        diagnostics=topology.diagnostics,
    )
    seconds = time.monotonic() - started
    print(f"\nruns (seconds after the drop):\n{topology.timeline(dropped_at)}")
    return {"seconds": seconds}


def ledger_rows(deployed: Deployment) -> list[dict[str, Any]]:
    engine = sa.create_engine(deployed.ledger_url)
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(sa.select(submissions_table)).mappings()]
    finally:
        engine.dispose()


def test_daemon_materializes_dropped_prompt_files_end_to_end(topology, finished):
    """Dropped prompt files become checked images and a downstream report through the daemon's sensors alone."""
    assert topology.materialized(IMAGES_KEY) == set(BATCHES)
    assert topology.materialized(REPORT_KEY) == set(BATCHES)
    runs = topology.runs()
    assert runs and all(run.status == DagsterRunStatus.SUCCESS for run in runs), [
        (run.run_id, run.status) for run in runs
    ]
    # Nobody launched anything: every run came from one of the two sensors.
    sensors = {run.tags.get("dagster/sensor_name") for run in runs}
    assert sensors == {"system_batch_discovery", "system_completion"}
    failed_batch_name = failed_batch(topology)[0]
    for batch in BATCHES:
        (images_run,) = topology.images_runs(batch)
        expected = dict.fromkeys(CHECK_NAMES, True)
        expected["no_failed_prompts"] = batch != failed_batch_name  # a WARN, the run succeeds
        assert topology.check_results(images_run.run_id) == expected

    stats = topology.emulator.stats()
    rows = ledger_rows(topology)
    failed = [row for row in rows if row["state"] == "failed"]
    completed = [row for row in rows if row["state"] == "completed"]
    print(
        f"\nend to end: {PROMPT_COUNT} prompts in {len(BATCHES)} batches, "
        f"{stats['jobs_created']} jobs created, {stats['jobs_billed']} billed, "
        f"{stats['duplicate_submissions']} duplicates, faults {stats['faults_injected']}, "
        f"{len(runs)} runs, {finished['seconds']:.1f} s from drop to done"
    )
    assert stats["faults_injected"].get("job_failure") == 1
    assert [row["error_code"] for row in failed] == [FAILURE_CODE]
    assert stats["duplicate_submissions"] == 0
    assert stats["jobs_created"] == PROMPT_COUNT
    assert stats["jobs_billed"] == len(completed) == PROMPT_COUNT - 1
    assert all(row["image_uri"] and row["image_uri"].startswith("s3://") for row in completed)


def failed_batch(deployed: Deployment) -> tuple[str, dict[str, Any]]:
    """The batch holding the injected failure, and its failed ledger row."""
    (row,) = [row for row in ledger_rows(deployed) if row["state"] == "failed"]
    return row["batch"], row


def test_ui_shows_gallery_failures_and_lineage(topology, finished, browser, artifacts_dir):
    """The webserver renders the partition's thumbnail gallery, the injected failure in the failures table, and the lineage prompt_source -> prompts -> jobs -> images -> image_report."""
    from playwright.sync_api import expect

    batch, failure = failed_batch(topology)
    completed = [r for r in ledger_rows(topology) if r["batch"] == batch and r["image_uri"]]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(
            f"{topology.webserver_url}/assets/{PREFIX}/images?view=partitions&partition={batch}"
        )
        dismiss_first_visit_dialogs(page)
        metadata_row = page.locator("tr", has_text="krea/failures")
        # The failures table: the injected failure with Krea's code, message and job id.
        failure_row = metadata_row.locator("tr", has_text=FAILURE_CODE)
        expect(failure_row).to_be_visible()
        expect(failure_row).to_contain_text(failure["job_id"])
        expect(failure_row).to_contain_text("blocked by the safety filter")
        page.screenshot(path=str(artifacts_dir / "ui-partition-failures-table.png"))

        # The thumbnails are longer than 1000 characters: "[Show Markdown]" opens a modal.
        page.locator("tr", has_text="krea/thumbnails").get_by_text("[Show Markdown]").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("krea/thumbnails")
        thumbnails = dialog.locator("img")
        expect(thumbnails).to_have_count(len(completed))
        page.wait_for_function(
            "() => [...document.querySelectorAll('[role=dialog] img')]"
            ".every(image => image.complete && image.naturalWidth > 0)"
        )
        sizes = thumbnails.evaluate_all(
            "images => images.map(image => [image.naturalWidth, image.naturalHeight, image.alt])"
        )
        page.screenshot(path=str(artifacts_dir / "ui-partition-gallery.png"))
        assert all(width > 0 and height > 0 for width, height, _ in sizes), sizes
        prompts = set(BATCHES[batch])
        assert {alt for _, _, alt in sizes} <= prompts, sizes
        page.keyboard.press("Escape")

        # Global lineage: nodes laid out left to right in dependency order.
        page.goto(f"{topology.webserver_url}/asset-groups")
        dismiss_first_visit_dialogs(page)
        order = ["prompt_source", "prompts", "jobs", "images", "image_report"]
        xs = [graph_node_x(page, name) for name in order]
        page.screenshot(path=str(artifacts_dir / "ui-lineage.png"))
        assert xs == sorted(xs) and len(set(xs)) == len(xs), dict(zip(order, xs, strict=True))
    finally:
        context.close()

    # The edges the graph draws, as the webserver serves them to the UI.
    edges = lineage_edges(topology)
    assert {
        ("prompt_source", "prompts"),
        ("prompts", "jobs"),
        ("jobs", "images"),
        ("images", "image_report"),
    } <= edges, edges


def dismiss_first_visit_dialogs(page: Any) -> None:
    """Close a first-visit dialog (community / what's new) if one shows; nux is off in dagster.yaml."""
    # The navigation is drawn once the app has loaded (the UI keeps polling, so "network idle"
    # is not a reliable signal).
    page.get_by_role("link", name="Runs").first.wait_for()
    for name in ("Skip", "Dismiss", "Got it", "Not now"):
        button = page.get_by_role("button", name=name, exact=True)
        if button.count() and button.first.is_visible():
            button.first.click()


def graph_node_x(page: Any, name: str) -> float:
    """Left edge of the asset node labelled ``name`` in the graph (not in the sidebar list)."""
    labels = page.get_by_text(name, exact=True)
    labels.first.wait_for()

    def rightmost() -> float | None:
        boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
        xs = [box["x"] for box in boxes if box and box["height"] > 0]
        # The sidebar lists the same names on the left; the graph is right of it.
        return max(xs) if len(xs) >= 2 else None

    return wait_for(rightmost, timeout=60, what=f"graph node {name} drawn")


def lineage_edges(deployed: Deployment) -> set[tuple[str, str]]:
    import httpx

    query = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"
    response = httpx.post(
        f"{deployed.webserver_url}/graphql", json={"query": query}, timeout=60, trust_env=False
    )
    response.raise_for_status()
    return {
        (dependency["path"][-1], node["assetKey"]["path"][-1])
        for node in response.json()["data"]["assetNodes"]
        for dependency in node["dependencyKeys"]
    }


def test_token_appears_nowhere_the_deployment_writes(topology, finished):
    """The Krea token (and its secret half) is in no table of the instance or ledger databases, no file under DAGSTER_HOME, no stored object and no process log."""
    token = topology.api_key.encode()
    needles = [token, token.split(b":", 1)[1]]
    instance_db = database_text(topology.dagster_db_url)
    ledger_db = database_text(topology.ledger_url)
    home = files_text(topology.home)
    with s3_environment(topology):
        store = store_text(topology.store_uri)
    logs = files_text(topology.log_dir)
    found = {
        "instance database": hits(instance_db, needles),
        "ledger database": hits(ledger_db, needles),
        "DAGSTER_HOME": hits(home, needles),
        "image store": hits(store, needles),
        "process logs": hits(logs, needles),
    }
    scanned = {
        "instance tables": len(instance_db),
        "ledger tables": len(ledger_db),
        "home files": len(home),
        "store objects": len(store),
        "logs": len(logs),
    }
    print(f"\nsecret scan: {scanned}, hits {found}")
    assert not any(found.values()), found

    # The scan looks where the secret would be: the places hold what the runs did...
    assert "event_logs" in hits(instance_db, [BATCHES["harbor"][0].encode()])
    assert "snapshots" in hits(instance_db, [b"KREA_API_KEY"])  # EnvVar: the name, not the value
    assert "krea_submissions" in hits(ledger_db, [BATCHES["forest"][0].encode()])
    assert any(name.endswith(".err") for name in hits(home, [b"valid prompt(s)"]))
    assert len(store) >= PROMPT_COUNT - 1
    assert hits(logs, [b"system_batch_discovery"])
    assert "code-server.log" in hits(logs, [b"valid prompt(s)"])  # run workers' own output
    # ...and the same grep does find the token where it legitimately is: the code server's
    # environment (the only process given KREA_API_KEY).
    environ = {"code server": Path(f"/proc/{topology.code_server.pid}/environ").read_bytes()}
    assert hits(environ, needles) == ["code server"]
    for process in (topology.daemon, topology.webserver):
        assert token not in Path(f"/proc/{process.pid}/environ").read_bytes()
