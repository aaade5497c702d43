"""The pipeline end to end against the emulator over real HTTP: pay once, store everything, show failures."""

from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from krea_dagster import KreaTranslator
from krea_dagster.api import JobStatus

from .conftest import (
    check_results,
    make_resource,
    manifest_of,
    materialize,
    prompt_rows,
    write_batch,
)

ALL_CHECKS_PASS = {
    "no_failed_prompts": True,
    "every_prompt_resolved": True,
    "images_have_requested_size": True,
    "no_duplicate_paid_jobs": True,
}


def test_batch_end_to_end_stores_verified_images_and_a_manifest(
    build, emulator, krea, instance, prompts_dir
):
    """A batch becomes one paid job per prompt and one verified image per job, listed in the manifest."""
    write_batch(
        prompts_dir,
        "b1",
        [
            *prompt_rows(3, width=512, height=512),
            {"prompt": "a tall one", "width": 512, "height": 768, "team": "x"},
        ],
    )
    assets = build()
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert result.success
    manifest = manifest_of(result, assets)
    assert list(manifest["status"]) == ["completed"] * 4
    assert manifest["team"].tolist()[-1] == "x"  # a carried column
    for record in manifest.to_dict(orient="records"):
        with Image.open(record["uri"]) as image:
            assert image.size == (record["width"], record["height"])
        assert Path(record["uri"]).name.startswith(record["sha256"])
    assert (manifest.iloc[3]["width"], manifest.iloc[3]["height"]) == (512, 768)
    assert check_results(result) == ALL_CHECKS_PASS
    stats = emulator.stats()
    assert stats["jobs_created"] == 4
    assert stats["jobs_billed"] == 4
    assert stats["duplicate_submissions"] == 0
    assert manifest["cost_usd"].sum() == pytest.approx(4 * 0.007)


def test_rerun_pays_nothing(build, emulator, krea, instance, prompts_dir):
    """Materializing the same batch again creates no job and downloads no image."""
    write_batch(prompts_dir, "b1", prompt_rows(3))
    assets = build()
    assert materialize(assets, "b1", instance=instance, krea=krea).success
    before = emulator.stats()
    again = materialize(assets, "b1", instance=instance, krea=krea)
    assert again.success
    after = emulator.stats()
    assert after["jobs_created"] == before["jobs_created"] == 3
    assert after["cdn_downloads"] == before["cdn_downloads"]
    assert check_results(again) == ALL_CHECKS_PASS


def test_changed_batch_pays_only_for_new_and_changed_rows(
    build, emulator, krea, instance, prompts_dir
):
    """Editing one row and adding one submits exactly two new jobs; the manifest follows the file."""
    rows = prompt_rows(3)
    write_batch(prompts_dir, "b1", rows)
    assets = build()
    assert materialize(assets, "b1", instance=instance, krea=krea).success
    rows[1] = {"prompt": "an edited prompt"}
    write_batch(prompts_dir, "b1", [*rows, {"prompt": "a new prompt"}])
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert result.success
    assert emulator.stats()["jobs_created"] == 5
    assert manifest_of(result, assets)["prompt"].tolist() == [
        "test prompt number 0",
        "an edited prompt",
        "test prompt number 2",
        "a new prompt",
    ]


def test_invalid_batch_makes_no_api_call_and_names_every_bad_row(
    build, emulator, krea, instance, prompts_dir
):
    """A batch with bad rows fails in prompts, listing each file line and rule, and Krea sees no request."""
    write_batch(
        prompts_dir,
        "bad",
        [
            {"prompt": "fine", "width": "512"},
            {"prompt": "", "width": "512"},
            {"prompt": "too wide", "width": "4000"},
            {"prompt": "x" * 1801, "width": "512"},
            {"prompt": "fine", "width": "512"},
        ],
    )
    assets = build()
    result = materialize(assets, "bad", instance=instance, krea=krea)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    message = failure.description
    # The file's own lines: the header is line 1, so data row N is line N + 1.
    assert "bad.csv line 3" in message and "the prompt is empty" in message
    assert "bad.csv line 4" in message and "maximum" in message
    assert "bad.csv line 5" in message and "maxLength" in message
    assert "bad.csv line 6" in message and "duplicate of bad.csv line 2" in message
    # Only Krea's public document was read (the live catalog): nothing else, nothing paid.
    assert set(emulator.stats()["requests_by_route"]) <= {"GET /openapi.json"}


def test_budget_guard_refuses_before_any_call(build, emulator, krea, instance, prompts_dir):
    """A batch estimated above max_usd_per_run fails with the estimate and submits nothing."""
    write_batch(prompts_dir, "b1", prompt_rows(10))
    assets = build(max_usd_per_run=0.05)
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "$0.0700" in message and "max_usd_per_run" in message
    assert "POST /generate/image/{provider}/{model}" not in emulator.stats()["requests_by_route"]


def test_402_stops_the_batch_and_a_top_up_finishes_it_without_paying_twice(
    build, emulator, krea, instance, prompts_dir
):
    """When the balance runs out mid-batch, what was paid stays recorded and a re-run pays only for the rest."""
    emulator.set_balance(0.007 * 4 + 0.001)
    write_batch(prompts_dir, "b1", prompt_rows(10))
    assets = build()
    first = materialize(assets, "b1", instance=instance, krea=krea, roles=("prompts", "jobs"))
    assert not first.success
    message = first.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "402" in message and "top up" in message.lower()
    assert emulator.stats()["jobs_created"] == 4
    emulator.top_up(1.0)
    second = materialize(assets, "b1", instance=instance, krea=krea)
    assert second.success
    stats = emulator.stats()
    assert stats["jobs_created"] == 10
    assert stats["jobs_billed"] == 10
    assert stats["duplicate_submissions"] == 0
    assert check_results(second) == ALL_CHECKS_PASS


def test_failed_jobs_land_in_the_failures_table_with_code_and_message(
    build, emulator, krea, instance, prompts_dir
):
    """Krea's error code and message reach the manifest and the failures table; with every failure tolerated the resolved check passes and the failed-prompts check warns."""
    emulator.configure(
        job_failure_rate=1.0, job_failures=[["safety_filter", "The prompt was flagged"]]
    )
    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build(max_attempts=1, max_failed_fraction=1.0)
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert result.success
    manifest = manifest_of(result, assets)
    assert set(manifest["status"]) == {"failed"}
    assert set(manifest["error_code"]) == {"safety_filter"}
    assert set(manifest["error_message"]) == {"The prompt was flagged"}
    materialization = result.asset_materializations_for_node(assets.images.node_def.name)[0]
    table = materialization.metadata["krea/failures"]
    assert [record.data["code"] for record in table.records] == ["safety_filter", "safety_filter"]
    assert check_results(result)["every_prompt_resolved"] is True
    (failed_check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "no_failed_prompts"
    ]
    assert (failed_check.passed, failed_check.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert emulator.stats()["jobs_billed"] == 0


def test_failed_prompts_are_retried_on_the_next_run_up_to_max_attempts(
    build, emulator, krea, instance, prompts_dir
):
    """A failed job is not billed, so the next run tries again, at most max_attempts times."""
    emulator.configure(job_failure_rate=1.0)
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build(max_attempts=2)
    for _ in range(3):
        materialize(assets, "b1", instance=instance, krea=krea)
    assert emulator.stats()["jobs_created"] == 2


def test_accept_then_drop_is_reconciled_without_a_second_payment(
    build, emulator, instance, prompts_dir
):
    """Jobs created by POSTs whose answers were lost are found through GET /jobs, never submitted again."""
    emulator.configure(accept_then_drop_rate=0.4, seed=3)
    write_batch(prompts_dir, "b1", prompt_rows(12))
    assets = build()
    krea = make_resource(emulator)
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert result.success, result.get_step_failure_events()
    stats = emulator.stats()
    assert stats["faults_injected"].get("accept_then_drop", 0) >= 2
    assert stats["duplicate_submissions"] == 0
    assert stats["jobs_created"] == 12
    assert set(manifest_of(result, assets)["status"]) == {"completed"}
    reconciled = result.asset_materializations_for_node(assets.jobs.node_def.name)[0].metadata[
        "krea/reconciled"
    ]
    assert reconciled.value == stats["faults_injected"]["accept_then_drop"]


def test_server_errors_on_submit_are_reconciled_not_resent(build, emulator, instance, prompts_dir):
    """A 5xx answer to a POST is ambiguous: the prompt is resolved through GET /jobs, never blindly re-sent."""
    emulator.configure(error_5xx_rate=0.3, error_5xx_routes=["POST /generate"], seed=5)
    write_batch(prompts_dir, "b1", prompt_rows(10))
    assets = build()
    result = materialize(assets, "b1", instance=instance, krea=make_resource(emulator))
    assert result.success
    stats = emulator.stats()
    assert stats["duplicate_submissions"] == 0
    assert stats["jobs_created"] == 10
    assert set(manifest_of(result, assets)["status"]) == {"completed"}


def test_regeneration_opens_a_new_generation_with_new_seeds(
    build, emulator, krea, instance, prompts_dir
):
    """The krea/regenerate tag submits every prompt again with a new seed; the manifest points at it."""
    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build()
    first = manifest_of(materialize(assets, "b1", instance=instance, krea=krea), assets)
    second_result = materialize(
        assets, "b1", instance=instance, krea=krea, tags={"krea/regenerate": "true"}
    )
    second = manifest_of(second_result, assets)
    assert set(second["generation"]) == {2}
    assert set(first["sha256"]).isdisjoint(second["sha256"])
    stats = emulator.stats()
    assert stats["jobs_created"] == 4
    assert stats["duplicate_submissions"] == 0
    ledger = assets.pipeline.ledger
    assert {row.generation for row in ledger.rows(assets.prefix, "b1")} == {1, 2}
    assert check_results(second_result) == ALL_CHECKS_PASS


def test_regeneration_by_run_config(build, emulator, krea, instance, prompts_dir):
    """Run config regenerate: true does what the tag does."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build()
    materialize(assets, "b1", instance=instance, krea=krea)
    config = {"ops": {assets.jobs.node_def.name: {"config": {"regenerate": True}}}}
    result = materialize(assets, "b1", instance=instance, krea=krea, run_config=config)
    assert set(manifest_of(result, assets)["generation"]) == {2}


def test_two_prefixes_coexist_in_one_code_location(tmp_path, emulator, krea, instance, prompts_dir):
    """Two instances (two models, two sources) load together and run without touching each other."""
    from krea_dagster import build_krea_image_assets, build_krea_sensors

    other_dir = tmp_path / "other_prompts"
    other_dir.mkdir()
    write_batch(prompts_dir, "b1", prompt_rows(2))
    write_batch(
        other_dir, "b1", [{"prompt": "a square", "aspect_ratio": "1:1", "resolution": "1K"}]
    )
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    flux = build_krea_image_assets(
        "flux", prompts=prompts_dir, model="bfl/flux-1-dev", store=tmp_path / "s", ledger=ledger
    )
    zimage = build_krea_image_assets(
        "zimage", prompts=other_dir, model="z-image/z-image", store=tmp_path / "s", ledger=ledger
    )
    defs = dg.Definitions(
        assets=[*flux.assets, *zimage.assets],
        sensors=[*build_krea_sensors(flux), *build_krea_sensors(zimage)],
        resources={"krea": krea},
    )
    dg.Definitions.validate_loadable(defs)
    assert materialize(flux, "b1", instance=instance, krea=krea).success
    result = materialize(zimage, "b1", instance=instance, krea=krea)
    assert result.success
    assert manifest_of(result, zimage)["status"].tolist() == ["completed"]
    assert len(flux.pipeline.ledger.rows("flux", "b1")) == 2
    assert len(zimage.pipeline.ledger.rows("zimage", "b1")) == 1


def test_translator_renames_keys_and_groups(build):
    """A translator subclass decides keys, groups and owners; the builder wires dependencies from them."""

    class Marketing(KreaTranslator):
        def get_asset_spec(self, props):
            spec = super().get_asset_spec(props)
            return spec.replace_attributes(
                key=dg.AssetKey(["marketing", props.prefix, props.role]),
                group_name="marketing",
                owners=["team:creative"],
            )

    assets = build(translator=Marketing())
    assert assets.images.key == dg.AssetKey(["marketing", "krea_test", "images"])
    assert assets.images.specs_by_key[assets.images.key].owners == ["team:creative"]
    deps = {dep.asset_key for dep in assets.images.specs_by_key[assets.images.key].deps}
    assert dg.AssetKey(["marketing", "krea_test", "jobs"]) in deps


def test_images_metadata_has_gallery_counts_and_cost(build, emulator, krea, instance, prompts_dir):
    """The images materialization shows small thumbnails, counts, cost and the store location."""
    write_batch(prompts_dir, "b1", prompt_rows(30))
    assets = build(thumbnails=12)
    result = materialize(assets, "b1", instance=instance, krea=krea)
    metadata = result.asset_materializations_for_node(assets.images.node_def.name)[0].metadata
    gallery = metadata["krea/thumbnails"].value
    assert gallery.count("data:image/jpeg;base64,") == 12
    print(f"thumbnails markdown: {len(gallery)} characters for 12 thumbnails")
    assert len(gallery) < 120_000
    assert metadata["krea/images"].value == 30
    assert metadata["krea/batch_cost_usd"].value == pytest.approx(0.21)
    assert metadata["krea/run_cost_usd"].value == pytest.approx(0.21)
    assert metadata["dagster/row_count"].value == 30


def test_images_without_jobs_fails_with_what_to_do(build, krea, instance, prompts_dir):
    """Launching images before jobs says to materialize jobs first."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build()
    materialize(assets, "b1", instance=instance, krea=krea, roles=("prompts",))
    result = materialize(assets, "b1", instance=instance, krea=krea, roles=("images",))
    message = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "materialize the jobs asset first" in message


def test_poll_timeout_reports_pending_jobs_and_the_check_fails(
    build, emulator, instance, prompts_dir
):
    """Jobs still rendering after poll_timeout stay recorded as pending and fail the resolved check."""
    emulator.configure(render_seconds=30.0, time_scale=1.0)
    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build()
    krea = make_resource(emulator, poll_timeout=0.3)
    result = materialize(assets, "b1", instance=instance, krea=krea)
    manifest = manifest_of(result, assets)
    assert set(manifest["status"]) == {"pending"}
    assert check_results(result)["every_prompt_resolved"] is False


def test_poll_timeout_can_cancel_unbilled(build, emulator, instance, prompts_dir):
    """With on_poll_timeout=cancel, overdue jobs are cancelled and nothing is billed."""
    emulator.configure(render_seconds=30.0, time_scale=1.0)
    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build(max_failed_fraction=1.0)
    krea = make_resource(emulator, poll_timeout=0.3, on_poll_timeout="cancel")
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert set(manifest_of(result, assets)["status"]) == {"cancelled"}
    assert emulator.stats()["jobs_billed"] == 0


def test_concurrency_cap_keeps_live_jobs_under_max_concurrent_submits(
    build, emulator, instance, prompts_dir
):
    """max_concurrent_submits keeps the batch's live jobs at Krea under the cap (no backlog 429s)."""
    emulator.configure(render_seconds=0.05)
    emulator.update_account(backlog=2, concurrency=2)
    write_batch(prompts_dir, "b1", prompt_rows(12))
    assets = build()
    krea = make_resource(emulator, max_concurrent_submits=4)
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert result.success
    stats = emulator.stats()
    assert stats["jobs_created"] == 12
    assert stats["faults_injected"].get("backlog_full", 0) == 0
    assert set(manifest_of(result, assets)["status"]) == {"completed"}


def test_ledger_rows_record_the_whole_story(build, emulator, krea, instance, prompts_dir):
    """Every ledger row ends with its job id, status, result URL, image URI, hash, size and cost."""
    write_batch(prompts_dir, "b1", prompt_rows(2, width=512, height=512))
    assets = build()
    materialize(assets, "b1", instance=instance, krea=krea)
    for row in assets.pipeline.ledger.rows(assets.prefix, "b1"):
        assert row.state == JobStatus.COMPLETED
        assert row.job_id and row.result_url and row.image_uri and row.sha256
        assert (row.width, row.height) == (512, 512)
        assert row.cost_usd == pytest.approx(0.007)
        assert row.intent_at <= row.submitted_at


def test_materializing_from_a_running_event_loop_works(
    build, emulator, krea, instance, prompts_dir
):
    """dg.materialize called where an event loop already runs (a notebook cell) still submits and collects."""
    import asyncio

    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build()

    async def notebook_cell():
        return materialize(assets, "b1", instance=instance, krea=krea)

    result = asyncio.run(notebook_cell())
    assert result.success
    assert set(manifest_of(result, assets)["status"]) == {"completed"}
