"""An uploaded reference file deleted at Krea is uploaded once more, and its prompt paid once
(issue 19, point 6).

The upload cache maps a file's content hash to its asset URL for every later request. When the
asset is gone at Krea, Krea refuses a request naming it (422 "Input file rejected") or fails a
job that fetches it later; the cache entry is then forgotten, the file uploaded again, and the
prompt sent again: the refused request created no job, the failed job is not billed.
"""

import hashlib
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
from PIL import Image

from krea_dagster import KreaStep, build_krea_workflow
from krea_dagster.api import KreaClient
from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.nodes import ROW_KEY

from .conftest import TEST_TIME_SCALE, make_resource

EDIT = KreaStep(
    "edit",
    model="openai/gpt-image-2",
    prompt="Studio photo of a {name} on white",
    inputs={"image_urls": ["{photo}"]},
)
EDIT_ROUTE = "POST /generate/image/{provider}/{model}"


def build(tmp_path: Path):
    """A one-step workflow over ``products.csv`` (rewritten between runs by the tests)."""
    table = tmp_path / "products.csv"

    @dg.asset
    def products() -> pd.DataFrame:
        return pd.read_csv(table, dtype=str)

    workflow = build_krea_workflow(
        "catalog",
        table=products,
        key_column="sku",
        steps=[EDIT],
        store=tmp_path / "store",
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
    return table, products, workflow


def write_table(table: Path, rows: list[tuple[str, str, Path]]) -> None:
    pd.DataFrame(
        [{"batch": "b1", "sku": sku, "name": name, "photo": str(path)} for sku, name, path in rows]
    ).to_csv(table, index=False)


def run(products, workflow, instance, krea) -> dg.ExecuteInProcessResult:
    name = workflow.partitions_def.name
    if not instance.has_dynamic_partition(name, "b1"):
        instance.add_dynamic_partitions(name, ["b1"])
    return dg.materialize(
        [products, *workflow.assets],
        partition_key="b1",
        instance=instance,
        resources={"krea": krea},
    )


def photo(path: Path) -> tuple[Path, str]:
    Image.new("RGB", (48, 48), (180, 40, 40)).save(path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def delete_uploaded_asset(emulator, tmp_path: Path, sha256: str) -> None:
    """Delete, at Krea, the asset the ledger's upload cache holds for these bytes."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    (account,) = {row.account for row in ledger.rows("catalog.edit", "b1")}
    url = ledger.upload_cache(account).get(sha256)
    (cached,) = ledger.upload_cache(account).named([url])
    with KreaClient(api_key=emulator.token, base_url=emulator.base_url) as client:
        assert client.delete_asset(cached.asset_id) is True


def refused(stats: dict) -> int:
    """POSTs Krea answered without creating a job."""
    return stats["requests_by_route"].get(EDIT_ROUTE, 0) - stats["jobs_created"]


def test_a_new_row_naming_a_deleted_upload_uploads_it_once_more_and_pays_once(
    tmp_path, emulator, instance
):
    """After the uploaded photo's asset is deleted at Krea, a new row with the same photo is
    refused once ("Input file rejected"), the photo is uploaded once more and the row paid
    once; a re-run uploads, refuses and pays nothing more."""
    table, products, workflow = build(tmp_path)
    (tmp_path / "photos").mkdir()
    first, sha256 = photo(tmp_path / "photos" / "a1.png")
    krea = make_resource(emulator, poll_timeout=60)
    write_table(table, [("A1", "red sneaker", first)])
    assert run(products, workflow, instance, krea).success
    assert emulator.stats()["uploads_by_sha256"] == {sha256: 1}

    delete_uploaded_asset(emulator, tmp_path, sha256)
    same = shutil.copy(first, tmp_path / "photos" / "b2.png")  # the same bytes, another name
    write_table(table, [("A1", "red sneaker", first), ("B2", "red boot", Path(same))])
    result = run(products, workflow, instance, krea)
    manifest = result.output_for_node("catalog__edit")
    assert list(manifest[ROW_KEY]) == ["A1", "B2"]
    assert list(manifest["status"]) == ["completed", "completed"], manifest["error_message"]
    stats = emulator.stats()
    assert stats["uploads_by_sha256"] == {sha256: 2}  # one new upload
    assert stats["jobs_billed"] == 2 and stats["duplicate_submissions"] == 0  # one new job
    assert refused(stats) == 1  # the request naming the deleted asset, once
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    codes = [row.error_code for row in ledger.rows("catalog.edit", "b1") if row.job_id is None]
    assert codes == ["stale_upload"]

    again = run(products, workflow, instance, krea)
    assert list(again.output_for_node("catalog__edit")["status"]) == ["completed"] * 2
    after = emulator.stats()
    assert after["uploads_by_sha256"] == {sha256: 2}
    assert (after["jobs_created"], after["jobs_billed"]) == (stats["jobs_created"], 2)
    assert refused(after) == 1


def materialize(products, workflow, instance, krea, *roles: str) -> dg.ExecuteInProcessResult:
    """One run of these assets (``products``, ``edit_prompts``, ``edit_jobs``, ``edit``)."""
    name = workflow.partitions_def.name
    if not instance.has_dynamic_partition(name, "b1"):
        instance.add_dynamic_partitions(name, ["b1"])
    chosen = [products] if "products" in roles else []
    chosen += [asset for asset in workflow.assets if asset.key.path[-1] in roles]
    return dg.materialize(
        [products, *workflow.assets],
        selection=chosen,
        partition_key="b1",
        instance=instance,
        resources={"krea": krea},
    )


def test_a_job_that_failed_because_its_upload_was_deleted_uploads_it_once_more_and_pays_once(
    tmp_path, emulator, instance
):
    """A job accepted while its uploaded photo existed, whose asset was deleted before Krea
    fetched it, fails (not billed); collecting the batch then finds the asset gone, uploads the
    photo once more and sends the row again: one paid job, and a re-run pays nothing."""
    table, products, workflow = build(tmp_path)
    (tmp_path / "photos").mkdir()
    first, sha256 = photo(tmp_path / "photos" / "a1.png")
    write_table(table, [("A1", "red sneaker", first)])
    krea = make_resource(emulator, poll_timeout=60)
    # A job that holds the account's only slot for hours, so the row's job waits in the backlog.
    emulator.set_concurrency(1)
    emulator.configure(time_scale=1.0, render_seconds=3600)
    with KreaClient(api_key=emulator.token, base_url=emulator.base_url) as client:
        blocker = client.submit("bfl/flux-1-dev", {"prompt": "a slot taken for hours"})
        emulator.configure(time_scale=TEST_TIME_SCALE, render_seconds=None)
        assert materialize(
            products, workflow, instance, krea, "products", "edit_prompts", "edit_jobs"
        ).success
        (row,) = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}").rows("catalog.edit", "b1")
        assert emulator.job(row.job_id)["status"] == "backlogged"
        delete_uploaded_asset(emulator, tmp_path, sha256)
        client.cancel_job(blocker.job_id)  # the slot frees: the row's job fetches its input
        assert emulator.wait_for_job(row.job_id)["status"] == "failed"

    result = materialize(products, workflow, instance, krea, "edit")
    manifest = result.output_for_node("catalog__edit")
    assert list(manifest["status"]) == ["completed"], manifest["error_message"]
    stats = emulator.stats()
    assert stats["uploads_by_sha256"] == {sha256: 2}
    assert stats["jobs_billed"] == 1 and stats["jobs_by_status"]["failed"] == 1
    assert refused(stats) == 0

    again = run(products, workflow, instance, krea)
    assert list(again.output_for_node("catalog__edit")["status"]) == ["completed"]
    after = emulator.stats()
    assert after["uploads_by_sha256"] == {sha256: 2}
    assert (after["jobs_created"], after["jobs_billed"]) == (stats["jobs_created"], 1)
