"""In Chromium: a workflow step whose rows mostly failed is red, like a mostly failed prompt batch.

A product table of two batches of six rows runs through two chained steps (gpt-image-2 edit of
each photo, then a Topaz upscale of the edit) against an in-process emulator. Every edit
succeeds; then the emulator's seeded job-failure stream fails five of the six upscales of
``harbor`` and one of ``forest``. With ``max_failed_fraction=0.5`` the upscale step of
``harbor`` fails (check ERROR, run failed, partition Failed) while ``forest`` materializes with
a WARN. A ``dagster-webserver`` on the same SQLite instance then serves the UI. Screenshots land
in ``test-artifacts/system/uiflow-*.png``.
"""

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from PIL import Image

from krea_dagster import KreaResource
from krea_dagster.emulator.testing import run_emulator

from .harness import location_webserver
from .test_production_topology import dismiss_first_visit_dialogs
from .test_ui_failures_gallery import FAILURE, seed_for
from .ui_workflow_location import PREFIX, build

# One module, one deployment: its tests run on one xdist worker (--dist loadgroup).
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("test_ui_failed_workflow_step")]

LOCATION = Path(__file__).with_name("ui_workflow_location.py")
RATE = 0.5
ROWS_PER_BATCH = 6
#: batch -> upscales the emulator fails
FAILED_UPSCALES = {"harbor": 5, "forest": 1}


def write_table(root: Path) -> Path:
    """Two batches of six products, each with its own small photo."""
    photos = root / "photos"
    photos.mkdir()
    rows = []
    for number, batch in enumerate(
        batch for batch in FAILED_UPSCALES for _ in range(ROWS_PER_BATCH)
    ):
        photo = photos / f"p{number}.png"
        Image.new("RGB", (48, 48), (20 * number, 255 - 20 * number, 90)).save(photo)
        rows.append([batch, f"SKU-{number:03}", f"product number {number}", str(photo)])
    table = root / "products.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["batch", "sku", "name", "photo"])
        writer.writerows(rows)
    return table


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both batches through both steps on a SQLite instance, then a webserver serving it."""
    root = tmp_path_factory.mktemp("uiflow")
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n", encoding="utf-8"
    )
    env = {
        "KREA_UIW_TABLE": str(write_table(root)),
        "KREA_UIW_STORE": str(root / "store"),
        "KREA_UIW_LEDGER": f"sqlite:///{root / 'ledger.db'}",
    }
    products, workflow = build(
        Path(env["KREA_UIW_TABLE"]), env["KREA_UIW_STORE"], env["KREA_UIW_LEDGER"]
    )
    edit, upscale = workflow.step_assets
    pattern = [(ROWS_PER_BATCH, failed) for failed in FAILED_UPSCALES.values()]
    results = {}
    instance = dg.DagsterInstance.from_config(str(home))
    with run_emulator(time_scale=0.005, seed=seed_for(pattern, RATE)) as emulator:
        krea = KreaResource(api_key=emulator.token, base_url=emulator.base_url, poll_interval=0.05)
        assets = [products, *workflow.assets]
        assert dg.materialize([products], instance=instance).success
        instance.add_dynamic_partitions(workflow.partitions_def.name or "", list(FAILED_UPSCALES))
        for batch in FAILED_UPSCALES:
            # The edits all succeed (no failure drawn), then the upscales draw from the stream.
            emulator.configure(job_failure_rate=0.0)
            first = dg.materialize(
                assets,
                selection=edit.assets,
                partition_key=batch,
                instance=instance,
                resources={"krea": krea},
            )
            assert first.success
            emulator.configure(job_failure_rate=RATE, job_failures=[FAILURE])
            results[batch] = dg.materialize(
                assets,
                selection=upscale.assets,
                partition_key=batch,
                instance=instance,
                resources={"krea": krea},
                raise_on_error=False,
            )
        stats = emulator.stats()
        assert stats["faults_injected"]["job_failure"] == sum(FAILED_UPSCALES.values())
        assert stats["jobs_created"] == 4 * ROWS_PER_BATCH
    try:
        with location_webserver(
            LOCATION, home=home, env=env, log_path=root / "webserver.log"
        ) as url:
            yield {"url": url, "results": results, "instance": instance}
    finally:
        instance.dispose()


def test_ui_shows_the_mostly_failed_workflow_step_as_failed(deployed, browser, artifacts_dir):
    """The upscale step of the batch with 5 of 6 failed rows: its no_failed_prompts check fails with ERROR, its run failed and says how many rows failed, and its partition shows Failed; the other batch's step is materialized with a WARN."""
    from playwright.sync_api import expect

    results = deployed["results"]
    failed_run = results["harbor"].run_id
    assert not results["harbor"].success and results["forest"].success
    assert deployed["instance"].get_run_by_id(failed_run).status == dg.DagsterRunStatus.FAILURE
    severities = {
        batch: evaluation.severity
        for batch, result in results.items()
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.check_name == "no_failed_prompts" and not evaluation.passed
    }
    assert severities == {
        "harbor": dg.AssetCheckSeverity.ERROR,
        "forest": dg.AssetCheckSeverity.WARN,
    }

    url = deployed["url"]
    base = f"{url}/assets/{PREFIX}/upscale"
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        # The step's partitions: harbor failed, forest materialized.
        page.goto(f"{base}?view=partitions&partition=harbor")
        dismiss_first_visit_dialogs(page)
        expect(page.get_by_text("Failed (1)")).to_be_visible()
        expect(page.get_by_text("Materialized (1)")).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "uiflow-failed-partition.png"))

        # The run: failed, and its failure names the step and how many rows failed.
        page.goto(f"{url}/runs/{failed_run}")
        dismiss_first_visit_dialogs(page)
        expect(page.get_by_text("step upscale: batch 'harbor'").first).to_be_visible()
        expect(page.get_by_text("5 of 6 prompts failed").first).to_be_visible()
        expect(page.get_by_text("Failure", exact=True).first).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "uiflow-failed-run.png"))

        # The check, for each partition: harbor's evaluation failed as an error (the red
        # "cancel" icon), forest's as a warning (the yellow "warning_outline" icon).
        page.goto(f"{base}?view=checks")
        dismiss_first_visit_dialogs(page)
        page.get_by_text("no_failed_prompts", exact=True).first.click()
        page.get_by_text("Execution history", exact=True).click()
        icons = {"harbor": "cancel", "forest": "warning_outline"}
        for batch, failed in FAILED_UPSCALES.items():
            row = page.locator(
                "tr", has_text=f"batch '{batch}' generation 1: {failed} of {ROWS_PER_BATCH}"
            ).first
            expect(row).to_be_visible()
            expect(row).to_contain_text("Failed")
            expect(row.get_by_role("img", name=icons[batch], exact=True)).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "uiflow-check-history.png"))
    finally:
        context.close()
