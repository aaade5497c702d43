"""Workflow nodes end to end: a product table asset, local reference photos, three chained steps."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from PIL import Image

from krea_dagster import KreaResource, KreaStep, build_krea_workflow
from krea_dagster.engine.nodes import ROW_KEY
from krea_dagster.engine.template import TemplateError, render, render_value

from . import workflow_driver
from .conftest import make_resource

UPSCALE = {"model": "Standard V2", "width": 2048, "height": 2048}


def photo(path: Path, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (64, 64), color).save(path)
    return path


@pytest.fixture
def catalog_setup(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    table = pd.DataFrame(
        {
            "batch": ["b1", "b1", "b2"],
            "sku": ["A1", "B2", "C3"],
            "name": ["red sneaker", "blue boot", "red sneaker again"],
            "photo": [
                str(photo(photos / "a1.png", (200, 30, 30))),
                str(photo(photos / "b2.png", (30, 30, 200))),
                str(photos / "a1.png"),  # the same file in another batch
            ],
        }
    )
    state = {"table": table}

    @dg.asset
    def products() -> pd.DataFrame:
        return state["table"]

    workflow = build_krea_workflow(
        "catalog",
        table=products,
        key_column="sku",
        steps=[
            *workflow_driver.STEPS,
            KreaStep(
                "upscale",
                model="enhance/topaz/standard-enhance",
                inputs={"image_url": "{previous}"},
                defaults=UPSCALE,
            ),
        ],
        store=tmp_path / "store",
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
    return workflow, products, state


def run_batch(workflow, products, instance, krea, batch):
    name = workflow.partitions_def.name
    if not instance.has_dynamic_partition(name, batch):
        instance.add_dynamic_partitions(name, [batch])
    return dg.materialize(
        [products, *workflow.assets],
        selection=workflow.assets,
        partition_key=batch,
        instance=instance,
        resources={"krea": krea},
    )


def test_a_three_step_chain_runs_from_a_table_asset_with_local_photos(
    catalog_setup, emulator, instance
):
    """Edit, scene and upscale: every image verified at each step, each file uploaded once, no
    duplicate job, even after a re-run and a second batch."""
    workflow, products, _ = catalog_setup
    krea = make_resource(emulator, poll_timeout=60)
    products_run = dg.materialize([products], instance=instance)
    assert products_run.success
    result = run_batch(workflow, products, instance, krea, "b1")
    assert result.success
    for step in ("edit", "scene", "upscale"):
        manifest = result.output_for_node(f"catalog__{step}")
        assert list(manifest["status"]) == ["completed", "completed"], manifest
        assert list(manifest[ROW_KEY]) == ["A1", "B2"]
        for uri, width, height in manifest[["uri", "width", "height"]].itertuples(index=False):
            with Image.open(uri) as image:
                assert image.size == (width, height)
    final = result.output_for_node("catalog__upscale")
    assert set(zip(final["width"], final["height"], strict=True)) == {(2048, 2048)}
    stats = emulator.stats()
    assert stats["jobs_created"] == 6 and stats["jobs_billed"] == 6
    assert stats["duplicate_submissions"] == 0
    # 2 photos + 2 edits + 2 scenes uploaded, each once.
    assert stats["uploads"] == 6 and stats["duplicate_uploads"] == 0

    edit = result.output_for_node("catalog__edit")
    job = emulator.job(edit["job_id"].iloc[0])
    assert job["inputs"], "the reference photo reached the job"

    again = run_batch(workflow, products, instance, krea, "b1")
    assert again.success
    after = emulator.stats()
    assert (after["jobs_created"], after["uploads"]) == (6, 6)

    second = run_batch(workflow, products, instance, krea, "b2")
    assert second.success
    final_stats = emulator.stats()
    assert final_stats["jobs_created"] == 9
    # b2's photo is a1.png: not uploaded again; its edit and scene outputs are new files.
    assert final_stats["uploads"] == 8 and final_stats["duplicate_uploads"] == 0


def test_the_chain_has_lineage_from_the_table_through_every_step(catalog_setup):
    """products -> edit -> scene -> upscale in the asset graph."""
    workflow, products, _ = catalog_setup
    krea = KreaResource(api_key="test-key-id:test-secret", base_url="http://127.0.0.1:9")
    defs = dg.Definitions(assets=[products, *workflow.assets], resources={"krea": krea})
    graph = defs.resolve_asset_graph()
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    # Each step: its prompts (from the table and the previous step's outputs), its jobs, its
    # outputs; the outputs of one step feed the next step's prompts.
    assert parents["catalog/edit_prompts"] == {"products"}
    assert parents["catalog/edit_jobs"] == {"catalog/edit_prompts"}
    assert parents["catalog/edit"] == {"catalog/edit_prompts", "catalog/edit_jobs"}
    assert parents["catalog/scene_prompts"] == {"products", "catalog/edit"}
    assert parents["catalog/scene"] == {"catalog/scene_prompts", "catalog/scene_jobs"}
    assert parents["catalog/upscale_prompts"] == {"products", "catalog/scene"}
    assert parents["catalog/upscale"] == {"catalog/upscale_prompts", "catalog/upscale_jobs"}


def test_a_changed_row_pays_only_downstream_of_it_and_a_failed_row_is_skipped(
    catalog_setup, emulator, instance
):
    """Editing one product re-runs only its chain; a row whose edit failed is skipped, unpaid."""
    workflow, products, state = catalog_setup
    krea = make_resource(emulator, poll_timeout=60)
    dg.materialize([products], instance=instance)
    assert run_batch(workflow, products, instance, krea, "b1").success
    assert emulator.stats()["jobs_created"] == 6
    table = state["table"].copy()
    table.loc[table["sku"] == "B2", "name"] = "green boot"
    state["table"] = table
    dg.materialize([products], instance=instance)
    assert run_batch(workflow, products, instance, krea, "b1").success
    assert emulator.stats()["jobs_created"] == 9  # B2's three steps only

    emulator.configure(job_failure_rate=1.0, job_failures=[["safety_filter", "blocked"]])
    table.loc[table["sku"] == "A1", "name"] = "red sneaker, flagged"
    state["table"] = table
    dg.materialize([products], instance=instance)
    result = run_batch(workflow, products, instance, krea, "b1")
    scene = result.output_for_node("catalog__scene")
    flagged = scene[scene[ROW_KEY] == "A1"].iloc[0]
    assert flagged["status"] == "skipped" and flagged["error_code"] == "upstream_failed"
    assert emulator.stats()["jobs_created"] == 10  # A1's edit only; nothing downstream of it


def test_a_missing_column_in_a_template_fails_before_anything_is_paid(tmp_path, emulator, instance):
    """A placeholder naming no column stops the step, naming it and the table's columns; 0 POSTs."""

    @dg.asset
    def items() -> pd.DataFrame:
        return pd.DataFrame({"batch": ["b1"], "title": ["a lamp"]})

    workflow = build_krea_workflow(
        "bad",
        table=items,
        steps=[KreaStep("gen", model="openai/gpt-image-2", prompt="Photo of {name}")],
        store=tmp_path / "store",
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
    instance.add_dynamic_partitions(workflow.partitions_def.name, ["b1"])
    result = dg.materialize(
        [items, *workflow.assets],
        partition_key="b1",
        instance=instance,
        resources={"krea": make_resource(emulator)},
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "no column 'name'" in message and "(its columns: title)" in message
    assert emulator.stats()["jobs_created"] == 0


@pytest.mark.parametrize(
    ("template", "row", "expected"),
    [
        ("Photo of {name}", {"name": "a lamp"}, "Photo of a lamp"),
        ("{a} and {b}", {"a": 1, "b": "x"}, "1 and x"),
    ],
    ids=["one-column", "two-columns"],
)
def test_templates_render_from_row_columns(template, row, expected):
    """Placeholders take the row's cells."""
    assert render(template, row) == expected


@pytest.mark.parametrize(
    ("template", "row", "column"),
    [
        ("Photo of {name}", {"title": "x"}, "name"),
        ("Photo of {name}", {"name": ""}, "name"),
        ("Photo of {name}", {"name": None}, "name"),
        ("Photo of {}", {"name": "x"}, ""),
        ("Photo of {name!r}", {"name": "x"}, "name"),
    ],
    ids=["missing", "blank", "empty", "positional", "conversion"],
)
def test_templates_refuse_missing_or_empty_cells(template, row, column):
    """A missing, blank or empty cell, or a non-column placeholder, is a TemplateError naming it."""
    with pytest.raises(TemplateError) as raised:
        render(template, row)
    assert raised.value.column == column


def test_a_whole_cell_placeholder_keeps_the_cells_type():
    """``{photos}`` over a list cell gives the list; lists of templates render each item."""
    row = {"photos": ["a.png", "b.png"], "one": "c.png"}
    assert render_value("{photos}", row) == ["a.png", "b.png"]
    assert render_value(["{one}"], row) == ["c.png"]


@pytest.mark.parametrize(
    ("crash_at", "jobs_before_rerun"),
    [("upload.after_post", 0), ("submit.after_post@catalog.scene", 3)],
    ids=["during-an-upload", "during-a-step-2-submit"],
)
def test_kill_9_in_a_workflow_then_rerun_uploads_and_pays_once(
    crash_at, jobs_before_rerun, tmp_path, emulator
):
    """A worker killed after an upload or a step-2 POST: the re-run uploads no file twice and
    pays for no job twice."""
    import os
    import signal
    import subprocess
    import sys

    from krea_dagster.engine.crashpoints import CRASH_ENV

    photos = tmp_path / "photos"
    photos.mkdir()
    table_csv = tmp_path / "products.csv"
    pd.DataFrame(
        {
            "batch": ["b1"] * 3,
            "sku": ["A1", "B2", "C3"],
            "name": ["red sneaker", "blue boot", "green hat"],
            "photo": [
                str(photo(photos / f"{sku}.png", color))
                for sku, color in (("a1", (200, 0, 0)), ("b2", (0, 0, 200)), ("c3", (0, 200, 0)))
            ],
        }
    ).to_csv(table_csv, index=False)
    store, ledger = str(tmp_path / "store"), f"sqlite:///{tmp_path / 'ledger.db'}"
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        products, workflow = workflow_driver.build(str(table_csv), store, ledger)
        instance.add_dynamic_partitions(workflow.partitions_def.name, ["b1"])
        env = {**os.environ, "DAGSTER_HOME": str(home), CRASH_ENV: crash_at}
        command = [sys.executable, workflow_driver.__file__, str(table_csv), store, ledger]
        command += [emulator.base_url, emulator.token, "b1"]
        killed = subprocess.run(command, env=env, capture_output=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
        assert emulator.stats()["jobs_created"] == jobs_before_rerun + (
            1 if jobs_before_rerun else 0
        )
        result = dg.materialize(
            [products, *workflow.assets],
            partition_key="b1",
            instance=instance,
            resources={"krea": make_resource(emulator, poll_timeout=60)},
        )
        assert result.success
        scene = result.output_for_node("catalog__scene")
        assert set(scene["status"]) == {"completed"}
    stats = emulator.stats()
    assert stats["duplicate_uploads"] == 0 and stats["uploads"] == 6  # 3 photos + 3 edits
    assert stats["duplicate_submissions"] == 0
    assert stats["jobs_created"] == stats["jobs_billed"] == 6


def test_an_image_to_video_step_stores_a_verified_video_with_its_poster(
    tmp_path, emulator, instance
):
    """edit -> animate (kling, the edit as start_image): each row ends with a stored MP4 whose
    boxes were checked, a poster-frame thumbnail, and a video card in the gallery page."""
    photos = tmp_path / "photos"
    photos.mkdir()

    @dg.asset
    def shots() -> pd.DataFrame:
        return pd.DataFrame(
            {
                "batch": ["b1"],
                "sku": ["A1"],
                "name": ["red sneaker"],
                "photo": [str(photo(photos / "a1.png", (200, 30, 30)))],
            }
        )

    workflow = build_krea_workflow(
        "motion",
        table=shots,
        key_column="sku",
        steps=[
            workflow_driver.STEPS[0],
            KreaStep(
                "animate",
                model="video/kling/kling-2.6",
                prompt="The {name} turns slowly on a white table",
                inputs={"start_image": "{previous}"},
            ),
        ],
        store=tmp_path / "store",
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
    dg.materialize([shots], instance=instance)
    result = run_batch(workflow, shots, instance, make_resource(emulator, poll_timeout=60), "b1")
    assert result.success
    video = result.output_for_node("motion__animate").iloc[0]
    assert video["status"] == "completed", video["error_message"]
    assert video["uri"].endswith(".mp4") and video["width"] > 0 and video["height"] > 0
    with open(video["uri"], "rb") as handle:
        assert handle.read(12)[4:8] == b"ftyp"
    page = next((tmp_path / "store").rglob("motion.animate/batches/b1/index.html"))
    assert "<video " in page.read_text()
