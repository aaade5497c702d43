"""Capacity of the Krea API emulator: sustained GET /jobs/{id} rate and its cost per live job.

Run: ``.venv/bin/python bench/emulator_capacity.py [--requests N] [--clients N] [--live N]``.
Prints one JSON object with the parameters and the figures measured in this run:

- ``get_job_rps_at_10`` / ``get_job_rps_at_10k``: sustained ``GET /jobs/{id}`` rate against a
  subprocess emulator (``krea-emulator serve``) with 10 and with 10,000 live jobs, measured by
  several keep-alive connections of an asyncio client (aiohttp on uvloop, so the client costs
  little of the 2-core budget the server shares with it);
- ``ratio_10k_over_10``: time per request at 10,000 live jobs over time per request at 10 (the
  event heap means it should stay near 1: requests never scan the jobs);
  ``cpu_ratio_10k_over_10`` compares the server processes' own CPU time per request (from
  psutil), which other load on the machine does not distort the way it distorts wall time;
- ``png_ms_1024``: milliseconds to render one 1024 x 1024 result PNG (no cache), and
  ``cdn_png_per_second``: downloads of distinct 1024 x 1024 results per second from the CDN.

Jobs render for ``--render-seconds`` (default 600 s) so that they stay live during the run while
their phase changes still fire events. The 10-job and the 10,000-job emulators run side by side
and the rounds alternate between them; each figure is the median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from krea_dagster.emulator.images import render_png
from krea_dagster.emulator.server import new_event_loop
from krea_dagster.emulator.testing import SpawnedEmulator, spawn_emulator

MODEL_PATH = "/generate/image/bfl/flux-1-dev"
SEED = 1234


async def create_jobs(
    emulator: SpawnedEmulator, count: int, clients: int, offset: int
) -> list[str]:
    """Submit ``count`` distinct jobs with ``clients`` concurrent connections."""
    ids: list[str] = []
    queue = iter(range(offset, offset + count))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        emulator.base_url, connector=connector, headers=emulator.auth_headers
    ) as session:

        async def worker() -> None:
            for index in queue:
                body = {"prompt": f"capacity {index}", "width": 1024, "height": 1024, "seed": index}
                async with session.post(MODEL_PATH, json=body) as response:
                    assert response.status == 200, await response.text()
                    ids.append((await response.json())["job_id"])

        await asyncio.gather(*(worker() for _ in range(clients)))
    return ids


async def get_jobs(emulator: SpawnedEmulator, ids: list[str], requests: int, clients: int) -> float:
    """Seconds taken by ``requests`` GET /jobs/{id} spread over ``clients`` connections."""
    per_client = requests // clients
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        emulator.base_url, connector=connector, headers=emulator.auth_headers
    ) as session:

        async def worker(start: int) -> None:
            for step in range(per_client):
                job_id = ids[(start + step * 7) % len(ids)]
                async with session.get(f"/jobs/{job_id}") as response:
                    await response.read()
                    assert response.status == 200

        await asyncio.gather(*(worker(i * 97) for i in range(clients)))  # warm the connections
        started = time.perf_counter()
        await asyncio.gather(*(worker(i * 97) for i in range(clients)))
        return time.perf_counter() - started


async def download_results(emulator: SpawnedEmulator, urls: list[str], clients: int) -> float:
    """Seconds to download every URL once (distinct images: no render cache hits)."""
    queue = iter(urls)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def worker() -> None:
            for url in queue:
                async with session.get(url) as response:
                    assert response.status == 200 and response.content_type == "image/png"
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started


def measure_png_ms(count: int = 50) -> float:
    """Milliseconds per uncached 1024 x 1024 render."""
    started = time.perf_counter()
    for index in range(count):
        render_png(f"bench prompt {index}", index, 1024, 1024)
    return (time.perf_counter() - started) / count * 1000


def run_loop(coroutine: Any) -> Any:
    """Run one coroutine on a fresh uvloop."""
    loop = new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def bench_get_job_rate(args: argparse.Namespace) -> dict[str, Any]:
    """GET /jobs/{id} on two subprocess emulators, one with 10 and one with ``--live`` jobs.

    Rounds alternate between the two so that a change in machine load during the run touches
    both figures alike.
    """
    cli = ["--render-seconds", str(args.render_seconds), "--concurrency", str(args.live + 100),
           "--backlog", "0", "--balance-usd", "1000000", "--seed", str(SEED)]  # fmt: skip
    with spawn_emulator(*cli) as small, spawn_emulator(*cli) as large:
        few = run_loop(create_jobs(small, 10, args.clients, 0))
        started = time.perf_counter()
        many = run_loop(create_jobs(large, args.live, args.clients, 0))
        post_seconds = time.perf_counter() - started
        live = (small.stats()["live_jobs"], large.stats()["live_jobs"])
        times: dict[str, list[float]] = {"small": [], "large": []}
        cpu: dict[str, list[float]] = {"small": [], "large": []}
        for _ in range(args.rounds):
            for name, emulator, ids in (("small", small, few), ("large", large, many)):
                process = psutil.Process(emulator.pid)
                before = sum(process.cpu_times()[:2])
                times[name].append(run_loop(get_jobs(emulator, ids, args.requests, args.clients)))
                cpu[name].append(sum(process.cpu_times()[:2]) - before)
    t_small, t_large = statistics.median(times["small"]), statistics.median(times["large"])
    c_small, c_large = statistics.median(cpu["small"]), statistics.median(cpu["large"])
    return {
        "live_jobs_measured": list(live),
        "post_generate_rps": round(args.live / post_seconds),
        "get_job_rps_at_10": round(args.requests / t_small),
        "get_job_rps_at_10k": round(args.requests / t_large),
        "ms_per_get_at_10": round(t_small / args.requests * 1000, 4),
        "ms_per_get_at_10k": round(t_large / args.requests * 1000, 4),
        "ratio_10k_over_10": round(t_large / t_small, 3),
        "ratio_per_round": [
            round(b / a, 3) for a, b in zip(times["small"], times["large"], strict=True)
        ],
        # get_jobs sends each round's requests twice (warm-up, then timed): CPU covers both.
        "server_cpu_us_per_get_at_10": round(c_small / (2 * args.requests) * 1e6, 1),
        "server_cpu_us_per_get_at_10k": round(c_large / (2 * args.requests) * 1e6, 1),
        "cpu_ratio_10k_over_10": round(c_large / c_small, 3),
    }


def bench_cdn(args: argparse.Namespace) -> dict[str, Any]:
    """Distinct 1024 x 1024 PNG downloads per second from the CDN origin."""
    with spawn_emulator(
        "--render-seconds", "0.01", "--concurrency", "1000", "--seed", str(SEED)
    ) as emulator:
        ids = run_loop(create_jobs(emulator, args.images, args.clients, 0))
        urls = [emulator.wait_for_job(job_id)["result"]["urls"][0] for job_id in ids]
        seconds = run_loop(download_results(emulator, urls, args.clients))
    return {"cdn_png_per_second": round(len(urls) / seconds), "cdn_images": len(urls)}


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="GET /jobs/{id} per round")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--live", type=int, default=10_000, help="live jobs of the large case")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--render-seconds", type=float, default=600.0)
    parser.add_argument("--images", type=int, default=500, help="distinct PNGs downloaded")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "parameters": {**vars(args), "seed": SEED, "model": MODEL_PATH},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "png_ms_1024": round(measure_png_ms(), 2),
    }
    report.update(bench_get_job_rate(args))
    report.update(bench_cdn(args))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
