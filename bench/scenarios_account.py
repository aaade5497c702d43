"""A big account over a real network (issue 21): one function per scenario, JSON-ready dicts.

Every request to the Krea API gets the case's added latency (the emulator's ``latency_ms``, on
every public route: ``POST /generate``, ``GET /jobs``, ``GET /jobs/{id}``...; the CDN is not
delayed), the account's concurrency is the case's, and each job renders for the case's time.

- ``time_account_case``: one contender, launched as a user launches it (``dagster asset
  materialize`` in a fresh process, in-process executor), timed from launch to the command's
  exit: krea-dagster (``bench/e2e_defs.py``) in each of its configurations ``KREA_CONFIGS``
  (the default one, and the documented setting for big accounts: ``submit_lanes``), or the
  obvious Dagster asset a user writes without it (``naive.naive_images_asset`` through
  ``bench/naive_defs.py``: a thread pool of ``concurrency`` threads, each POSTing one job,
  polling ``GET /jobs/{id}`` until it is terminal and downloading the image).
- ``count_kill_mid_submission``: the krea-dagster command (one of ``KREA_CONFIGS``) SIGKILLed
  while it submits, then the batch re-run: how many prompts were left to a person
  (``reported``) and how many jobs were billed twice.
"""

import json
import math
import time
from typing import Any

from bench.params import BIG_ACCOUNT_SUBMIT_LANES, MODEL_PATH, AccountCase
from bench.scenarios import Bench, dagster_instance
from bench.scenarios_scale import (
    e2e_env,
    krea_run_breakdown,
    krea_selection,
    launch_materialize,
    stored_images,
)
from bench.workload import (
    BATCH,
    build_assets,
    diff_requests,
    job_times,
    make_resource,
    materialize,
    prompt_texts,
    total_requests,
    write_prompts,
)

#: krea-dagster's configurations, each a contender: the resource fields set beyond the bench's
#: defaults. ``krea_dagster_lanes`` is README's setting for a big account: several submit lanes.
KREA_CONFIGS: dict[str, dict[str, Any]] = {
    "krea_dagster": {},
    "krea_dagster_lanes": {"submit_lanes": BIG_ACCOUNT_SUBMIT_LANES},
}
CONTENDERS = (*KREA_CONFIGS, "naive")
POST_ROUTE = "POST /generate/image/{provider}/{model}"


def account_emulator(bench: Bench, case: AccountCase) -> None:
    """A reset emulator with the case's concurrency, render time and added latency."""
    bench.fresh_emulator()
    bench.emulator.set_concurrency(case.concurrency)
    bench.emulator.configure(render_seconds=case.render_seconds, latency_ms=case.latency_ms)


def post_rate(created: list[float]) -> float:
    """POSTs per second the account received: jobs created after the first, over the time
    from the first job's creation to the last one's (Krea's ``created_at``)."""
    if len(created) < 2:
        return math.nan
    span = max(created) - min(created)
    return (len(created) - 1) / span if span > 0 else math.inf


def time_account_case(bench: Bench, case: AccountCase, contender: str) -> dict[str, Any]:
    """``contender`` over ``case``: launch to exit, requests per image, POSTs per second.

    ``seconds`` is the command's whole life, launch to exit: the interpreter, Dagster and the
    code location, the run, every request, every download, the exit. Every contender pays the
    same Dagster start-up. ``posts_per_second`` is the rate the account received the POSTs
    (``post_rate``).
    """
    if contender not in CONTENDERS:
        raise ValueError(f"contender must be one of {CONTENDERS}, got {contender!r}")
    account_emulator(bench, case)
    params = bench.params
    workdir = bench.workdir(f"account-{contender}-{case.label}")
    prompts = write_prompts(
        workdir / "prompts", BATCH, prompt_texts(case.size, f"account {contender} {case.label}")
    )
    with dagster_instance(workdir) as instance:
        if contender in KREA_CONFIGS:
            assets = build_assets(workdir, params)
            instance.add_dynamic_partitions(assets.partitions_def.name or "", [BATCH])
            run = launch_materialize(
                instance,
                module="bench.e2e_defs",
                selection=krea_selection(assets),
                env=e2e_env(
                    bench, workdir, poll_interval=case.poll_interval, **KREA_CONFIGS[contender]
                ),
                partition=BATCH,
                timeout=600 + 5 * case.ideal_seconds,
            )
            requests = bench.requests()
            images = stored_images(assets)
            detail = krea_run_breakdown(bench, assets, run)
            last_image_at = detail["seconds"]
        else:
            spec = {
                "prompts_csv": str(prompts),
                "directory": str(workdir / "images"),
                "base_url": bench.emulator.base_url,
                "token": bench.emulator.token,
                "model_path": MODEL_PATH,
                "defaults": {"width": params.width, "height": params.height},
                "poll_interval": case.poll_interval,
                "workers": case.concurrency,
            }
            run = launch_materialize(
                instance,
                module="bench.naive_defs",
                selection="naive_images",
                env={"KREA_BENCH_NAIVE": json.dumps(spec)},
                timeout=600 + 5 * case.ideal_seconds,
            )
            requests = bench.requests()
            images = len(list((workdir / "images").glob("*.png")))
            last_image_at = run.events["naive_images:ASSET_MATERIALIZATION"] - run.launched
            detail = {
                "startup_seconds": run.events["naive_images:STEP_START"] - run.launched,
                "step_seconds": run.events["naive_images:STEP_SUCCESS"]
                - run.events["naive_images:STEP_START"],
            }
    times = job_times(bench.emulator.base_url, bench.emulator.token)
    created = [created for created, _ in times]
    seconds = run.command_seconds
    return {
        # The breakdown first: its "seconds" (launch to the manifest) must not stand for the
        # figure, which is launch to exit for both contenders.
        **detail,
        "case": case.label,
        "contender": contender,
        "resource": KREA_CONFIGS.get(contender, {}),
        "size": case.size,
        "concurrency": case.concurrency,
        "latency_ms": case.latency_ms,
        "render_seconds": case.render_seconds,
        "poll_interval": case.poll_interval,
        "seconds": seconds,
        "command_seconds": seconds,
        "to_last_image_seconds": last_image_at,
        "ideal_seconds": case.ideal_seconds,
        "over_ideal": seconds / case.ideal_seconds,
        "images": images,
        "requests": requests,
        "requests_per_image": total_requests(requests) / images if images else math.nan,
        "posts": requests.get(POST_ROUTE, 0),
        "posts_per_second": post_rate(created),
        "posting_seconds": max(created) - min(created) if created else math.nan,
    }


def count_kill_mid_submission(
    bench: Bench,
    case: AccountCase,
    *,
    kill_after_jobs: int,
    timeouts: tuple[float, float, float],
    contender: str = "krea_dagster",
) -> dict[str, Any]:
    """kill -9 of a krea-dagster run worker (configuration ``contender`` of ``KREA_CONFIGS``)
    while it submits, then the batch re-run (same configuration).

    The worker is the launched command (in-process executor: the run worker is the command's
    process), with the request timeouts ``timeouts`` (connect, write, read) so a window the
    re-run has to wait out closes in seconds. It is SIGKILLed once ``kill_after_jobs`` jobs
    exist at Krea, while it is sending the next POSTs. Then, read from the ledger before
    anything else touches it: ``in_flight_at_kill`` (rows sent with no answer recorded: their
    jobs may exist) and ``intents_at_kill`` (claimed, never sent). The re-run (the jobs run,
    then the images run, in this process with the same resource) settles them. Figures:
    ``reported`` (prompts left for a person: the goal is 0), ``billed_twice`` (jobs billed
    beyond one per prompt, and the emulator's duplicate submissions: the goal is 0),
    ``rerun_seconds`` and what reconciliation cost in requests. Every job of the scenario
    completes unless reconciliation cancels it (no fault is injected), so jobs billed beyond one
    per prompt are prompts billed twice. A reported prompt whose POST created nothing is billed
    for nothing, so fewer jobs than prompts may be billed: that is 0 billed twice, not a
    negative count (a prompt billed twice beside it shows in ``duplicate_submissions``: Krea
    billed the same request twice).
    """
    if contender not in KREA_CONFIGS:
        raise ValueError(f"contender must be one of {tuple(KREA_CONFIGS)}, got {contender!r}")
    account_emulator(bench, case)
    params = bench.params
    workdir = bench.workdir(f"account-kill-{contender}-{case.label}")
    write_prompts(workdir / "prompts", BATCH, prompt_texts(case.size, f"account kill {case.label}"))
    assets = build_assets(workdir, params)
    connect, write, read = timeouts
    resource = {
        "poll_interval": case.poll_interval,
        "connect_timeout": connect,
        "write_timeout": write,
        "read_timeout": read,
        **KREA_CONFIGS[contender],
    }
    emulator = bench.emulator

    def enough_jobs() -> bool:
        return int(emulator.stats()["jobs_created"]) >= kill_after_jobs

    with dagster_instance(workdir) as instance:
        instance.add_dynamic_partitions(assets.partitions_def.name or "", [BATCH])
        launch_materialize(
            instance,
            module="bench.e2e_defs",
            selection=krea_selection(assets),
            env=e2e_env(bench, workdir, **resource),
            partition=BATCH,
            timeout=600 + 5 * case.ideal_seconds,
            kill_when=enough_jobs,
        )
        at_kill = emulator.stats()
        ledger = assets.pipeline.ledger
        rows = ledger.rows(assets.prefix, BATCH)
        unresolved = [row for row in rows if row.is_unresolved]
        in_flight = [row for row in unresolved if row.sent_at is not None]
        krea = make_resource(emulator.base_url, emulator.token, params, **resource)
        started = time.perf_counter()
        materialize(assets, instance, krea, roles=("prompts", "jobs"))
        after_jobs = emulator.stats()
        result = materialize(assets, instance, krea, roles=("images",))
        rerun_seconds = time.perf_counter() - started
        manifest = result.output_for_node(assets.images.node_def.name)
    stats = emulator.stats()
    generation = ledger.current_generation(assets.prefix, BATCH)
    reported = ledger.reported(assets.prefix, BATCH)
    rerun_jobs = diff_requests(after_jobs["requests_by_route"], at_kill["requests_by_route"])
    return {
        "case": case.label,
        "contender": contender,
        "resource": KREA_CONFIGS[contender],
        "size": case.size,
        "kill_after_jobs": kill_after_jobs,
        "timeouts": list(timeouts),
        "jobs_created_at_kill": at_kill["jobs_created"],
        "rows_at_kill": len(rows),
        "in_flight_at_kill": len(in_flight),
        # Jobs Krea created whose answer the ledger never recorded: what reconciliation has to
        # attribute (the in-flight POSTs still in the emulator's latency were abandoned).
        "jobs_unanswered_at_kill": at_kill["jobs_created"] - sum(1 for row in rows if row.job_id),
        "intents_at_kill": len(unresolved) - len(in_flight),
        "rerun_seconds": rerun_seconds,
        "rerun_jobs_requests": rerun_jobs,
        "rerun_posts": rerun_jobs.get(POST_ROUTE, 0),
        "images": int((manifest["status"] == "completed").sum()),
        "reported": len(reported),
        "reported_prompts": sorted({row.prompt_key for row in reported}),
        "jobs_billed": stats["jobs_billed"],
        "billed_twice": max(stats["jobs_billed"] - case.size, 0),
        "duplicate_submissions": stats["duplicate_submissions"],
        "ledger_paid_duplicates": len(ledger.paid_duplicates(assets.prefix, BATCH, generation)),
    }
