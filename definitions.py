"""The krea-dagster demo code location: prompt files in data/prompts -> Krea images -> contact sheets;
a product table (data/products) -> gpt-image-2 edits of its reference photos -> upscales -> a
contact sheet (a workflow of chained Krea steps); and an instance defined in YAML
(demo_defs/banners/defs.yaml).

Backend: with ``KREA_BASE_URL`` and ``KREA_API_KEY`` set, a real Krea account (or an emulator
you started elsewhere); without them, a local krea-emulator (state under ``.demo/emulator``), so
no token is needed. ``scripts/demo`` starts it and it keeps running for ``dg dev``; if ``dg dev``
is first, the first process that needs it starts it, and it ends with ``dg dev``.
``scripts/demo --stop`` stops it, and it stays stopped until the next ``scripts/demo``.

Storage: images under ``.demo/images`` and the ledger in ``.demo/ledger.db``; override with
``KREA_DEMO_STORE`` (e.g. ``s3://bucket/images``) and ``KREA_DEMO_LEDGER`` (a SQLAlchemy URL).
A local store is served on http://127.0.0.1:``KREA_GALLERY_PORT`` (8762) by
``krea-dagster gallery``, started alongside the emulator, so the gallery links in the UI open.

Try it: ``scripts/demo`` materializes every batch; ``dg dev`` opens the UI.
"""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
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
from krea_dagster.emulator.local import (
    LocalEmulator,
    dev_server_pid,
    ensure_local_emulator,
    stop_local_emulator,
)
from krea_dagster.engine.collect import thumbnail_data_uri

ROOT = Path(__file__).resolve().parent
DEMO_DIR = Path(os.environ.get("KREA_DEMO_DIR", ROOT / ".demo"))
EMULATOR_PORT = int(os.environ.get("KREA_EMULATOR_PORT", "8760"))
GALLERY_PORT = int(os.environ.get("KREA_GALLERY_PORT", "8762"))
GALLERY_URL = f"http://127.0.0.1:{GALLERY_PORT}"
STORE = os.environ.get("KREA_DEMO_STORE", str(DEMO_DIR / "images"))
# The address the gallery links point at: the demo's gallery server for a local store.
STORE_URL = os.environ.get("KREA_DEMO_STORE_URL") or (None if "://" in STORE else GALLERY_URL)


def start_local_emulator(*, explicit: bool = True) -> LocalEmulator:
    """The demo's shared emulator on KREA_EMULATOR_PORT (+1 for its CDN), started if needed.

    ``explicit`` (scripts/demo): start it whatever happened before. Otherwise (a Dagster
    process's first use, under ``dg dev``): never restart one that ``--stop`` stopped, and tie
    a new one to ``dg dev``, so it does not outlive it.
    """
    return ensure_local_emulator(
        DEMO_DIR / "emulator",
        port=EMULATOR_PORT,
        cdn_port=EMULATOR_PORT + 1,
        # Flux renders in ~7 s on Krea; a fifth of that keeps the demo snappy but visible.
        extra_args=("--time-scale", "0.2"),
        unless_stopped=not explicit,
        exit_with_pid=None if explicit else dev_server_pid(),
    )


def start_gallery(*, explicit: bool = True) -> str | None:
    """The demo's gallery server (`krea-dagster gallery` on this code location), started if
    needed; its URL, or None when the store is not local or (not ``explicit``) it was stopped."""
    if STORE_URL != GALLERY_URL:
        return None
    folder = DEMO_DIR / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "gallery.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(GALLERY_URL):
            return GALLERY_URL
        if not explicit and (folder / "stopped").exists():
            return None
        (folder / "stopped").unlink(missing_ok=True)
        dev = None if explicit else dev_server_pid()
        watch = [] if dev is None else ["--exit-with-pid", str(dev)]
        with (folder / "gallery.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "krea_dagster",
                    "gallery",
                    "-f",
                    __file__,
                    "--port",
                    str(GALLERY_PORT),
                    *watch,
                ],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # outlives the process that started it
            )
        (folder / "gallery.json").write_text(json.dumps({"pid": process.pid, "url": GALLERY_URL}))
        deadline = time.monotonic() + 60
        while not _answers(GALLERY_URL):
            if process.poll() is not None or time.monotonic() > deadline:
                lines = (folder / "gallery.log").read_text(errors="replace").strip().splitlines()
                raise RuntimeError(
                    f"the gallery server did not start: {lines[-1] if lines else '?'}"
                )
            time.sleep(0.1)
        return GALLERY_URL


def stop_demo_services() -> list[str]:
    """Stop the demo's emulator and gallery server, and keep them stopped; what was running."""
    stopped = ["emulator"] if stop_local_emulator(DEMO_DIR / "emulator") else []
    folder = DEMO_DIR / "gallery"
    if folder.is_dir():
        (folder / "stopped").write_text("stopped by ./scripts/demo --stop\n")
        info = folder / "gallery.json"
        if info.exists():
            pid = int(json.loads(info.read_text())["pid"])
            info.unlink()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                stopped.append("gallery server")
    return stopped


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


class LocalEmulatorKreaResource(KreaResource):
    """KreaResource that starts (or reuses) the demo's local emulator and gallery on first use."""

    def _client_kwargs(self) -> dict[str, Any]:
        emulator = start_local_emulator(explicit=False)
        with contextlib.suppress(RuntimeError):
            start_gallery(explicit=False)  # the links only; Krea calls do not need it
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
    store=STORE,
    ledger=os.environ.get("KREA_DEMO_LEDGER", f"sqlite:///{DEMO_DIR / 'ledger.db'}"),
    max_usd_per_run=1.00,
    store_url=STORE_URL,
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
    store=STORE,
    ledger=LEDGER,
    max_usd_per_run=2.00,
    store_url=STORE_URL,
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
