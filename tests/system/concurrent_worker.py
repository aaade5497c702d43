"""One run worker of the concurrency test: materialize a batch once every worker is ready.

Usage: python concurrent_worker.py <batch> <rendezvous dir> <result json>

The code location (``krea_location.py``) is configured from the environment as in the
deployment, and the run is recorded in the instance of ``DAGSTER_HOME``. The worker imports
everything, writes ``<rendezvous>/ready-<pid>``, waits for ``<rendezvous>/go`` (so the runs start
within milliseconds of each other, not a Python start-up apart), materializes prompts, jobs,
images and the report, and writes its manifest and outcome to the result file.
"""

import json
import os
import runpy
import sys
import time
from pathlib import Path

import dagster as dg

LOCATION = Path(__file__).with_name("krea_location.py")
RENDEZVOUS_TIMEOUT = 120.0


def main() -> int:
    batch, rendezvous, result_path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    location = runpy.run_path(str(LOCATION))
    defs, krea, report = location["defs"], location["krea"], location["image_report"]
    instance = dg.DagsterInstance.get()
    (rendezvous / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT
    while not (rendezvous / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never said go")
        time.sleep(0.005)
    result = dg.materialize(
        [*krea.assets, report],
        selection=[krea.prompts, krea.jobs, krea.images, report],
        partition_key=batch,
        instance=instance,
        resources=defs.resources,
        tags={"krea/batch": batch},
        raise_on_error=False,
    )
    manifest = result.output_for_node(krea.images.node_def.name) if result.success else None
    result_path.write_text(
        json.dumps(
            {
                "batch": batch,
                "run_id": result.run_id,
                "success": result.success,
                "manifest": None if manifest is None else manifest.to_dict(orient="records"),
            },
            default=str,
        ),
        encoding="utf-8",
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
