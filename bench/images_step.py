"""Run only the images step of a prepared batch in this process, and measure this process.

``python -m bench.images_step '<json>'`` with ``DAGSTER_HOME`` set to the instance that ran the
prompts and jobs steps. The JSON names the work directory, the emulator and the bench mode.
Prints one line ``BENCH_RESULT {...}``:

- ``rss_before_bytes``: resident set size once Dagster, krea-dagster and the definitions are
  loaded, just before the run starts;
- ``rss_peak_bytes``: the kernel's high-water mark of the resident set (``ru_maxrss``) after
  the run, so nothing between two samples can be missed;
- ``cpu_seconds``: user + system CPU time of this process (every thread) spent in
  ``dg.materialize`` of the images asset: run and step set-up, loading the prompts table,
  polling, downloading, verifying (full decode and size check), hashing, writing into the
  store, ledger updates, thumbnails, the manifest, its metadata and the asset checks.
"""

import json
import resource
import sys
import time
from pathlib import Path

import dagster as dg
import psutil

from bench.params import FULL, SMOKE
from bench.workload import build_assets, make_resource, materialize, step_key, step_times


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    params = {"full": FULL, "smoke": SMOKE}[spec["mode"]]
    workdir = Path(spec["workdir"])
    assets = build_assets(workdir, params)
    krea = make_resource(spec["base_url"], spec["token"], params)
    process = psutil.Process()
    with dg.DagsterInstance.get() as instance:
        rss_before = process.memory_info().rss
        cpu_before = time.process_time()
        started = time.perf_counter()
        result = materialize(assets, instance, krea, roles=("images",))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        times = step_times(instance, result.run_id)
        images = step_key(assets, "images")
        manifest = result.output_for_node(images)
        report = {
            "success": result.success,
            "images": int((manifest["status"] == "completed").sum()),
            "rows": len(manifest),
            "wall_seconds": wall,
            "step_seconds": times[f"{images}:STEP_SUCCESS"] - times[f"{images}:STEP_START"],
            "cpu_seconds": cpu,
            "rss_before_bytes": rss_before,
            "rss_peak_bytes": peak,
        }
    print("BENCH_RESULT " + json.dumps(report), flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
