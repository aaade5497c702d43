"""The krea-dagster demo code location: prompt files in data/prompts -> Krea images -> contact sheets;
a product table (data/products) -> gpt-image-2 edits of its reference photos -> upscales -> a
contact sheet (a workflow of chained Krea steps); and an instance defined in YAML
(demo_defs/banners/defs.yaml).

Backend: with ``KREA_BASE_URL`` and ``KREA_API_KEY`` set, a real Krea account (or an emulator
you started elsewhere); without them, a local krea-emulator that the first process needing it
starts in the background (state under ``.demo/emulator``), so no token is needed.

Storage: images under ``.demo/images`` and the ledger in ``.demo/ledger.db``; override with
``KREA_DEMO_STORE`` (e.g. ``s3://bucket/images``) and ``KREA_DEMO_LEDGER`` (a SQLAlchemy URL).

Try it: ``scripts/demo`` materializes every batch; ``dg dev`` opens the UI.
"""

import os
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from PIL import Image, ImageDraw

from krea_dagster import (
    KreaResource,
    KreaStep,
    build_krea_image_assets,
    build_krea_sensors,
    build_krea_workflow,
)
from krea_dagster.emulator import DEMO_TOKEN
from krea_dagster.emulator.local import LocalEmulator, ensure_local_emulator
from krea_dagster.engine.collect import thumbnail_data_uri

ROOT = Path(__file__).resolve().parent
DEMO_DIR = Path(os.environ.get("KREA_DEMO_DIR", ROOT / ".demo"))
EMULATOR_PORT = int(os.environ.get("KREA_EMULATOR_PORT", "8760"))


def start_local_emulator() -> LocalEmulator:
    """The demo's shared emulator on KREA_EMULATOR_PORT (+1 for its CDN), started if needed."""
    return ensure_local_emulator(
        DEMO_DIR / "emulator",
        port=EMULATOR_PORT,
        cdn_port=EMULATOR_PORT + 1,
        # Flux renders in ~7 s on Krea; a fifth of that keeps the demo snappy but visible.
        extra_args=("--time-scale", "0.2"),
    )


class LocalEmulatorKreaResource(KreaResource):
    """KreaResource that starts (or reuses) the demo's shared local emulator on first use."""

    def _client_kwargs(self) -> dict[str, Any]:
        emulator = start_local_emulator()
        return {
            **super()._client_kwargs(),
            "base_url": emulator.base_url,
            "api_key": emulator.token,
        }


def krea_resource() -> KreaResource:
    if os.environ.get("KREA_BASE_URL"):
        return KreaResource()  # KREA_API_KEY and KREA_BASE_URL from the environment
    return LocalEmulatorKreaResource(
        api_key=DEMO_TOKEN, base_url=f"http://127.0.0.1:{EMULATOR_PORT}", poll_interval=0.5
    )


demo = build_krea_image_assets(
    "demo",
    prompts=ROOT / "data" / "prompts",
    model="bfl/flux-1-dev",
    defaults={"width": 512, "height": 512, "steps": 20},
    store=os.environ.get("KREA_DEMO_STORE", str(DEMO_DIR / "images")),
    ledger=os.environ.get("KREA_DEMO_LEDGER", f"sqlite:///{DEMO_DIR / 'ledger.db'}"),
    max_usd_per_run=1.00,
)
TILE = 160
LEDGER = os.environ.get("KREA_DEMO_LEDGER", f"sqlite:///{DEMO_DIR / 'ledger.db'}")


@dg.asset(
    group_name="catalog",
    kinds={"pandas"},
    description="The product table: one row per SKU with its batch, name, color and a reference "
    "photo (data/products/photos). In a real project: a dbt model or a warehouse table.",
)
def products() -> pd.DataFrame:
    return pd.read_csv(ROOT / "data" / "products" / "products.csv", dtype=str)


# The seed model's own use: edit each product's reference photo with openai/gpt-image-2, then
# upscale the edit. One asset per step, one ledger scope per step, each photo uploaded once.
catalog = build_krea_workflow(
    "catalog",
    table=products,
    key_column="sku",
    base_dir=ROOT / "data" / "products",
    steps=[
        KreaStep(
            "edit",
            model="openai/gpt-image-2",
            prompt="Studio product photo of a {color} {name} on a white table, soft daylight",
            inputs={"image_urls": ["{photo}"]},
            defaults={"quality": "low"},
        ),
        KreaStep(
            "upscale",
            model="enhance/topaz/standard-enhance",
            inputs={"image_url": "{previous}"},
            defaults={"model": "Standard V2", "width": 2048, "height": 2048},
            # The catalog has no price for Topaz; this is the emulator's, so the cap holds.
            price_usd=0.01,
        ),
    ],
    store=os.environ.get("KREA_DEMO_STORE", str(DEMO_DIR / "images")),
    ledger=LEDGER,
    max_usd_per_run=2.00,
)


def contact_sheet_asset(
    key: list[str], upstream: dg.AssetsDefinition, partitions: Any, group: str
) -> dg.AssetsDefinition:
    """One PNG per batch with every image of ``upstream``'s manifest and its prompt."""

    @dg.asset(
        key=key,
        ins={"manifest": dg.AssetIn(upstream.key)},
        partitions_def=partitions,
        group_name=group,
        kinds={"pillow", "image"},
        description="One PNG per batch with every generated image and its prompt: a downstream "
        "asset that reads the manifest like any other table.",
    )
    def contact_sheet(
        context: dg.AssetExecutionContext, manifest: pd.DataFrame
    ) -> dg.MaterializeResult:
        done = manifest[manifest["status"] == "completed"]
        columns = max(1, min(4, len(done)))
        rows = max(1, -(-len(done) // columns))
        sheet = Image.new("RGB", (columns * TILE, rows * (TILE + 28)), "white")
        draw = ImageDraw.Draw(sheet)
        for index, record in enumerate(done.to_dict(orient="records")):
            x, y = (index % columns) * TILE, (index // columns) * (TILE + 28)
            with (
                demo.pipeline.store.open_path(record["uri"]).open("rb") as handle,
                Image.open(handle) as image,
            ):
                tile = image.convert("RGB")
                tile.thumbnail((TILE - 8, TILE - 8))
                sheet.paste(tile, (x + 4, y + 4))
            draw.text((x + 4, y + TILE), str(record["prompt"])[:26], fill="black")
        target = DEMO_DIR / "contact_sheets" / f"{key[0]}-{context.partition_key}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(target)
        return dg.MaterializeResult(
            metadata={
                "dagster/uri": str(target),
                "images": len(done),
                "without_image": len(manifest) - len(done),
                "preview": dg.MetadataValue.md(
                    f"![contact sheet]({thumbnail_data_uri(sheet, size=320)})"
                ),
            }
        )

    return contact_sheet


contact_sheet = contact_sheet_asset(
    ["demo", "contact_sheet"], demo.images, demo.partitions_def, "demo"
)
catalog_sheet = contact_sheet_asset(
    ["catalog", "contact_sheet"], catalog.asset("upscale"), catalog.partitions_def, "catalog"
)


krea_demo_job = dg.define_asset_job(
    "krea_demo_job",
    selection=dg.AssetSelection.assets(demo.prompts, demo.jobs, demo.images, contact_sheet),
    description="Validate a batch's prompts, submit them to Krea, store the images, draw the contact sheet.",
    # All steps in the run's own process: a one-prompt run starts in seconds instead of paying
    # a code-location load per step (the multiprocess default).
    executor_def=dg.in_process_executor,
)

krea_catalog_job = dg.define_asset_job(
    "krea_catalog_job",
    selection=dg.AssetSelection.assets(*catalog.assets, catalog_sheet),
    description="For one batch of the product table: edit each reference photo with "
    "gpt-image-2, upscale the edit, draw the contact sheet.",
    executor_def=dg.in_process_executor,
)

defs = dg.Definitions(
    assets=[*demo.assets, contact_sheet, products, *catalog.assets, catalog_sheet],
    jobs=[krea_demo_job, krea_catalog_job],
    # Running by default: with `dg dev`, a CSV dropped into data/prompts becomes images with no
    # manual launch (discovery runs prompts + jobs; completion runs images + contact sheet),
    # and a new materialization of the product table runs its new or changed batches through
    # every step of the catalog, no run waiting on Krea.
    sensors=[
        *build_krea_sensors(
            demo,
            completion_target=[demo.images, contact_sheet],
            discovery_interval_seconds=10,
            completion_interval_seconds=5,
            default_status=dg.DefaultSensorStatus.RUNNING,
        ),
        *build_krea_sensors(
            catalog,
            completion_target=[catalog.asset("upscale"), catalog_sheet],
            discovery_interval_seconds=10,
            completion_interval_seconds=5,
            default_status=dg.DefaultSensorStatus.RUNNING,
        ),
    ],
    resources={"krea": krea_resource()},
    executor=dg.in_process_executor,  # for runs launched from the UI or `dg launch --assets`
)

# demo_defs/ holds YAML component instances (banners: KreaImagesComponent).
defs = dg.Definitions.merge(defs, dg.load_from_defs_folder(path_within_project=ROOT))
