"""Run the demo: every prompt batch in data/prompts through Krea (the bundled emulator unless
KREA_BASE_URL and KREA_API_KEY are set), with progress in the terminal.

Runs the demo job of definitions.py once per batch on the Dagster instance in
.demo/dagster_home, so `dg dev` shows the same runs, images and checks afterwards. Running it
again pays for nothing: every prompt already has its job in the ledger.

`scripts/demo --stop` stops the background emulator and gallery server (they outlive the demo
so `dg dev` can use them), and they stay stopped until the next `scripts/demo`.
"""

import os
import sys
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = Path(os.environ.setdefault("KREA_DEMO_DIR", str(ROOT / ".demo")))
DAGSTER_HOME = Path(os.environ.setdefault("DAGSTER_HOME", str(DEMO_DIR / "dagster_home")))
DAGSTER_HOME.mkdir(parents=True, exist_ok=True)
if not (DAGSTER_HOME / "dagster.yaml").exists():
    (DAGSTER_HOME / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402

# Dagster's BetaWarning for Output(data_version=...) would land on the progress line.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

import definitions  # noqa: E402
from krea_dagster.engine.manifest import ManifestStatus  # noqa: E402
from krea_dagster.partitions import register_batches  # noqa: E402

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def progress(batch: str, stop: threading.Event) -> None:
    pipeline = definitions.demo.pipeline
    shown = ""
    while not stop.wait(0.3):
        generation = pipeline.ledger.current_generation(pipeline.scope, batch)
        rows = list(pipeline.latest(batch, generation).values()) if generation else []
        submitted = sum(1 for row in rows if row.job_id)
        rendering = sum(1 for row in rows if row.is_pending_at_krea)
        stored = sum(1 for row in rows if row.image_uri)
        bar = "#" * stored + "." * max(len(rows) - stored, 0)
        line = f"  {batch:<10} [{bar:<12}] submitted {submitted}, rendering {rendering}, stored {stored}"
        if line != shown:  # redraw only on change: readable in a terminal and in a log
            print(("\r" if sys.stdout.isatty() else "\n") + line + "   ", end="", flush=True)
            shown = line


def stop_services() -> int:
    stopped = definitions.stop_demo_services()
    if stopped:
        print(f"stopped the demo's {' and '.join(stopped)}; ./scripts/demo starts them again")
    else:
        print(f"the demo's emulator was not running ({DEMO_DIR / 'emulator'})")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--stop"]:
        return stop_services()
    if sys.argv[1:]:
        print("usage: scripts/demo [--stop]", file=sys.stderr)
        return 2
    started = time.monotonic()
    backend = os.environ.get("KREA_BASE_URL") or "the bundled krea-emulator (no token needed)"
    print(f"krea-dagster demo: Krea backend = {backend}")
    if not os.environ.get("KREA_BASE_URL"):
        try:
            emulator = definitions.start_local_emulator()
        except RuntimeError as error:
            print(f"krea-dagster demo: {error}", file=sys.stderr)
            return 3
        print(f"  emulator at {emulator.base_url} (stop it with ./scripts/demo --stop)")
    try:
        gallery = definitions.start_gallery()
    except RuntimeError as error:
        print(f"krea-dagster demo: {error}", file=sys.stderr)
        return 3
    instance = dg.DagsterInstance.get()
    # The same command users run: krea-dagster register-batches demo
    registration = register_batches(definitions.demo, instance)
    for problem in registration.problems:
        print(f"  skipping {problem}")
    batches = registration.added + registration.existing
    job = definitions.defs.resolve_job_def("krea_demo_job")
    failed = 0
    summaries = []
    for batch in batches:
        stop = threading.Event()
        ticker = threading.Thread(target=progress, args=(batch, stop), daemon=True)
        ticker.start()
        result = job.execute_in_process(
            partition_key=batch, instance=instance, run_config=QUIET, raise_on_error=False
        )
        stop.set()
        ticker.join()
        print()
        if not result.success:
            failed += 1
            print(f"  {batch}: run {result.run_id} FAILED; see `dg dev` for the step logs")
            continue
        manifest = result.output_for_node("demo__images")
        done = int((manifest["status"] == ManifestStatus.COMPLETED).sum())
        summaries.append((batch, len(manifest), done, float(manifest["cost_usd"].sum())))
    failed += run_catalog(instance, summaries)
    print()
    print(f"{'batch':<17} {'prompts':>7} {'images':>7} {'cost USD':>9}")
    for batch, prompts, done, cost in summaries:
        print(f"{batch:<17} {prompts:>7} {done:>7} {cost:>9.4f}")
    stats = emulator_stats()
    if stats:
        print(
            f"\nemulator: {stats['jobs_created']} jobs created, {stats['jobs_billed']} billed, "
            f"{stats['duplicate_submissions']} duplicate submissions"
        )
    print("\ngalleries (every image with its prompt, status and cost; also linked in the UI):")
    upscale = definitions.catalog.pipelines["upscale"]
    catalog_batches = [name.split("/", 1)[1] for name, *_ in summaries if "/" in name]
    for pipeline, names in ((definitions.demo.pipeline, batches), (upscale, catalog_batches)):
        store, prefix = pipeline.store, pipeline.prefix
        for batch in names:
            page = store.uri(store.batch_folder(prefix, batch) / "index.html")
            served = f"{gallery}/{prefix}/batches/{batch}/index.html"
            print(f"  {prefix + ' / ' + batch:<26} {served if gallery else page}")
    print(f"contact sheets:  {DEMO_DIR / 'contact_sheets'}")
    print(f"done in {time.monotonic() - started:.1f} s")
    print(
        "\nOpen the UI (runs, images, checks, lineage):\n"
        f"  DAGSTER_HOME={DAGSTER_HOME} .venv/bin/dg dev\n"
        "then open http://127.0.0.1:3000 (asset group 'demo').\n"
        "The emulator and the gallery server keep running in the background for the UI; "
        "stop them with ./scripts/demo --stop"
    )
    return 1 if failed else 0


def run_catalog(instance: dg.DagsterInstance, summaries: list) -> int:
    """The product table through gpt-image-2 edits and upscales, one run per batch."""
    print("\ncatalog: product photos -> gpt-image-2 edit -> upscale")
    table = dg.materialize([definitions.products], instance=instance, run_config=QUIET)
    if not table.success:
        print("  the product table failed; see `dg dev`")
        return 1
    products = table.output_for_node("products")
    # The same command users run: krea-dagster register-batches catalog
    registration = register_batches(definitions.catalog, instance, table=products)
    batches = registration.added + registration.existing
    job = definitions.defs.resolve_job_def("krea_catalog_job")
    failed = 0
    for batch in batches:
        result = job.execute_in_process(
            partition_key=batch, instance=instance, run_config=QUIET, raise_on_error=False
        )
        if not result.success:
            failed += 1
            print(f"  catalog {batch}: run {result.run_id} FAILED; see `dg dev` for the step logs")
            continue
        edit = result.output_for_node(definitions.catalog.asset("edit").node_def.name)
        upscale = result.output_for_node(definitions.catalog.asset("upscale").node_def.name)
        done = int((upscale["status"] == ManifestStatus.COMPLETED).sum())
        cost = float(edit["cost_usd"].sum() + upscale["cost_usd"].sum())
        summaries.append((f"catalog/{batch}", len(upscale), done, cost))
        print(f"  catalog {batch}: {done} of {len(upscale)} products edited and upscaled")
    return failed


def emulator_stats() -> dict[str, int] | None:
    if os.environ.get("KREA_BASE_URL"):
        return None
    import json

    import httpx

    info_file = DEMO_DIR / "emulator" / "emulator.json"
    if not info_file.exists():
        return None
    info = json.loads(info_file.read_text())
    response = httpx.get(
        f"{info['base_url']}/_emulator/stats",
        headers={"Authorization": f"Bearer {info['admin_token']}"},
        timeout=5,
    )
    return response.json() if response.status_code == 200 else None


if __name__ == "__main__":
    sys.exit(main())
