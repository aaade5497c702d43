"""The code location of the UI test: one krea instance on a local store and a SQLite ledger.

The test materializes its batches in its own process against an in-process emulator, then
starts ``dagster-webserver -f`` on this file with the same instance (``DAGSTER_HOME``) so the UI
shows what those runs recorded. The webserver never calls Krea: the token is not needed here.

=====================  ========================================================================
``KREA_UI_PROMPTS``    the prompt source directory (one CSV per batch)
``KREA_UI_STORE``      the image store directory
``KREA_UI_LEDGER``     the ledger URL (``sqlite:///...``)
``KREA_UI_STORE_URL``  the HTTP address at which the test serves the store directory
=====================  ========================================================================
"""

import os

import dagster as dg

from krea_dagster import KreaResource, build_krea_image_assets
from krea_dagster.node import KreaImageAssets

PREFIX = "ui"
MAX_FAILED_FRACTION = 0.5


def build(prompts: str, store: str, ledger: str, store_url: str) -> KreaImageAssets:
    return build_krea_image_assets(
        PREFIX,
        prompts=prompts,
        model="bfl/flux-1-dev",
        store=store,
        ledger=ledger,
        max_attempts=1,
        max_failed_fraction=MAX_FAILED_FRACTION,
        store_url=store_url,
    )


if "KREA_UI_PROMPTS" in os.environ:
    krea = build(
        os.environ["KREA_UI_PROMPTS"],
        os.environ["KREA_UI_STORE"],
        os.environ["KREA_UI_LEDGER"],
        os.environ["KREA_UI_STORE_URL"],
    )
    defs = krea.definitions(resources={"krea": KreaResource(api_key=dg.EnvVar("KREA_API_KEY"))})
