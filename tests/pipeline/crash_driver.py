"""Materialize one batch in a separate process (the run worker that crash tests kill).

Usage: python crash_driver.py <prompts_dir> <store> <ledger_url> <base_url> <token> <batch>
with DAGSTER_HOME set to the shared instance and, for a crash, KREA_DAGSTER_CRASH_AT.
``KREA_DRIVER_TAGS`` (JSON) adds run tags (a regeneration, as a launcher would send it) and
``KREA_DRIVER_PREFIX`` names the asset prefix (default ``crash``).
"""

import faulthandler
import json
import os
import signal
import sys

import dagster as dg

from krea_dagster import KreaResource, build_krea_image_assets


def main() -> int:
    # A test that gives up waiting for this worker sends SIGUSR1 first: every thread's stack
    # goes to stderr, so a hang says where it is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    prompts_dir, store, ledger, base_url, token, batch = sys.argv[1:7]
    prefix = os.environ.get("KREA_DRIVER_PREFIX", "crash")
    assets = build_krea_image_assets(
        prefix, prompts=prompts_dir, model="bfl/flux-1-dev", store=store, ledger=ledger
    )
    krea = KreaResource(
        api_key=token,
        base_url=base_url,
        poll_interval=0.05,
        connect_timeout=1.0,
        write_timeout=1.0,
        read_timeout=2.0,
    )
    instance = dg.DagsterInstance.get()
    result = dg.materialize(
        [assets.source, assets.prompts, assets.jobs, assets.images],
        partition_key=batch,
        instance=instance,
        resources={"krea": krea},
        tags=json.loads(os.environ.get("KREA_DRIVER_TAGS", "{}")),
        raise_on_error=False,
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
