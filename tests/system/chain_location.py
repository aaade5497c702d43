"""The code location of the deferred-chain system test: a product table -> three Krea steps.

An unpartitioned ``products`` table asset (the package's sample products: a ``batch`` column,
local reference photos) feeds one workflow node of three chained steps, each from the
previous step's verified output of the row:

1. ``edit``: ``openai/gpt-image-2`` edits each product's photo (``image_urls: [{photo}]``);
2. ``upscale``: ``enhance/topaz/standard-enhance`` of the edit (``image_url: {previous}``);
3. ``angles``: the emulator's demo node app (two jobs per row) from the upscale.

The sensors run deferred: discovery launches the first step's prompts and jobs for every
batch of a new materialization of the table; the completion sensor launches each step's
collection together with the next step's submission. Settings come from the code server's
environment, as in ``krea_location.py`` (``KREA_STORE_URI``, ``KREA_LEDGER_URL``,
``KREA_BASE_URL``, ``KREA_API_KEY``), plus ``KREA_CHAIN_PRODUCTS``: the folder that
``krea_dagster.samples.write_sample_products`` wrote (``products.csv`` and ``photos/``).
"""

import os
from pathlib import Path

import dagster as dg
import pandas as pd

from krea_dagster import KreaResource, KreaStep, build_krea_sensors, build_krea_workflow
from krea_dagster.emulator import DEMO_NODE_APP_ID

PREFIX = "chain"
EDIT_SIZE = (768, 512)
UPSCALE_SIZE = (1536, 1024)
STEPS = (
    KreaStep(
        "edit",
        model="openai/gpt-image-2",
        prompt="Studio product photo of a {color} {name} on a white table, soft daylight",
        inputs={"image_urls": ["{photo}"]},
        defaults={"quality": "low", "width": EDIT_SIZE[0], "height": EDIT_SIZE[1]},
    ),
    KreaStep(
        "upscale",
        model="enhance/topaz/standard-enhance",
        inputs={"image_url": "{previous}"},
        defaults={"model": "Standard V2", "width": UPSCALE_SIZE[0], "height": UPSCALE_SIZE[1]},
        price_usd=0.01,
    ),
    KreaStep(
        "angles",
        model=f"node-app/{DEMO_NODE_APP_ID}",
        inputs={"product_image": "{previous}", "product": "{color} {name}"},
        price_usd=0.25,
    ),
)
SENSOR_INTERVAL_SECONDS = 2  # the daemon's sensor loop runs every 5 s; this never holds a tick back


def build(products_dir: Path, store: str, ledger: str) -> dg.Definitions:
    """The table asset, the workflow over it and its deferred sensors."""

    @dg.asset(
        group_name="products",
        kinds={"pandas"},
        description="The product table: batch, sku, name, color and a local reference photo.",
    )
    def products() -> pd.DataFrame:
        return pd.read_csv(products_dir / "products.csv", dtype=str)

    chain = build_krea_workflow(
        PREFIX,
        table=products,
        key_column="sku",
        base_dir=products_dir,
        steps=STEPS,
        store=store,
        ledger=ledger,
        max_usd_per_run=5.0,
    )
    return dg.Definitions(
        assets=[products, *chain.assets],
        sensors=build_krea_sensors(
            chain,
            deferred=True,
            discovery_interval_seconds=SENSOR_INTERVAL_SECONDS,
            completion_interval_seconds=SENSOR_INTERVAL_SECONDS,
            default_status=dg.DefaultSensorStatus.RUNNING,
        ),
        resources={
            "krea": KreaResource(
                api_key=dg.EnvVar("KREA_API_KEY"),
                base_url=dg.EnvVar("KREA_BASE_URL"),
                poll_interval=0.2,
                connect_timeout=1.0,
                write_timeout=2.0,
                read_timeout=5.0,
            )
        },
        executor=dg.in_process_executor,
    )


# The test imports this file for its constants; the code server loads it with the settings.
if "KREA_CHAIN_PRODUCTS" in os.environ:
    defs = build(
        Path(os.environ["KREA_CHAIN_PRODUCTS"]),
        os.environ["KREA_STORE_URI"],
        os.environ["KREA_LEDGER_URL"],
    )
