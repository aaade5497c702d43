"""The code location the system tests deploy: one krea instance, configured like production.

Everything that differs between deployments comes from the environment of the code server
(and so of every run worker it starts), never from this file:

=====================  ========================================================================
``KREA_PROMPTS_DIR``   the prompt source directory (one CSV per batch)
``KREA_STORE_URI``     the image store, ``s3://bucket/prefix`` (endpoint from ``AWS_ENDPOINT_URL``)
``KREA_LEDGER_URL``    the ledger, ``postgresql+psycopg://user@host:port/db``
``KREA_BASE_URL``      the Krea API (here a krea-emulator subprocess)
``KREA_API_KEY``       the token, read through ``dg.EnvVar`` when a run or sensor needs it
=====================  ========================================================================

``KREA_SYSTEM_COLLECT_IN_TICK=0`` turns off storing images in the completion tick (every
download is then left to the images run), for tests about the images run itself.
``KREA_SYSTEM_SUBMIT_LANES=<k>`` sets the resource's ``submit_lanes`` (default 1).

Test hook: with ``KREA_SYSTEM_CRASH_ONCE=<crash point>`` and ``KREA_SYSTEM_CRASH_MARKER=<path>``,
the first run worker that sets up the Krea resource for a batch named in
``KREA_SYSTEM_CRASH_BATCH`` (comma-separated names) creates the marker file ``<path>.<batch>``
and arms that crash point in its own process (``KREA_DAGSTER_CRASH_AT``), so exactly one run
worker per batch is SIGKILLed there and its retry runs normally. ``KREA_SYSTEM_PAUSE_ONCE=<crash point>`` does the same with
``KREA_DAGSTER_PAUSE_AT``: that run worker stops itself (SIGSTOP) there, for the test to look at
and kill.
"""

import os

import dagster as dg
import pandas as pd

from krea_dagster import KreaResource, build_krea_image_assets, build_krea_sensors
from krea_dagster.engine.crashpoints import CRASH_ENV, PAUSE_ENV

PREFIX = "system"
SENSOR_INTERVAL_SECONDS = 2  # the daemon's sensor loop runs every 5 s; this never holds a tick back


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"the system-test code location needs {name} in its environment")
    return value


class SystemKreaResource(KreaResource):
    """KreaResource with the crash-once hook described in the module docstring."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        armed = {
            env: os.environ.get(hook)
            for env, hook in (
                (CRASH_ENV, "KREA_SYSTEM_CRASH_ONCE"),
                (PAUSE_ENV, "KREA_SYSTEM_PAUSE_ONCE"),
            )
            if os.environ.get(hook)
        }
        marker = os.environ.get("KREA_SYSTEM_CRASH_MARKER")
        run = context.dagster_run
        if not (armed and marker and run is not None):
            return
        batch = run.tags.get("krea/batch")
        if batch not in os.environ.get("KREA_SYSTEM_CRASH_BATCH", "").split(","):
            return
        try:
            os.close(os.open(f"{marker}.{batch}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # an earlier run worker already crashed; this one (the retry) must not
        os.environ.update(armed)


krea = build_krea_image_assets(
    PREFIX,
    prompts=_required("KREA_PROMPTS_DIR"),
    model="bfl/flux-1-dev",
    defaults={"width": 512, "height": 512, "steps": 20},
    store=_required("KREA_STORE_URI"),
    ledger=_required("KREA_LEDGER_URL"),
    max_usd_per_run=5.0,
)


@dg.asset(
    key=[PREFIX, "image_report"],
    ins={"manifest": dg.AssetIn(krea.images.key)},
    partitions_def=krea.partitions_def,
    group_name=PREFIX,
    kinds={"pandas"},
    description="Downstream of the manifest: reads every stored image back from the store.",
)
def image_report(manifest: pd.DataFrame) -> dg.MaterializeResult:
    completed = manifest[manifest["status"] == "completed"]
    readable = 0
    for uri in completed["uri"]:
        with krea.pipeline.store.open_path(uri).open("rb") as handle:
            readable += bool(handle.read(8))
    return dg.MaterializeResult(
        metadata={
            "prompts": len(manifest),
            "images": len(completed),
            "images_read_back": readable,
            "failed": int((manifest["status"] == "failed").sum()),
        }
    )


defs = dg.Definitions(
    assets=[*krea.assets, image_report],
    sensors=build_krea_sensors(
        krea,
        completion_target=[krea.images, image_report],
        discovery_interval_seconds=SENSOR_INTERVAL_SECONDS,
        completion_interval_seconds=SENSOR_INTERVAL_SECONDS,
        collect_in_tick=os.environ.get("KREA_SYSTEM_COLLECT_IN_TICK", "1") != "0",
        default_status=dg.DefaultSensorStatus.RUNNING,
    ),
    resources={
        "krea": SystemKreaResource(
            api_key=dg.EnvVar("KREA_API_KEY"),
            base_url=dg.EnvVar("KREA_BASE_URL"),
            poll_interval=0.2,
            submit_lanes=int(os.environ.get("KREA_SYSTEM_SUBMIT_LANES", "1")),
            # Short timeouts bound how long reconciliation waits for a dead worker's request
            # window (connect + write + read) before it may call the request "never created".
            connect_timeout=1.0,
            write_timeout=2.0,
            read_timeout=5.0,
        )
    },
    # One process per run: the krea steps of a run are sequential anyway, and a step
    # subprocess per step would only add Python start-ups on a 2-core CI machine.
    executor=dg.in_process_executor,
)
