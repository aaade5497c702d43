"""A Krea node app as a workflow node: one row, one execution, several jobs, all paid once."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from PIL import Image

from krea_dagster import KreaResource, KreaStep, build_krea_workflow
from krea_dagster.api import catalog
from krea_dagster.emulator import DEMO_NODE_APP_ID
from krea_dagster.engine.crashpoints import CRASH_ENV
from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.nodes import ROW_KEY

from . import workflow_driver
from .conftest import TEST_TIME_SCALE, make_resource

APP = f"node-app/{DEMO_NODE_APP_ID}"


def photo(path: Path, color: tuple[int, int, int]) -> str:
    Image.new("RGB", (64, 64), color).save(path)
    return str(path)


def product_table(tmp_path: Path) -> pd.DataFrame:
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    return pd.DataFrame(
        {
            "batch": ["b1", "b1"],
            "sku": ["A1", "B2"],
            "name": ["red sneaker", "blue boot"],
            "photo": [
                photo(photos / "a1.png", (200, 30, 30)),
                photo(photos / "b2.png", (30, 30, 200)),
            ],
        }
    )


def build(tmp_path: Path, steps: list[KreaStep], table: pd.DataFrame | None = None):
    frame = product_table(tmp_path) if table is None else table

    @dg.asset
    def products() -> pd.DataFrame:
        return frame

    workflow = build_krea_workflow(
        "catalog",
        table=products,
        key_column="sku",
        steps=steps,
        store=tmp_path / "store",
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
    return products, workflow


def run(products, workflow, instance, krea, *, raise_on_error: bool = True):
    name = workflow.partitions_def.name
    if not instance.has_dynamic_partition(name, "b1"):
        instance.add_dynamic_partitions(name, ["b1"])
    return dg.materialize(
        [products, *workflow.assets],
        partition_key="b1",
        instance=instance,
        resources={"krea": krea},
        raise_on_error=raise_on_error,
    )


def failure_message(result) -> str:
    failure = next(event for event in result.all_events if event.is_step_failure)
    return failure.step_failure_data.error.message


def test_a_node_app_step_collects_every_job_of_each_rows_execution(tmp_path, emulator, instance):
    """edit -> node app: each row executes the app once; both of its jobs are verified and
    stored, its cost is the app's price, and a re-run executes nothing again."""
    products, workflow = build(tmp_path, [workflow_driver.STEPS[0], workflow_driver.ANGLES])
    krea = make_resource(emulator, poll_timeout=60)
    result = run(products, workflow, instance, krea)
    manifest = result.output_for_node("catalog__angles")
    assert list(manifest[ROW_KEY]) == ["A1", "B2"]
    assert list(manifest["status"]) == ["completed", "completed"], manifest["error_message"]
    assert list(manifest["cost_usd"]) == [pytest.approx(0.25)] * 2
    for uri, outputs in manifest[["uri", "outputs"]].itertuples(index=False):
        assert len(outputs) == 2 and outputs[0] == uri and outputs[0] != outputs[1]
        for stored in outputs:
            with Image.open(stored) as image:
                image.verify()
    stats = emulator.stats()
    assert stats["jobs_created"] == 2 + 4 and stats["duplicate_submissions"] == 0
    assert stats["requests_by_route"]["POST /node-apps/{id}/execute"] == 2
    (page,) = [p for p in (tmp_path / "store").rglob("index.html") if "angles" in str(p)]
    html = page.read_text()
    for outputs in manifest["outputs"]:  # the gallery shows every job's image of the row
        assert all(Path(out).name in html for out in outputs)
    assert html.count('<img class="more"') == 2

    again = run(products, workflow, instance, krea)
    assert list(again.output_for_node("catalog__angles")["status"]) == ["completed"] * 2
    assert emulator.stats()["jobs_created"] == 6
    assert emulator.stats()["requests_by_route"]["POST /node-apps/{id}/execute"] == 2


def test_an_execution_whose_answer_was_lost_is_reconciled_to_all_its_jobs(
    tmp_path, emulator, instance
):
    """The execute POST created both jobs and the answer was dropped: reconciliation finds
    both, the app is never executed again, and both images are stored."""
    products, workflow = build(tmp_path, [workflow_driver.ANGLES_FROM_PHOTO])
    emulator.configure(accept_then_drop_rate=1.0)
    krea = make_resource(emulator, poll_timeout=60)
    result = run(products, workflow, instance, krea, raise_on_error=False)
    emulator.configure(accept_then_drop_rate=0.0)
    if not result.success:  # the first run may stop while reconciling; the re-run settles it
        result = run(products, workflow, instance, krea)
    manifest = result.output_for_node("catalog__angles")
    assert list(manifest["status"]) == ["completed"] * 2, manifest["error_message"]
    assert all(len(outputs) == 2 for outputs in manifest["outputs"])
    stats = emulator.stats()
    assert stats["requests_by_route"]["POST /node-apps/{id}/execute"] == 2
    assert stats["jobs_created"] == 4 and stats["duplicate_submissions"] == 0


def test_rows_that_miss_a_required_input_of_the_app_fail_before_anything_is_paid(
    tmp_path, emulator, instance
):
    """The app's own input schema (read from Krea) validates every row: 0 executions."""
    step = KreaStep("angles", model=APP, inputs={"product_image": "{photo}"}, price_usd=0.25)
    products, workflow = build(tmp_path, [step])
    result = run(products, workflow, instance, make_resource(emulator), raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "product" in message and "required" in message
    assert emulator.stats()["jobs_created"] == 0


def test_an_unknown_node_app_fails_the_step_with_what_to_do(tmp_path, emulator, instance):
    """A version id the token cannot see: the step fails naming it, nothing is paid."""
    step = KreaStep("angles", model="node-app/no-such-app", inputs={"product": "{name}"})
    products, workflow = build(tmp_path, [step])
    result = run(products, workflow, instance, make_resource(emulator), raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "no-such-app" in message and "404" in message and "version id" in message
    assert emulator.stats()["jobs_created"] == 0


def test_a_node_app_without_a_price_under_a_budget_cap_is_refused(tmp_path, emulator, instance):
    """Krea publishes no price for an execution: with a cap, price_usd is required."""
    step = KreaStep("angles", model=APP, inputs={"product_image": "{photo}", "product": "{name}"})
    frame = product_table(tmp_path)

    @dg.asset
    def products() -> pd.DataFrame:
        return frame

    workflow = build_krea_workflow(
        "catalog",
        table=products,
        key_column="sku",
        steps=[step],
        store=tmp_path / "store",
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        max_usd_per_run=1.0,
    )
    result = run(products, workflow, instance, make_resource(emulator), raise_on_error=False)
    assert not result.success
    assert "price_usd" in failure_message(result)
    assert emulator.stats()["jobs_created"] == 0


def test_a_misspelt_node_app_key_fails_when_the_workflow_is_built():
    """'node-app/' without a version id is caught at definition time."""
    with pytest.raises(ValueError, match="version id"):
        KreaStep("angles", model="node-app/")


def test_kill_9_after_the_execute_post_then_rerun_executes_once(tmp_path, emulator):
    """A worker killed after the app created its jobs: the re-run attributes them, executes
    nothing again, and stores every job's image."""
    table_csv = tmp_path / "products.csv"
    product_table(tmp_path).to_csv(table_csv, index=False)
    store, ledger = str(tmp_path / "store"), f"sqlite:///{tmp_path / 'ledger.db'}"
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        products, workflow = workflow_driver.build(str(table_csv), store, ledger, angles=True)
        instance.add_dynamic_partitions(workflow.partitions_def.name, ["b1"])
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            CRASH_ENV: "submit.after_post@catalog.angles",
        }
        command = [sys.executable, workflow_driver.__file__, str(table_csv), store, ledger]
        command += [emulator.base_url, emulator.token, "b1", "angles"]
        killed = subprocess.run(command, env=env, capture_output=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
        assert emulator.stats()["jobs_created"] == 2 + 2  # two edits, one execution's two jobs
        result = dg.materialize(
            [products, *workflow.assets],
            partition_key="b1",
            instance=instance,
            resources={"krea": make_resource(emulator, poll_timeout=60)},
        )
        manifest = result.output_for_node("catalog__angles")
    assert list(manifest["status"]) == ["completed"] * 2, manifest["error_message"]
    stats = emulator.stats()
    assert stats["requests_by_route"]["POST /node-apps/{id}/execute"] == 2
    assert stats["jobs_created"] == 2 + 4 and stats["duplicate_submissions"] == 0
    rows = Ledger(ledger).rows("catalog.angles")
    assert len(rows) == 4 and len({row.job_id for row in rows}) == 4


def test_a_node_apps_spec_validates_and_prices_like_a_model():
    """A spec built from an app's input schema: required fields, types, media and price."""
    spec = catalog.register_model(
        catalog.node_app_spec(
            "app-x",
            {
                "type": "object",
                "properties": {
                    "product_image": {"type": "string", "format": "uri"},
                    "count": {"type": "integer", "minimum": 1},
                },
                "required": ["product_image"],
            },
            price_usd=0.4,
        )
    )
    assert spec.key == "node-app/app-x" and spec.path == "/node-apps/app-x/execute"
    problems = catalog.validate("node-app/app-x", {"count": 0}).problems
    assert {(p.field, p.rule) for p in problems} == {
        ("product_image", "required"),
        ("count", "minimum"),
    }
    assert catalog.estimate_cost("node-app/app-x", {}) == pytest.approx(0.4)
    from krea_dagster.api.media import media_paths

    assert media_paths(spec) == ("product_image",)


def test_table_columns_named_like_the_steps_own_are_refused_before_anything_is_paid(
    tmp_path, emulator, instance
):
    """A product table's own 'outputs' and 'step' columns would be overwritten by the columns
    the step writes: the batch is refused naming both, like a prompt file's, and Krea sees no
    execution."""
    table = product_table(tmp_path).assign(outputs=["mine", "mine"], step=["x", "y"])
    products, workflow = build(tmp_path, [workflow_driver.ANGLES_FROM_PHOTO], table=table)
    result = run(
        products, workflow, instance, make_resource(emulator, poll_timeout=60), raise_on_error=False
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert "'outputs' is a column krea-dagster writes itself" in message
    assert "'step' is a column krea-dagster writes itself" in message
    assert emulator.stats()["jobs_created"] == 0
    assert emulator.stats()["uploads_by_sha256"] == {}


#: Where ``retry_definitions`` finds its workflow (the test sets them): Dagster loads a
#: reconstructable job again from this module, so it cannot close over the test's values.
RETRY_ENV = ("KREA_TEST_TABLE", "KREA_TEST_STORE", "KREA_TEST_LEDGER", "KREA_TEST_URL")


def retry_definitions() -> dg.Definitions:
    """The photo -> node app workflow, as one code location."""
    table, store, ledger, base_url = (os.environ[name] for name in RETRY_ENV)

    @dg.asset
    def products() -> pd.DataFrame:
        return pd.read_csv(table, dtype=str)

    workflow = build_krea_workflow(
        "catalog",
        table=products,
        key_column="sku",
        steps=[workflow_driver.ANGLES_FROM_PHOTO],
        store=store,
        ledger=ledger,
    )
    return dg.Definitions(
        assets=[products, *workflow.assets],
        jobs=[dg.define_asset_job("catalog_job", partitions_def=workflow.partitions_def)],
        resources={"krea": KreaResource(base_url=base_url, poll_interval=0.05, poll_timeout=60)},
        executor=dg.in_process_executor,
    )


def retry_target() -> dg.JobDefinition:
    """The workflow as one job (Dagster re-executes a failed run of it)."""
    return retry_definitions().resolve_job_def("catalog_job")


def test_an_execution_whose_first_job_failed_transiently_is_never_executed_again(
    tmp_path, emulator, monkeypatch
):
    """A node-app execution whose first job failed with ``timeout`` and whose second completed
    (billed) is never executed again: not by the run that collects it, a retry of that run
    (Dagster's re-execution from failure), a plain re-run, or a second Materialize; the
    manifest's cost_usd counts the execution."""
    table_csv = tmp_path / "products.csv"
    product_table(tmp_path).iloc[:1].to_csv(table_csv, index=False)  # one row: A1
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    values = (table_csv, tmp_path / "store", ledger_url, emulator.base_url)
    for name, value in zip(RETRY_ENV, values, strict=True):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("KREA_API_KEY", emulator.token)
    job = dg.reconstructable(retry_target)
    defs = retry_definitions()
    keys = {key.path[-1]: key for key in defs.resolve_asset_graph().get_all_asset_keys()}
    executes = "POST /node-apps/{id}/execute"
    accept = {"ops": {"catalog__angles": {"config": {"max_failed_fraction": 1.0}}}}
    # The execution's jobs wait at Krea (for hours) until the test ends them.
    emulator.configure(time_scale=1.0, render_seconds=3600)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("catalog_batches", ["b1"])

        def run(*names: str, **options: Any) -> tuple[bool, str]:
            selection = [keys[name] for name in names] if names else None
            with dg.execute_job(
                job,
                instance,
                tags={"dagster/partition": "b1"},
                asset_selection=selection,
                **options,
            ) as result:
                return result.success, result.run_id

        assert run("products", "angles_prompts", "angles_jobs")[0]
        (row, second) = Ledger(ledger_url).rows("catalog.angles", "b1")
        assert second.parent_id == row.submission_id  # the execution's second job
        emulator.fail_job(row.job_id, "timeout", "The job timed out.")
        emulator.complete_job(second.job_id)
        emulator.configure(time_scale=TEST_TIME_SCALE, render_seconds=None)

        collected, collect_run = run("angles")  # 1 of 1 rows failed: above the threshold
        assert not collected
        assert emulator.stats()["requests_by_route"][executes] == 1
        retried, retry_run = run(
            reexecution_options=dg.ReexecutionOptions.from_failure(collect_run, instance)
        )
        assert not retried
        assert instance.get_run_by_id(retry_run).parent_run_id == collect_run
        assert emulator.stats()["requests_by_route"][executes] == 1
        assert run(run_config=accept)[0]  # a plain re-run of the whole workflow
        materialized = dg.materialize(  # a second Materialize (the UI's ephemeral asset job)
            [asset for asset in defs.assets or () if isinstance(asset, dg.AssetsDefinition)],
            partition_key="b1",
            instance=instance,
            resources=defs.resources,
            run_config=accept,
        )
        manifest = materialized.output_for_node("catalog__angles")
    assert list(manifest["status"]) == ["failed"]
    assert list(manifest["error_code"]) == ["timeout"]
    assert list(manifest["cost_usd"]) == [pytest.approx(0.25)]  # the execution Krea billed
    stats = emulator.stats()
    assert stats["requests_by_route"][executes] == 1
    assert stats["jobs_created"] == 2 and stats["jobs_billed"] == 1
