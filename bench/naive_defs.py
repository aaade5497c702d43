"""The code location of the naive Dagster asset (``naive.naive_images_asset``), for the
big-account scenario: what a user's definitions file holds when they write the asset without
krea-dagster (it imports Dagster and httpx, not krea-dagster). The scenario passes its settings
in ``KREA_BENCH_NAIVE`` (JSON: prompts_csv, directory, base_url, token, model_path, defaults,
poll_interval, workers).
"""

import json
import os
from pathlib import Path

import dagster as dg

from bench.naive import naive_images_asset

_spec = json.loads(os.environ["KREA_BENCH_NAIVE"])
defs = dg.Definitions(
    assets=[
        naive_images_asset(
            prompts_csv=Path(_spec["prompts_csv"]),
            directory=Path(_spec["directory"]),
            base_url=_spec["base_url"],
            token=_spec["token"],
            model_path=_spec["model_path"],
            defaults=_spec["defaults"],
            poll_interval=_spec["poll_interval"],
            workers=_spec["workers"],
        )
    ]
)
