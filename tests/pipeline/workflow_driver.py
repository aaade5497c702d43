"""Run the test catalog workflow for one batch in a separate process (the worker crash tests kill).

Usage: python workflow_driver.py <table_csv> <store> <ledger_url> <base_url> <token> <batch>
                                 [angles]
with DAGSTER_HOME set to the shared instance and, for a crash, KREA_DAGSTER_CRASH_AT. With
``angles`` the second step is the emulator's demo node app instead of the scene edit.
"""

import sys

import dagster as dg
import pandas as pd

from krea_dagster import KreaResource, KreaStep, build_krea_workflow
from krea_dagster.emulator import DEMO_NODE_APP_ID

STEPS = [
    KreaStep(
        "edit",
        model="openai/gpt-image-2",
        prompt="Studio photo of a {name} on white",
        inputs={"image_urls": ["{photo}"]},
    ),
    KreaStep(
        "scene",
        model="openai/gpt-image-2",
        prompt="The {name} on a beach at dusk",
        inputs={"image_urls": ["{previous}"]},
    ),
]

#: The emulator's demo node app over the edit: two jobs (front and three-quarter view) per row.
ANGLES = KreaStep(
    "angles",
    model=f"node-app/{DEMO_NODE_APP_ID}",
    inputs={"product_image": "{previous}", "product": "{name}"},
    price_usd=0.25,
)

#: The same app straight from the row's photo (no step before it).
ANGLES_FROM_PHOTO = KreaStep(
    "angles",
    model=f"node-app/{DEMO_NODE_APP_ID}",
    inputs={"product_image": "{photo}", "product": "{name}"},
    price_usd=0.25,
)


def build(
    table_csv: str, store: str, ledger: str, *, angles: bool = False
) -> tuple[dg.AssetsDefinition, object]:
    @dg.asset
    def products() -> pd.DataFrame:
        return pd.read_csv(table_csv, dtype=str)

    steps = [STEPS[0], ANGLES] if angles else STEPS
    workflow = build_krea_workflow(
        "catalog", table=products, key_column="sku", steps=steps, store=store, ledger=ledger
    )
    return products, workflow


def main() -> int:
    table_csv, store, ledger, base_url, token, batch = sys.argv[1:7]
    products, workflow = build(table_csv, store, ledger, angles=sys.argv[7:] == ["angles"])
    krea = KreaResource(
        api_key=token,
        base_url=base_url,
        poll_interval=0.05,
        connect_timeout=1.0,
        write_timeout=1.0,
        read_timeout=2.0,
    )
    result = dg.materialize(
        [products, *workflow.assets],  # type: ignore[attr-defined]
        partition_key=batch,
        instance=dg.DagsterInstance.get(),
        resources={"krea": krea},
        raise_on_error=False,
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
