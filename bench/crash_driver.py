"""The run worker the crash scenario kills: materialize one batch, die at the k-th crash point.

``python -m bench.crash_driver '<json>'`` with ``DAGSTER_HOME`` set and
``KREA_DAGSTER_CRASH_AT=<point>`` (see ``krea_dagster/crashpoints.py``). The package's crash
point fires the first time the point is reached; to crash *mid-batch* this driver counts passes
and lets the point fire only on pass ``crash_after`` (SIGKILL: nothing flushed, no ``finally``).
"""

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import dagster as dg

import krea_dagster.engine.collect
import krea_dagster.engine.submit
from bench.params import FULL, SMOKE
from bench.workload import build_assets, make_resource, materialize
from krea_dagster.engine.crashpoints import CRASH_ENV, crash_point


def counted_crash_point(crash_after: int) -> Callable[..., None]:
    """A stand-in for ``crash_point`` that fires on the ``crash_after``-th pass only."""
    passes: dict[str, int] = {}

    def point(name: str, where: str | None = None) -> None:
        if os.environ.get(CRASH_ENV) != name:
            return
        passes[name] = passes.get(name, 0) + 1
        if passes[name] >= crash_after:
            crash_point(name, where)

    return point


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    params = {"full": FULL, "smoke": SMOKE}[spec["mode"]]
    point = counted_crash_point(int(spec["crash_after"]))
    krea_dagster.engine.submit.crash_point = point  # type: ignore[attr-defined]
    krea_dagster.engine.collect.crash_point = point  # type: ignore[attr-defined]
    assets = build_assets(Path(spec["workdir"]), params)
    krea = make_resource(spec["base_url"], spec["token"], params)
    with dg.DagsterInstance.get() as instance:
        result = materialize(assets, instance, krea)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
