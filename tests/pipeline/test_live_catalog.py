"""The live catalog through the real asset path: a model Krea added after this release.

The emulator serves Krea's document with ``krea/krea-3`` added (``catalog_documents``); the
bundled catalog lacks it. Every refusal happens before anything is paid: 0 POSTs.
"""

import hashlib
import logging
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from catalog_documents import GONE_MODEL, NEW_MODEL, NEW_MODEL_USD, extended_document

from krea_dagster.emulator.testing import EmulatorHandle
from krea_dagster.engine.ledger.schema import catalogs_table

from .conftest import make_resource, manifest_of, materialize, write_batch

OPENAPI_ROUTE = "GET /openapi.json"
NEW_ROWS = [
    {"prompt": "a lighthouse at dawn", "aspect_ratio": "1:1", "resolution": "1K"},
    {"prompt": "a paper boat", "aspect_ratio": "16:9", "resolution": "1K", "creativity": "high"},
]


@pytest.fixture
def document(emulator: EmulatorHandle, tmp_path: Path) -> Path:
    """The emulator serves the extended document (krea/krea-3 added, imagen-3 dropped)."""
    path = extended_document(tmp_path, drop_gone=True)
    emulator.configure(openapi=str(path))
    return path


def posts(emulator: EmulatorHandle) -> int:
    routes = emulator.stats()["requests_by_route"]
    return sum(count for route, count in routes.items() if route.startswith("POST"))


def openapi_requests(emulator: EmulatorHandle) -> int:
    return int(emulator.stats()["requests_by_route"].get(OPENAPI_ROUTE, 0))


def failure(result: dg.ExecuteInProcessResult) -> str:
    data = result.get_step_failure_events()[0].step_failure_data
    return data.user_failure_data.description if data.user_failure_data else data.error.message


def prompts_metadata(result: dg.ExecuteInProcessResult, assets: Any) -> dict[str, Any]:
    event = result.asset_materializations_for_node(assets.prompts.node_def.name)[0]
    return {key: value.value for key, value in event.metadata.items()}


def warnings(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        entry.user_message
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is None and entry.level == logging.WARNING
    ]


def test_a_model_only_the_live_document_has_validates_and_runs(
    build, emulator, krea, instance, prompts_dir, document
):
    """A batch for krea/krea-3 validates against the live catalog, runs, and records its fingerprint."""
    write_batch(prompts_dir, "new", NEW_ROWS)
    assets = build(model=NEW_MODEL)
    result = materialize(assets, "new", instance=instance, krea=krea)
    assert result.success
    assert list(manifest_of(result, assets)["status"]) == ["completed", "completed"]
    assert emulator.stats()["jobs_billed"] == 2
    metadata = prompts_metadata(result, assets)
    catalog = metadata["krea/catalog"]
    assert catalog["source"] == "live"
    assert catalog["fingerprint"] == hashlib.sha256(document.read_bytes()).hexdigest()
    assert catalog["base_url"] == emulator.base_url
    assert catalog["fetched_at"] and catalog["fallback"] is None and catalog["validated"]
    # The price Krea's document gives (x-krea-pricing), not $0.
    assert metadata["krea/estimated_cost_usd"] == pytest.approx(2 * NEW_MODEL_USD)
    assert warnings(instance, result.run_id) == []


def test_a_bad_field_of_the_new_model_is_refused_with_no_post(
    build, emulator, krea, instance, prompts_dir, document
):
    """A value outside the new model's enum is a problem naming the row and field; 0 POSTs."""
    write_batch(prompts_dir, "bad", [{**NEW_ROWS[0], "aspect_ratio": "2:1"}])
    assets = build(model=NEW_MODEL)
    result = materialize(assets, "bad", instance=instance, krea=krea)
    assert not result.success
    message = failure(result)
    assert "aspect_ratio" in message and "2:1" in message
    assert posts(emulator) == 0


def test_one_fetch_serves_every_step_and_run_while_fresh(
    build, emulator, krea, instance, prompts_dir, document
):
    """Two runs of three steps each read /openapi.json once: the ledger's copy serves the rest."""
    write_batch(prompts_dir, "new", NEW_ROWS)
    assets = build(model=NEW_MODEL)
    for _ in range(2):
        assert materialize(assets, "new", instance=instance, krea=krea).success
    assert openapi_requests(emulator) == 1


def test_a_stale_copy_is_revalidated_with_its_etag(
    build, emulator, instance, prompts_dir, document
):
    """Past catalog_max_age the backend is asked again with If-None-Match; its 304 keeps the copy."""
    write_batch(prompts_dir, "new", NEW_ROWS[:1])
    assets = build(model=NEW_MODEL)
    krea = make_resource(emulator, catalog_max_age=0)
    assert materialize(assets, "new", instance=instance, krea=krea, roles=("prompts",)).success
    ledger = assets.pipeline.ledger
    with ledger.engine.connect() as conn:
        first = conn.execute(catalogs_table.select()).mappings().one()
    assert materialize(assets, "new", instance=instance, krea=krea, roles=("prompts",)).success
    with ledger.engine.connect() as conn:
        second = conn.execute(catalogs_table.select()).mappings().one()
    assert openapi_requests(emulator) == 2
    assert second["fetched_at"] == first["fetched_at"]  # not downloaded again
    assert second["checked_at"] > first["checked_at"]
    assert second["etag"] == first["etag"] and first["etag"]


@pytest.mark.parametrize(
    ("setting", "fault", "named"),
    [
        pytest.param({"live_catalog": False}, {}, "live_catalog=False", id="live-fetch-off"),
        pytest.param(
            {},
            {"error_5xx_rate": 1.0, "error_5xx_routes": [OPENAPI_ROUTE]},
            "answered 5",
            id="live-fetch-failing",
        ),
    ],
)
def test_without_the_live_catalog_the_new_model_is_refused_naming_the_fix(
    build, emulator, instance, prompts_dir, document, setting, fault, named
):
    """With the live fetch off or failing, the same batch is refused naming the cause and the fix."""
    emulator.configure(**fault)
    write_batch(prompts_dir, "new", NEW_ROWS)
    assets = build(model=NEW_MODEL)
    krea = make_resource(emulator, **setting)
    result = materialize(assets, "new", instance=instance, krea=krea)
    assert not result.success
    message = failure(result)
    assert NEW_MODEL in message and named in message
    assert "catalog --refresh" in message and "unvalidated_models" in message
    assert posts(emulator) == 0
    said = [text for text in warnings(instance, result.run_id) if "model catalog" in text]
    assert len(said) == (1 if fault else 0)
    if fault:
        assert "answered 5" in said[0]


def test_a_model_gone_from_krea_is_refused_before_anything_is_paid(
    build, emulator, krea, instance, prompts_dir, document
):
    """A bundled model Krea's document no longer lists stops its batches, unpaid, saying so."""
    write_batch(prompts_dir, "old", [{"prompt": "a lighthouse"}])
    assets = build(model=GONE_MODEL)
    result = materialize(assets, "old", instance=instance, krea=krea)
    assert not result.success
    assert "no longer lists it" in failure(result)
    assert posts(emulator) == 0


def test_an_unvalidated_opt_in_sends_the_batch_labelled_so(
    build, emulator, instance, prompts_dir, document
):
    """A model listed in unvalidated_models runs with no catalog; manifest and metadata say so."""
    write_batch(prompts_dir, "new", NEW_ROWS[:1])
    assets = build(model=NEW_MODEL)
    krea = make_resource(emulator, live_catalog=False, unvalidated_models=[NEW_MODEL])
    result = materialize(assets, "new", instance=instance, krea=krea)
    assert result.success
    manifest = manifest_of(result, assets)
    assert manifest["validation"].tolist() == ["unvalidated"]
    assert manifest["status"].tolist() == ["completed"]
    metadata = prompts_metadata(result, assets)
    assert metadata["krea/catalog"]["validated"] is False
    assert metadata["krea/unpriced_prompts"] == 1
    said = " ".join(warnings(instance, result.run_id))
    assert f"no price is known for image/{NEW_MODEL}" in said


def test_an_unvalidated_model_still_needs_a_price_under_a_budget(
    build, emulator, instance, prompts_dir, document
):
    """With max_usd_per_run set, an unvalidated (unpriced) model needs price_usd; 0 POSTs."""
    write_batch(prompts_dir, "new", NEW_ROWS[:1])
    assets = build(model=NEW_MODEL, max_usd_per_run=5.0)
    krea = make_resource(emulator, live_catalog=False, unvalidated_models=[NEW_MODEL])
    result = materialize(assets, "new", instance=instance, krea=krea)
    assert not result.success
    assert "price_usd" in failure(result)
    assert posts(emulator) == 0
