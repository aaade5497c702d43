"""The baselines: what a user writes without krea-dagster, with plain httpx.

Per prompt, the loop of Krea's own helper scripts: POST the generation, then ``GET /jobs/{id}``
until the status is terminal, sleeping the poll interval between polls, then download the
result and write it to disk. ``generate_sequentially`` does that for one prompt after the
other; ``generate_in_parallel`` hands the same function to a thread pool (8 workers).
``naive_images_asset`` is the obvious Dagster asset around it: one asset that reads the prompt
file and runs ``generate_in_parallel`` with as many threads as the account's concurrency.
Nothing here is tuned: no ledger, no retries, no verification beyond the HTTP status.
"""

import csv
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx

TERMINAL = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class NaiveRun:
    """What a baseline did."""

    seconds: float
    images: int
    failed: int


def generate_one(
    api: httpx.Client,
    cdn: httpx.Client,
    model_path: str,
    body: dict[str, Any],
    poll_interval: float,
    destination: Path,
) -> bool:
    """Submit, poll until terminal, download: True when the image was written."""
    response = api.post(model_path, json=body)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    while True:
        job = api.get(f"/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            break
        time.sleep(poll_interval)
    if job["status"] != "completed":
        return False
    image = cdn.get(job["result"]["urls"][0])
    image.raise_for_status()
    destination.write_bytes(image.content)
    return True


def _clients(base_url: str, token: str, connections: int) -> tuple[httpx.Client, httpx.Client]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    api = httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
        limits=limits,
        trust_env=False,
    )
    return api, httpx.Client(timeout=60.0, limits=limits, trust_env=False)


def generate_sequentially(
    base_url: str,
    token: str,
    model_path: str,
    bodies: Sequence[dict[str, Any]],
    poll_interval: float,
    directory: Path,
) -> NaiveRun:
    """One prompt after the other."""
    directory.mkdir(parents=True, exist_ok=True)
    api, cdn = _clients(base_url, token, 1)
    started = time.perf_counter()
    with api, cdn:
        written = [
            generate_one(api, cdn, model_path, body, poll_interval, directory / f"{index}.png")
            for index, body in enumerate(bodies)
        ]
    seconds = time.perf_counter() - started
    return NaiveRun(seconds, sum(written), len(written) - sum(written))


def generate_in_parallel(
    base_url: str,
    token: str,
    model_path: str,
    bodies: Sequence[dict[str, Any]],
    poll_interval: float,
    directory: Path,
    workers: int = 8,
) -> NaiveRun:
    """The same per-prompt function on a thread pool of ``workers``."""
    directory.mkdir(parents=True, exist_ok=True)
    api, cdn = _clients(base_url, token, workers)
    started = time.perf_counter()
    with api, cdn, ThreadPoolExecutor(max_workers=workers) as pool:
        written = list(
            pool.map(
                lambda item: generate_one(
                    api, cdn, model_path, item[1], poll_interval, directory / f"{item[0]}.png"
                ),
                enumerate(bodies),
            )
        )
    seconds = time.perf_counter() - started
    return NaiveRun(seconds, sum(written), len(written) - sum(written))


def naive_images_asset(
    *,
    prompts_csv: Path,
    directory: Path,
    base_url: str,
    token: str,
    model_path: str,
    defaults: dict[str, Any],
    poll_interval: float,
    workers: int,
) -> dg.AssetsDefinition:
    """One asset: every prompt of a CSV file through ``generate_in_parallel`` on ``workers``
    threads, each image written to ``directory``; a failed job fails the asset."""

    @dg.asset(name="naive_images")
    def naive_images() -> dg.MaterializeResult:
        with prompts_csv.open(newline="", encoding="utf-8") as handle:
            bodies = [{"prompt": row["prompt"], **defaults} for row in csv.DictReader(handle)]
        run = generate_in_parallel(
            base_url, token, model_path, bodies, poll_interval, directory, workers=workers
        )
        if run.failed:
            raise RuntimeError(f"{run.failed} of {len(bodies)} jobs did not complete")
        return dg.MaterializeResult(metadata={"images": run.images, "seconds": run.seconds})

    return naive_images
