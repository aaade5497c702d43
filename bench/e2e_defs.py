"""The code location ``dagster asset materialize`` loads in the launch-to-manifest scenario.

What a user's own definitions file would hold: the bench's assets (prompt files, store and
ledger under the scenario's work directory) and a ``KreaResource`` pointed at the emulator. The
scenario passes its settings in ``KREA_BENCH_E2E`` (JSON: mode, workdir, base_url, token, and
``resource``: the fields a scenario sets beyond the bench's defaults, such as the poll interval
of its render time).
"""

import json
import os
from pathlib import Path

import dagster as dg

from bench.params import FULL, SMOKE
from bench.workload import build_assets, make_resource

_spec = json.loads(os.environ["KREA_BENCH_E2E"])
_params = FULL if _spec["mode"] == "full" else SMOKE
assets = build_assets(Path(_spec["workdir"]), _params)
defs = dg.Definitions(
    assets=assets.assets,
    resources={
        assets.resource_key: make_resource(
            _spec["base_url"], _spec["token"], _params, **_spec.get("resource", {})
        ),
    },
)
