"""What the live model catalog costs: fetch, derivation, cache hits, and requests per run.

Run on its own (not part of ``python -m bench``)::

    .venv/bin/python bench/catalog.py [--repeat 5]

Against an in-process emulator serving Krea's document plus one model (``krea/krea-3``), it
times, ``--repeat`` times each: a cold resolution (fetch + derive + store in a fresh SQLite
ledger), a fresh cache hit (a row read), a stale revalidation (a conditional request answered
304), and the derivation of the bundled document alone. Then it materializes one batch
(prompts, jobs, images) twice and counts the resolutions and the ``GET /openapi.json``
requests each run made. Medians are printed with the ratios to a cache hit.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

from krea_dagster import KreaResource, build_krea_image_assets
from krea_dagster.api.catalog_source import derive_catalog
from krea_dagster.emulator.catalog import openapi_document
from krea_dagster.emulator.testing import run_emulator, write_openapi_document
from krea_dagster.engine import catalogs
from krea_dagster.engine.catalogs import CatalogSettings, catalog_for
from krea_dagster.engine.ledger import Ledger

NEW_PATH = "/generate/image/krea/krea-3"
OPENAPI_ROUTE = "GET /openapi.json"


def new_model_operation() -> dict[str, Any]:
    """Flux-1-dev's operation at a new path: a model the bundled catalog lacks."""
    operation: dict[str, Any] = openapi_document()["paths"]["/generate/image/bfl/flux-1-dev"][
        "post"
    ]
    return operation


def timed(work: Any, *args: Any) -> float:
    started = time.perf_counter()
    work(*args)
    return time.perf_counter() - started


def resolution_times(base_url: str, scratch: Path, repeat: int) -> dict[str, float]:
    """Median seconds of a cold resolution, a cache hit and a 304 revalidation."""
    cold, hit, revalidate, fetch, derive = [], [], [], [], []
    for index in range(repeat):
        ledger = Ledger(f"sqlite:///{scratch / f'cold-{index}.db'}")
        ledger.catalog_cache().get(base_url)  # create the schema outside the timing
        catalogs.timings["fetch"].clear()
        catalogs.timings["derive"].clear()
        cold.append(timed(catalog_for, CatalogSettings(base_url), ledger))
        fetch.extend(catalogs.timings["fetch"])
        derive.extend(catalogs.timings["derive"])
        for _ in range(10):
            hit.append(timed(catalog_for, CatalogSettings(base_url), ledger))
        stale = CatalogSettings(base_url, max_age=0)
        revalidate.append(timed(catalog_for, stale, ledger))
    document = openapi_document()
    bundled = [timed(derive_catalog, document) for _ in range(repeat)]
    return {
        "cold_resolution_s": statistics.median(cold),
        "fetch_s": statistics.median(fetch),
        "derive_s": statistics.median(derive),
        "cache_hit_s": statistics.median(hit),
        "revalidate_304_s": statistics.median(revalidate),
        "derive_bundled_document_s": statistics.median(bundled),
    }


def requests_per_run(emulator: Any, scratch: Path) -> list[dict[str, int]]:
    """Resolutions and GET /openapi.json of two runs of one batch (prompts, jobs, images)."""
    prompts = scratch / "prompts"
    prompts.mkdir()
    (prompts / "b1.csv").write_text("prompt\na lighthouse\na paper boat\n", encoding="utf-8")
    assets = build_krea_image_assets(
        "bench_catalog",
        prompts=prompts,
        model="krea/krea-3",
        store=scratch / "store",
        ledger=f"sqlite:///{scratch / 'run-ledger.db'}",
    )
    krea = KreaResource(api_key=emulator.token, base_url=emulator.base_url, poll_interval=0.05)
    runs = []
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(assets.partitions_def.name or "", ["b1"])
        for _ in range(2):
            before = dict(catalogs.resolutions)
            fetched = emulator.stats()["requests_by_route"].get(OPENAPI_ROUTE, 0)
            result = dg.materialize(
                assets.assets, partition_key="b1", instance=instance, resources={"krea": krea}
            )
            assert result.success
            after = catalogs.resolutions
            runs.append(
                {
                    **{key: after[key] - before.get(key, 0) for key in sorted(after)},
                    "openapi_requests": emulator.stats()["requests_by_route"].get(OPENAPI_ROUTE, 0)
                    - fetched,
                }
            )
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        document = write_openapi_document(
            scratch / "openapi.json", add={NEW_PATH: new_model_operation()}
        )
        print(f"document: {document.stat().st_size} bytes, repeat={args.repeat}")
        with run_emulator(openapi=str(document), render_seconds=0.05, seed=1) as emulator:
            figures = resolution_times(emulator.base_url, scratch, args.repeat)
            runs = requests_per_run(emulator, scratch)
    hit = figures["cache_hit_s"]
    for name, seconds in figures.items():
        print(f"{name:<28} {seconds * 1000:9.2f} ms   {seconds / hit:8.1f} x a cache hit")
    for index, run in enumerate(runs, start=1):
        print(f"run {index}: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
