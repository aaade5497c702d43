"""What the scenarios share: prompt files, the assets under test, the emulator's counters, step times.

Also two shortcuts for the scenarios that need thousands of pending jobs (the sensor tick):
``post_jobs`` submits straight to the emulator with many connections, and
``record_submitted`` writes the ledger rows the jobs step would have written (intent and job id
in one go), so preparing 10,000 pending jobs takes seconds instead of the minutes 10,000
sequential ledger round trips would.
"""

import asyncio
import csv
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import httpx

from bench.params import BenchParams
from krea_dagster import KreaResource, build_krea_image_assets
from krea_dagster.engine.ledger import utcnow
from krea_dagster.engine.ledger.schema import submissions_table
from krea_dagster.engine.prompts import request_hash
from krea_dagster.node import KreaImageAssets

PREFIX = "bench"
BATCH = "batch"
# Dagster's console logger at WARNING: the event log still gets every event (the step times come
# from it), the terminal does not get ten DEBUG lines per step.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def prompt_texts(count: int, tag: str) -> list[str]:
    """Distinct prompts (a repeated body would count as a duplicate paid job at the emulator)."""
    return [
        f"{tag} {index}: a lighthouse on a cliff at dusk, oil painting" for index in range(count)
    ]


def write_prompts(directory: Path, batch: str, prompts: Sequence[str]) -> Path:
    """A one-column CSV prompt file, the smallest thing a user drops into the source."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{batch}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([prompt] for prompt in prompts)
    return path


def build_assets(workdir: Path, params: BenchParams) -> KreaImageAssets:
    """The assets under test, with their prompt files, store and SQLite ledger under ``workdir``."""
    return build_krea_image_assets(
        PREFIX,
        prompts=workdir / "prompts",
        model=params.model,
        store=workdir / "store",
        ledger=f"sqlite:///{workdir / 'ledger.db'}",
        defaults={"width": params.width, "height": params.height},
    )


def make_resource(base_url: str, token: str, params: BenchParams, **overrides: Any) -> KreaResource:
    """``KreaResource`` as a user would configure it for this render time (see ``params``)."""
    settings: dict[str, Any] = {
        "api_key": token,
        "base_url": base_url,
        "poll_interval": params.poll_interval,
    }
    settings.update(overrides)
    return KreaResource(**settings)


def materialize(
    assets: KreaImageAssets,
    instance: dg.DagsterInstance,
    krea: KreaResource,
    roles: Sequence[str] = ("prompts", "jobs", "images"),
    batch: str = BATCH,
) -> dg.ExecuteInProcessResult:
    """Materialize one batch through ``roles`` (upstream assets are loaded, not re-run)."""
    name = assets.partitions_def.name or ""
    if not instance.has_dynamic_partition(name, batch):
        instance.add_dynamic_partitions(name, [batch])
    chosen = {"prompts": assets.prompts, "jobs": assets.jobs, "images": assets.images}
    return dg.materialize(
        [assets.source, *chosen.values()],
        selection=[chosen[role] for role in roles],
        partition_key=batch,
        instance=instance,
        resources={assets.resource_key: krea},
        run_config=QUIET_RUN_CONFIG,
    )


def step_times(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """First timestamp of each ``<step>:<event>`` of a run (``bench__jobs:STEP_START``...)."""
    times: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.step_key:
            times.setdefault(f"{event.step_key}:{event.event_type_value}", entry.timestamp)
    return times


def step_key(assets: KreaImageAssets, role: str) -> str:
    chosen = {"prompts": assets.prompts, "jobs": assets.jobs, "images": assets.images}
    return chosen[role].node_def.name


def api_requests(stats: Mapping[str, Any]) -> dict[str, int]:
    """Krea API requests by route from the emulator's counters (CDN downloads are separate)."""
    return dict(stats["requests_by_route"])


def total_requests(by_route: Mapping[str, int]) -> int:
    return sum(by_route.values())


def diff_requests(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    routes = sorted(set(after) | set(before))
    return {
        r: after.get(r, 0) - before.get(r, 0) for r in routes if after.get(r, 0) - before.get(r, 0)
    }


def krea_span(base_url: str, token: str) -> tuple[float, float]:
    """(first ``created_at``, last ``completed_at``) of the account's jobs, as epoch seconds.

    Read after the scenario's counters: these ``GET /jobs`` pages are the bench's, not the
    client's.
    """
    jobs = job_times(base_url, token)
    first = min((created for created, _ in jobs), default=math.inf)
    last = max((completed for _, completed in jobs if completed is not None), default=-math.inf)
    return first, last


def job_times(base_url: str, token: str) -> list[tuple[float, float | None]]:
    """(``created_at``, ``completed_at`` or None) of every job of the account, as epoch seconds
    (the bench's own ``GET /jobs`` pages, read after the scenario's counters)."""
    times: list[tuple[float, float | None]] = []
    cursor: str | None = None
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, trust_env=False
    ) as client:
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = client.get("/jobs", params=params).raise_for_status().json()
            for job in page["items"]:
                completed = job.get("completed_at")
                times.append((_epoch(job["created_at"]), _epoch(completed) if completed else None))
            cursor = page.get("next_cursor")
            if not cursor or not page["items"]:
                return times


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- shortcuts for thousands of pending jobs ----------------------------------------------------


def post_jobs(
    base_url: str, token: str, params: BenchParams, prompts: Sequence[str], clients: int = 16
) -> list[dict[str, Any]]:
    """POST one job per prompt straight to the emulator; the JobCreated answers, in order."""
    return asyncio.run(_post_jobs(base_url, token, params, prompts, clients))


def request_body(params: BenchParams, prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "width": params.width, "height": params.height}


async def _post_jobs(
    base_url: str, token: str, params: BenchParams, prompts: Sequence[str], clients: int
) -> list[dict[str, Any]]:
    # Imported here: bench/e2e_defs.py loads this module in the timed `dagster` process, and
    # aiohttp (0.3-0.7 s to import) is no part of what a user's code location loads.
    import aiohttp

    answers: list[dict[str, Any] | None] = [None] * len(prompts)
    indexes = iter(range(len(prompts)))
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url, connector=connector, headers=headers) as session:

        async def worker() -> None:
            for index in indexes:
                body = request_body(params, prompts[index])
                async with session.post(f"/generate/image/{params.model}", json=body) as response:
                    if response.status != 200:
                        raise RuntimeError(
                            f"POST answered {response.status}: {await response.text()}"
                        )
                    answers[index] = await response.json()

        await asyncio.gather(*(worker() for _ in range(clients)))
    return [answer for answer in answers if answer is not None]


def record_submitted(
    assets: KreaImageAssets,
    params: BenchParams,
    prompts: Sequence[str],
    jobs: Sequence[Mapping[str, Any]],
    batch: str = BATCH,
) -> None:
    """Ledger rows for jobs already submitted: what ``claim`` + ``mark_submitted`` would write."""
    ledger = assets.pipeline.ledger
    generation = ledger.ensure_generation(assets.prefix, batch)
    now = utcnow()
    rows = []
    for index, (prompt, job) in enumerate(zip(prompts, jobs, strict=True)):
        body = request_body(params, prompt)
        rows.append(
            {
                "submission_id": str(uuid.uuid4()),
                "scope": assets.prefix,
                "batch": batch,
                "generation": generation,
                "prompt_key": f"bulk-{index:06d}",
                "attempt": 1,
                "model": params.model,
                "request_hash": request_hash(params.model, body),
                "request_json": json.dumps(body, sort_keys=True),
                "state": job["status"],
                "job_id": job["job_id"],
                "intent_at": now,
                "submitted_at": now,
                "krea_created_at": datetime.fromtimestamp(_epoch(job["created_at"]), UTC),
                "updated_at": now,
            }
        )
    with ledger.transaction() as conn:
        conn.execute(submissions_table.insert(), rows)
