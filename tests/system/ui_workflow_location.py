"""The code location of the failed-workflow-step UI test: a product table -> edit -> upscale.

The test materializes the batches in its own process against an in-process emulator, then
starts ``dagster-webserver -f`` on this file with the same instance (``DAGSTER_HOME``), so the
UI shows what those runs recorded. The webserver never calls Krea: no token is needed here.

=====================  ========================================================================
``KREA_UIW_TABLE``     the product table (CSV: batch, sku, name, photo)
``KREA_UIW_STORE``     the image store directory
``KREA_UIW_LEDGER``    the ledger URL (``sqlite:///...``)
=====================  ========================================================================
"""

import os
from pathlib import Path

import dagster as dg
import pandas as pd

from krea_dagster import KreaResource, KreaStep, build_krea_workflow
from krea_dagster.node import KreaNodeAssets

PREFIX = "uiflow"
MAX_FAILED_FRACTION = 0.5
STEPS = (
    KreaStep(
        "edit",
        model="openai/gpt-image-2",
        prompt="Studio product photo of a {name} on a white table",
        inputs={"image_urls": ["{photo}"]},
        defaults={"quality": "low", "width": 256, "height": 256},
    ),
    KreaStep(
        "upscale",
        model="enhance/topaz/standard-enhance",
        inputs={"image_url": "{previous}"},
        defaults={"model": "Standard V2", "width": 512, "height": 512},
        price_usd=0.01,
    ),
)


def build(table: Path, store: str, ledger: str) -> tuple[dg.AssetsDefinition, KreaNodeAssets]:
    @dg.asset(group_name="products", kinds={"pandas"})
    def products() -> pd.DataFrame:
        return pd.read_csv(table, dtype=str)

    workflow = build_krea_workflow(
        PREFIX,
        table=products,
        key_column="sku",
        steps=STEPS,
        store=store,
        ledger=ledger,
        max_attempts=1,
        max_failed_fraction=MAX_FAILED_FRACTION,
    )
    return products, workflow


if "KREA_UIW_TABLE" in os.environ:
    products, workflow = build(
        Path(os.environ["KREA_UIW_TABLE"]),
        os.environ["KREA_UIW_STORE"],
        os.environ["KREA_UIW_LEDGER"],
    )
    defs = dg.Definitions(
        assets=[products, *workflow.assets],
        resources={"krea": KreaResource(api_key=dg.EnvVar("KREA_API_KEY"))},
    )
