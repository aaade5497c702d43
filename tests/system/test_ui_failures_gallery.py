"""In Chromium: a batch with failed prompts shows failed in the Dagster UI, and its gallery page shows every image.

Two batches of six prompts run against an in-process emulator whose seeded fault stream fails
five jobs of the first batch and one of the second. With ``max_failed_fraction=0.5`` the first
batch fails (check ERROR, run failed, partition Failed) and the second materializes with a
WARN. A ``dagster-webserver`` on the same SQLite instance then serves the UI, and
``krea-dagster gallery`` serves the store on loopback (the instance's ``store_url``), so the
gallery link in the asset's metadata opens the batch's page in the browser: a ``file://`` link
would be refused ("Not allowed to load local resource"). Screenshots land in
``test-artifacts/system/ui-*.png``.
"""

import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from krea_dagster import KreaResource
from krea_dagster.emulator.testing import run_emulator
from krea_dagster.metadata import KreaImagesMetadata

from .harness import REPO_ROOT, free_port, location_webserver, wait_for, write_prompts
from .test_production_topology import dismiss_first_visit_dialogs
from .ui_location import PREFIX, build

# One module, one deployment: its tests run on one xdist worker (--dist loadgroup).
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("test_ui_failures_gallery")]

LOCATION = Path(__file__).with_name("ui_location.py")
FAILURE = ["safety_filter", "The output was blocked by the safety filter."]
RATE = 0.5
BATCHES = {
    # batch -> (prompts, failed jobs wanted)
    "harbor": (
        [
            "a lighthouse over a stormy harbor at dusk",
            "fishing boats moored under a pink morning sky",
            "a harbor crane silhouetted against the moon",
            'gulls over the breakwater <in> the "fog" & rain',
            "a red buoy rocking on green water",
            "rope coils and nets drying on the quay",
        ],
        5,
    ),
    "forest": (
        [
            "a mossy forest path after rain",
            "sunbeams through tall redwoods",
            "a fox asleep among ferns",
            "mushrooms on a fallen birch log",
            "an owl in a hollow oak at twilight",
            "a stream over smooth stones",
        ],
        1,
    ),
}


def seed_for(pattern: list[tuple[int, int]], rate: float) -> int:
    """A seed whose job_failure stream fails ``count`` of each consecutive group of ``size`` jobs
    (the emulator draws random() per new job, then choice() of the error after a hit)."""
    for seed in range(100_000):
        stream = random.Random(f"{seed}:job_failure")
        counts = []
        for size, _ in pattern:
            hits = 0
            for _ in range(size):
                if stream.random() < rate:
                    hits += 1
                    stream.choice([FAILURE])
            counts.append(hits)
        if counts == [count for _, count in pattern]:
            return seed
    raise AssertionError(f"no seed gives {pattern} at rate {rate}")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both batches materialized on a SQLite instance, then a webserver serving it."""
    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n", encoding="utf-8"
    )
    prompts_dir = root / "prompts"
    prompts_dir.mkdir()
    for batch, (prompts, _) in BATCHES.items():
        write_prompts(prompts_dir, batch, prompts)
    store = root / "store"
    store.mkdir()
    gallery_port = free_port()
    env = {
        "KREA_UI_PROMPTS": str(prompts_dir),
        "KREA_UI_STORE": str(store),
        "KREA_UI_LEDGER": f"sqlite:///{root / 'ledger.db'}",
        "KREA_UI_STORE_URL": f"http://127.0.0.1:{gallery_port}",
    }
    # The store served the way a user serves it: `krea-dagster gallery` on the code location.
    files = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "krea_dagster",
            "gallery",
            "-f",
            str(LOCATION),
            "--port",
            str(gallery_port),
        ],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("KREA_")},
            **env,
            "PYTHONPATH": str(REPO_ROOT),
        },
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=(root / "gallery.log").open("wb"),
        start_new_session=True,
    )
    wait_for(
        lambda: _answers(f"{env['KREA_UI_STORE_URL']}/", files, root / "gallery.log"),
        timeout=120,
        what="krea-dagster gallery answers",
    )
    assets = build(
        env["KREA_UI_PROMPTS"],
        env["KREA_UI_STORE"],
        env["KREA_UI_LEDGER"],
        env["KREA_UI_STORE_URL"],
    )
    pattern = [(len(prompts), failed) for prompts, failed in BATCHES.values()]
    results = {}
    instance = dg.DagsterInstance.from_config(str(home))
    with run_emulator(time_scale=0.005, seed=seed_for(pattern, RATE)) as emulator:
        emulator.configure(job_failure_rate=RATE, job_failures=[FAILURE])
        krea = KreaResource(api_key=emulator.token, base_url=emulator.base_url, poll_interval=0.05)
        instance.add_dynamic_partitions(assets.partitions_def.name or "", list(BATCHES))
        for batch in BATCHES:
            results[batch] = dg.materialize(
                assets.assets,
                selection=[assets.prompts, assets.jobs, assets.images],
                partition_key=batch,
                instance=instance,
                resources={"krea": krea},
                raise_on_error=False,
            )
        assert emulator.stats()["faults_injected"]["job_failure"] == 6
    try:
        with location_webserver(
            LOCATION, home=home, env=env, log_path=root / "webserver.log"
        ) as url:
            yield {"url": url, "assets": assets, "results": results, "instance": instance}
    finally:
        instance.dispose()
        os.killpg(files.pid, signal.SIGTERM)
        files.wait(timeout=20)


def _answers(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(log.read_text(errors="replace")[-4000:])
    try:
        return httpx.get(url, timeout=5, trust_env=False).is_success
    except httpx.HTTPError:
        return False


def gallery_links(deployed: dict[str, Any], batch: str) -> KreaImagesMetadata:
    """The gallery entries the images step recorded for ``batch`` (in its materialization, or
    in its step failure when the batch failed)."""
    result = deployed["results"][batch]
    node = deployed["assets"].images.node_def.name
    materializations = result.asset_materializations_for_node(node)
    if materializations:
        metadata = materializations[0].metadata
    else:
        (failure,) = result.get_step_failure_events()
        metadata = failure.step_failure_data.user_failure_data.metadata
    linked = KreaImagesMetadata.extract(metadata)
    assert linked.gallery is not None and linked.gallery_path is not None
    return linked


def test_ui_shows_the_mostly_failed_batch_as_failed(deployed, browser, artifacts_dir):
    """The partition of the batch with 5 of 6 failed jobs shows Failed, its run failed with the count, and its no_failed_prompts check failed for that partition; the other batch is materialized with a warning."""
    from playwright.sync_api import expect

    assert not deployed["results"]["harbor"].success
    assert deployed["results"]["forest"].success
    severities = {
        batch: evaluation.severity
        for batch, result in deployed["results"].items()
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.check_name == "no_failed_prompts" and not evaluation.passed
    }
    assert severities == {
        "harbor": dg.AssetCheckSeverity.ERROR,
        "forest": dg.AssetCheckSeverity.WARN,
    }
    base = f"{deployed['url']}/assets/{PREFIX}/images"
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{base}?view=partitions&partition=harbor")
        dismiss_first_visit_dialogs(page)
        expect(page.get_by_text("Failed (1)")).to_be_visible()
        page.wait_for_timeout(1500)
        expect(page.get_by_text("Materialized (1)")).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "ui-failed-partition.png"))

        # The run: failed, and its failure says how many prompts failed.
        run_id = deployed["results"]["harbor"].run_id
        page.goto(f"{deployed['url']}/runs/{run_id}")
        dismiss_first_visit_dialogs(page)
        expect(page.get_by_text("5 of 6 prompts failed").first).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "ui-failed-run.png"))

        # The check: its latest result (forest) warns; its history has harbor failed with
        # ERROR and forest with WARN, each for its partition.
        page.goto(f"{base}?view=checks")
        dismiss_first_visit_dialogs(page)
        page.get_by_text("no_failed_prompts", exact=True).first.click()
        expect(page.get_by_text("batch 'forest' generation 1: 1 of 6").first).to_be_visible()
        page.get_by_text("Execution history", exact=True).click()
        for batch, failed in (("harbor", 5), ("forest", 1)):
            row = page.locator("tr", has_text=f"batch '{batch}' generation 1: {failed} of 6")
            expect(row.first).to_be_visible()
            expect(row.first).to_contain_text("Failed")
        page.wait_for_timeout(1000)
        page.screenshot(path=str(artifacts_dir / "ui-check-history.png"))
        page.get_by_text("Partitions", exact=True).last.click()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(artifacts_dir / "ui-check-partitions.png"))

        # The batch within the threshold: materialized, thumbnails with captions inline.
        page.goto(f"{base}?view=partitions&partition=forest")
        dismiss_first_visit_dialogs(page)
        expect(page.locator("tr", has_text="krea/gallery").first).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "ui-materialized-partition.png"), full_page=True)
        page.locator("tr", has_text="krea/thumbnails").get_by_text("[Show Markdown]").click()
        dialog = page.get_by_role("dialog")
        thumbnails = dialog.locator("img")
        expect(thumbnails).to_have_count(5)
        page.wait_for_function(
            "() => [...document.querySelectorAll('[role=dialog] img')]"
            ".every(image => image.complete && image.naturalWidth > 64)"
        )
        expect(dialog).to_contain_text(BATCHES["forest"][0][0])
        page.screenshot(path=str(artifacts_dir / "ui-thumbnails.png"))
        page.keyboard.press("Escape")

        # One click from the asset's metadata to the batch's gallery page.
        link = page.locator("tr", has_text="krea/gallery").first.get_by_role("link").first
        with context.expect_page() as opened:
            link.click()
        gallery = opened.value
        gallery.wait_for_load_state()
        assert gallery.url == gallery_links(deployed, "forest").gallery.value
        expect(gallery.locator("figure.card")).to_have_count(6)
    finally:
        context.close()


@pytest.mark.parametrize("batch", list(BATCHES))
def test_gallery_page_renders_every_image_beside_its_prompt(
    deployed, browser, artifacts_dir, batch
):
    """The batch's gallery page renders every stored image (naturalWidth > 0) with its prompt in the same card, and shows each failure with Krea's message."""
    prompts, failed = BATCHES[batch]
    linked = gallery_links(deployed, batch)
    assert Path(linked.gallery_path.value).is_file()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        page.goto(linked.gallery.value)
        cards = page.locator("figure.card")
        assert cards.count() == len(prompts)
        # Lazy images load as they scroll into view.
        for index in range(cards.count()):
            cards.nth(index).scroll_into_view_if_needed()
        page.wait_for_function(
            "() => [...document.images].every(image => image.complete && image.naturalWidth > 0)"
        )
        shown = cards.evaluate_all(
            """cards => cards.map(card => ({
                status: card.dataset.status,
                prompt: card.querySelector('.prompt').textContent,
                width: card.querySelector('img') ? card.querySelector('img').naturalWidth : 0,
                alt: card.querySelector('img') ? card.querySelector('img').alt : null,
                error: card.querySelector('.error') ? card.querySelector('.error').textContent : '',
            }))"""
        )
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(artifacts_dir / f"ui-gallery-{batch}.png"), full_page=True)
    finally:
        context.close()
    assert [card["prompt"] for card in shown] == prompts
    completed = [card for card in shown if card["status"] == "completed"]
    assert len(completed) == len(prompts) - failed
    assert all(card["width"] > 0 and card["alt"] == card["prompt"] for card in completed)
    failures = [card for card in shown if card["status"] == "failed"]
    assert len(failures) == failed
    assert all("blocked by the safety filter" in card["error"] for card in failures)
