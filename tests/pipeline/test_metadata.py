"""The metadata of a batch reads like a product: one namespace, labelled estimates, described columns, a gallery."""

import base64
import io
import re
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from krea_dagster.engine.gallery import GalleryItem, relative_href, render_gallery
from krea_dagster.metadata import (
    KreaImagesMetadata,
    KreaJobsMetadata,
    KreaPromptsMetadata,
)

from .conftest import materialize, prompt_rows, write_batch

HOSTILE = '<img src=x onerror="alert(1)"> & </figure><script>alert(2)</script>'


def materializations(
    result: dg.ExecuteInProcessResult, assets
) -> dict[str, dg.AssetMaterialization]:
    return {
        role: result.asset_materializations_for_node(getattr(assets, role).node_def.name)[0]
        for role in ("prompts", "jobs", "images")
    }


def test_every_key_is_in_the_krea_or_dagster_namespace_and_extracts(
    build, emulator, krea, instance, prompts_dir
):
    """Prompts, jobs and images metadata use only krea/... and dagster/... keys, and each asset's krea/ keys are exactly its NamespacedMetadataSet."""
    write_batch(prompts_dir, "b1", prompt_rows(3))
    assets = build()
    found = materializations(materialize(assets, "b1", instance=instance, krea=krea), assets)
    sets = {"prompts": KreaPromptsMetadata, "jobs": KreaJobsMetadata, "images": KreaImagesMetadata}
    for role, materialization in found.items():
        # "path" is the default IO manager's own entry, not the integration's.
        keys = set(materialization.metadata) - {"path"}
        odd = {key for key in keys if not re.fullmatch(r"(krea|dagster)/[a-z_]+", key)}
        assert not odd, (role, odd)
        krea_keys = {key for key in keys if key.startswith("krea/")}
        extracted = sets[role].extract(materialization.metadata)
        assert set(extracted.keys()) == krea_keys, role
    images = KreaImagesMetadata.extract(found["images"].metadata)
    assert (images.batch, images.generation, images.images, images.failed_prompts) == (
        "b1",
        "1",
        3,
        0,
    )
    assert images.batch_cost_usd == images.run_cost_usd == 3 * 0.007
    assert KreaJobsMetadata.extract(found["jobs"].metadata).run_cost_usd == 3 * 0.007


def test_plots_show_distinct_measures_only(build, emulator, krea, instance, prompts_dir):
    """The images materialization's numeric entries (what Dagster plots) are prompts, images, failures, skips, this run's and the batch's cost and the unpriced jobs, each once."""
    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build()
    images = materializations(materialize(assets, "b1", instance=instance, krea=krea), assets)[
        "images"
    ]
    numeric = {
        key
        for key, value in images.metadata.items()
        if isinstance(value, dg.IntMetadataValue | dg.FloatMetadataValue)
    }
    assert numeric == {
        "dagster/row_count",
        "krea/images",
        "krea/failed_prompts",
        "krea/skipped_rows",
        "krea/run_cost_usd",
        "krea/batch_cost_usd",
        "krea/unpriced_jobs",
    }
    assert isinstance(images.metadata["krea/generation"], dg.TextMetadataValue)


def test_uri_points_at_the_batch_folder_with_its_gallery(
    build, emulator, krea, instance, prompts_dir, tmp_path
):
    """dagster/uri is the batch's folder (not the whole store), holding the gallery page the url entry links to."""
    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build()
    images = materializations(materialize(assets, "b1", instance=instance, krea=krea), assets)[
        "images"
    ]
    folder = Path(images.metadata["dagster/uri"].value)
    assert folder == (tmp_path / "store" / "krea_test" / "batches" / "b1").resolve()
    assert sorted(path.name for path in folder.iterdir()) == ["index.html", "manifest.parquet"]
    linked = KreaImagesMetadata.extract(images.metadata)
    assert linked.gallery is not None and linked.gallery.value == (folder / "index.html").as_uri()


def test_manifest_columns_are_described_with_table_types(
    build, emulator, krea, instance, prompts_dir
):
    """Every manifest and prompts column has a description; error columns are string, sizes int, cost a labelled estimate."""
    write_batch(prompts_dir, "b1", [{**row, "team": "x"} for row in prompt_rows(2)])
    assets = build()
    found = materializations(materialize(assets, "b1", instance=instance, krea=krea), assets)
    for role in ("prompts", "images"):
        schema = found[role].metadata["dagster/column_schema"].value
        assert all(column.description for column in schema.columns), role
        assert all(column.type != "object" for column in schema.columns), role
    columns = {c.name: c for c in found["images"].metadata["dagster/column_schema"].value.columns}
    assert columns["error_code"].type == columns["error_message"].type == "string"
    assert columns["width"].type == columns["height"].type == "int"
    assert columns["cost_usd"].type == "float"
    assert columns["cost_usd"].description.startswith("Estimated USD")
    assert columns["team"].description == "Carried over from the prompt file."


def test_thumbnails_are_bigger_than_64_px_with_their_prompt_as_caption(
    build, emulator, krea, instance, prompts_dir
):
    """The inline gallery is a table of thumbnails of at most 128 px a side, each beside its prompt."""
    write_batch(prompts_dir, "b1", prompt_rows(3, "a red fox in the snow"))
    assets = build()
    images = materializations(materialize(assets, "b1", instance=instance, krea=krea), assets)[
        "images"
    ]
    markdown = images.metadata["krea/thumbnails"].value
    rows = [line for line in markdown.splitlines() if "data:image/jpeg;base64," in line]
    assert len(rows) == 3
    for index, line in enumerate(sorted(rows)):
        assert line.endswith(f"| a red fox in the snow {index} |")
        data = re.search(r"base64,([A-Za-z0-9+/=]+)", line)
        assert data is not None
        with Image.open(io.BytesIO(base64.b64decode(data.group(1)))) as thumb:
            assert 64 < max(thumb.size) <= 128


def test_gallery_page_escapes_prompts_and_errors():
    """Prompts and error messages reach the gallery page as text, never as markup."""
    page = render_gallery(
        [
            GalleryItem(row=1, prompt_key="k1", prompt=HOSTILE, status="completed", href="a.png"),
            GalleryItem(
                row=2,
                prompt_key="k2",
                prompt="fine",
                status="failed",
                error_code="x<y",
                error_message=HOSTILE,
            ),
        ],
        title="t <b>",
    )
    assert "<script>" not in page and "onerror=" not in page.replace("onerror=&quot;", "")
    assert page.count("&lt;script&gt;alert(2)&lt;/script&gt;") == 3  # alt, caption, error
    assert "<title>t &lt;b&gt;</title>" in page
    assert page.count("<figure") == 2 and page.count("</figure>") == 2
    assert "<code>x&lt;y</code>" in page


def test_gallery_links_images_relative_to_the_page():
    """Images in the same store are linked relative to the page, locally and in a bucket."""
    assert relative_href("/s/p/batches/b1", "/s/p/images/ab/ab12.png") == "../../images/ab/ab12.png"
    assert (
        relative_href("s3://bkt/s/p/batches/b1", "s3://bkt/s/p/images/ab/ab12.png")
        == "../../images/ab/ab12.png"
    )
    assert relative_href("s3://bkt/p/batches/b1", "s3://other/x.png") == "s3://other/x.png"


def test_store_url_makes_the_gallery_link_an_http_address(
    build, emulator, krea, instance, prompts_dir
):
    """With store_url, the gallery entry is the page's address under that URL (browsers open it from the UI)."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build(store_url="http://127.0.0.1:8123/store/")
    images = materializations(materialize(assets, "b1", instance=instance, krea=krea), assets)[
        "images"
    ]
    gallery = KreaImagesMetadata.extract(images.metadata).gallery
    assert gallery is not None
    assert gallery.value == "http://127.0.0.1:8123/store/krea_test/batches/b1/index.html"


def test_store_url_must_be_http(build):
    """A store_url that is not http(s) is refused with an example of what to give."""
    with pytest.raises(ValueError, match=r"must be an http:// or https:// address"):
        build(store_url="s3://bucket/prefix")


def test_a_rerun_that_changed_nothing_reports_no_new_cost(
    build, emulator, krea, instance, prompts_dir
):
    """Dagster plots cost per materialization: a re-run that submits and bills nothing new
    reports run_cost_usd 0 for the jobs and the images, while batch_cost_usd keeps what the
    batch cost, so the plot adds up to what Krea billed."""
    write_batch(prompts_dir, "b1", prompt_rows(3))
    assets = build()
    first = materializations(materialize(assets, "b1", instance=instance, krea=krea), assets)
    again = materializations(materialize(assets, "b1", instance=instance, krea=krea), assets)
    billed = 3 * 0.007
    assert KreaImagesMetadata.extract(first["images"].metadata).run_cost_usd == billed
    assert KreaJobsMetadata.extract(again["jobs"].metadata).run_cost_usd == 0
    images = KreaImagesMetadata.extract(again["images"].metadata)
    assert (images.run_cost_usd, images.batch_cost_usd) == (0, billed)
    assert emulator.stats()["jobs_billed"] == 3


def test_a_model_without_a_price_is_counted_apart_never_as_zero(
    build, emulator, krea, instance, prompts_dir
):
    """A completed job whose model has no known price leaves the manifest's cost empty (not
    $0), is counted in krea/unpriced_jobs, and the step warns that the cost is a lower bound."""
    photo = "https://cdn.example.com/cat.png"
    write_batch(prompts_dir, "b1", [{"prompt": f"a cat {i}", "image_url": photo} for i in range(2)])
    assets = build(model="bytedance/seededit")
    result = materialize(assets, "b1", instance=instance, krea=krea)
    found = materializations(result, assets)
    images = KreaImagesMetadata.extract(found["images"].metadata)
    assert images.unpriced_jobs == 2 and images.batch_cost_usd == 0
    manifest = result.output_for_node(assets.images.node_def.name)
    assert manifest["cost_usd"].isna().all()
    warnings = [
        record.message
        for record in instance.all_logs(result.run_id)
        if record.level == 30 and "no known price" in (record.message or "")
    ]
    assert warnings, "the images step warns that the cost is a lower bound"
