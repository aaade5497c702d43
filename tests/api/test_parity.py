"""Sync/async parity: the same scripted sequences through both clients give the same results.

Each scenario scripts a FakeKrea, then runs the same steps on KreaClient and AsyncKreaClient;
the outcomes, the requests Krea saw (method, path, retry count) and the waits must be equal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from krea_dagster.api import AsyncKreaClient, Job, KreaClient, NodeApp

from .support import (
    SAMPLE_JOB_CREATED,
    TEST_CDN_URL,
    TEST_JOB_ID,
    TEST_MODEL,
    TEST_NOW,
    FakeClock,
    FakeKrea,
    make_async_client,
    make_client,
    make_job,
    png_bytes,
)

GENERATE = f"/generate/image/{TEST_MODEL}"
JOB_PATH = f"/jobs/{TEST_JOB_ID}"


@dataclass
class Step:
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def script_generate(fake: FakeKrea) -> list[Step]:
    fake.on("POST", GENERATE, httpx.Response(429), httpx.Response(200, json=SAMPLE_JOB_CREATED))
    fake.on(
        "GET",
        JOB_PATH,
        *[httpx.Response(200, json=make_job(status=s)) for s in ("backlogged", "processing")],
        httpx.Response(502),
        httpx.Response(200, json=make_job(status="completed")),
    )
    fake.on("GET", f"/results/{TEST_JOB_ID}.png", httpx.Response(200, content=png_bytes()))
    return [
        Step("submit", (TEST_MODEL, {"prompt": "a lighthouse"})),
        Step("wait", (TEST_JOB_ID,), {"model": TEST_MODEL}),
        Step("download", (f"{TEST_CDN_URL}/results/{TEST_JOB_ID}.png",)),
    ]


def script_ambiguous(fake: FakeKrea) -> list[Step]:
    fake.on("POST", GENERATE, httpx.ConnectError, httpx.ReadTimeout)
    fake.jobs = [make_job("created-anyway", created_at=TEST_NOW)]
    return [
        Step("submit", (TEST_MODEL, {"prompt": "a"})),
        Step("reconcile_submission", ("$last_error",), {"known_job_ids": []}),
    ]


def script_poll_many(fake: FakeKrea) -> list[Step]:
    ids = []
    for n in range(2500):
        job_id = f"job-{n:04d}"
        fake.jobs.append(make_job(job_id, created_at=TEST_NOW + timedelta(milliseconds=n)))
        ids.append(job_id)
    return [Step("poll_many", (ids[::-1],)), Step("poll_many", (ids[:3],))]


def script_timeout(fake: FakeKrea) -> list[Step]:
    fake.on("GET", JOB_PATH, httpx.Response(200, json=make_job(status="processing")))
    fake.on("DELETE", JOB_PATH, httpx.Response(200))
    return [Step("wait", (TEST_JOB_ID,), {"timeout": 45.0, "cancel_on_timeout": True})]


def script_failures(fake: FakeKrea) -> list[Step]:
    fake.on("POST", GENERATE, httpx.Response(402, json={"error": "no credits"}))
    fake.on(
        "GET",
        JOB_PATH,
        httpx.Response(200, json=make_job(status="failed", error={"code": "nsfw", "message": "x"})),
    )
    return [
        Step("submit", (TEST_MODEL, {"prompt": "a"})),
        Step("submit", (TEST_MODEL, {"prompt": ""})),
        Step("wait", (TEST_JOB_ID,)),
        Step("cancel_job", (TEST_JOB_ID,)),
    ]


def script_node_app(fake: FakeKrea) -> list[Step]:
    app = {"id": "v1", "name": "Angles", "input_openapi_schema": {"type": "object"}}
    jobs = [make_job(job_id=f"job-{n}") for n in range(2)]
    limited = httpx.Response(429, json={"error": "maximum number of concurrent jobs"})
    fake.on("GET", "/node-apps/v1", httpx.Response(502), httpx.Response(200, json=app))
    fake.on("POST", "/node-apps/v1/execute", limited, httpx.Response(200, json=jobs))
    fake.on("POST", "/node-apps/v2/execute", httpx.ConnectError, httpx.ReadTimeout)
    return [
        Step("get_node_app", ("v1",)),
        Step("execute_node_app", ("v1", {"product": "a teapot"})),
        Step("execute_node_app", ("v2", {"product": "a teapot"})),
        Step("execute_node_app", ("v3", {})),
    ]


SCENARIOS: dict[str, Callable[[FakeKrea], list[Step]]] = {
    "submit-429-wait-502-download": script_generate,
    "ambiguous-then-reconcile": script_ambiguous,
    "poll-many": script_poll_many,
    "wait-timeout-cancel": script_timeout,
    "refusal-validation-failure": script_failures,
    "node-app-502-429-ambiguous-404": script_node_app,
}


def describe(outcome: Any) -> Any:
    """A comparable summary of a step's result or error."""
    if isinstance(outcome, Exception):
        return (type(outcome).__name__, str(outcome).split("submission ")[0][:80])
    if isinstance(outcome, list):
        return [describe(item) for item in outcome]
    if isinstance(outcome, Job):
        return (outcome.job_id, outcome.status.value)
    if isinstance(outcome, NodeApp):
        return (outcome.id, outcome.name, outcome.input_schema)
    if hasattr(outcome, "sha256"):
        return (outcome.sha256, outcome.width, outcome.height)
    if hasattr(outcome, "outcome"):
        return (outcome.outcome.value, outcome.job and outcome.job.job_id)
    return outcome


def resolve(
    step: Step, last_error: Exception | None, tmp: Path
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args = tuple(last_error if a == "$last_error" else a for a in step.args)
    if step.method == "download":
        args = (*args, tmp)
    return args, step.kwargs


def run_sync(steps: list[Step], krea: KreaClient, tmp: Path) -> list[Any]:
    outcomes: list[Any] = []
    last_error: Exception | None = None
    for step in steps:
        args, kwargs = resolve(step, last_error, tmp)
        try:
            outcomes.append(describe(getattr(krea, step.method)(*args, **kwargs)))
        except Exception as error:
            last_error = error
            outcomes.append(describe(error))
    return outcomes


async def run_async(steps: list[Step], krea: AsyncKreaClient, tmp: Path) -> list[Any]:
    outcomes: list[Any] = []
    last_error: Exception | None = None
    for step in steps:
        args, kwargs = resolve(step, last_error, tmp)
        try:
            outcomes.append(describe(await getattr(krea, step.method)(*args, **kwargs)))
        except Exception as error:
            last_error = error
            outcomes.append(describe(error))
    return outcomes


def trace(fake: FakeKrea) -> list[tuple[str, str, str]]:
    return [(r.method, r.url.path, r.headers["X-Retry-Count"]) for r in fake.requests]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sync_and_async_clients_behave_identically(scenario: str, tmp_path: Path) -> None:
    """Both clients return the same outcomes, send the same requests and wait the same times."""
    sync_fake, async_fake = FakeKrea(), FakeKrea()
    steps = SCENARIOS[scenario](sync_fake)
    SCENARIOS[scenario](async_fake)
    sync_clock, async_clock = FakeClock(), FakeClock()
    (tmp_path / "sync").mkdir()
    (tmp_path / "async").mkdir()

    with make_client(sync_fake, sync_clock) as krea:
        sync_outcomes = run_sync(steps, krea, tmp_path / "sync")
        sync_stats = krea.stats.as_dict()

    async def main() -> tuple[list[Any], dict[str, Any]]:
        async with make_async_client(async_fake, async_clock) as krea:
            return await run_async(steps, krea, tmp_path / "async"), krea.stats.as_dict()

    async_outcomes, async_stats = asyncio.run(main())

    assert sync_outcomes == async_outcomes
    assert trace(sync_fake) == trace(async_fake)
    assert sync_clock.sleeps == async_clock.sleeps
    assert sync_stats == async_stats
    assert sync_fake.requests  # the scenario did talk to Krea


def test_both_clients_expose_the_same_public_methods() -> None:
    """Every public method of KreaClient has an async twin with the same parameters."""
    import inspect

    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")
        }

    sync_methods, async_methods = public(KreaClient), public(AsyncKreaClient)
    assert set(sync_methods) <= set(async_methods)
    for name, signature in sync_methods.items():
        assert list(signature.parameters) == list(async_methods[name].parameters), name
        if name not in ("with_options",):
            member = getattr(AsyncKreaClient, name)
            assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), name


@pytest.mark.anyio
async def test_async_on_update_may_be_a_coroutine(fake: FakeKrea, clock: FakeClock) -> None:
    """The async client awaits an async on_update callback."""
    fake.on(
        "GET",
        JOB_PATH,
        httpx.Response(200, json=make_job(status="processing")),
        httpx.Response(200, json=make_job(status="completed")),
    )
    seen: list[str] = []

    async def on_update(job: Job) -> None:
        seen.append(job.status.value)

    async with make_async_client(fake, clock) as krea:
        await krea.wait(TEST_JOB_ID, on_update=on_update)
    assert seen == ["processing", "completed"]


@pytest.mark.anyio
async def test_async_iter_jobs_pages(fake: FakeKrea, clock: FakeClock) -> None:
    """The async iter_jobs yields every job across pages."""
    fake.jobs = [make_job(f"j{n}", created_at=TEST_NOW + timedelta(seconds=n)) for n in range(7)]
    async with make_async_client(fake, clock) as krea:
        ids = [job.job_id async for job in krea.iter_jobs(limit=3)]
    assert ids == [f"j{n}" for n in reversed(range(7))]
    assert fake.count("GET", "/jobs") == 3


@pytest.mark.anyio
async def test_async_context_manager_closes_the_pool(fake: FakeKrea, clock: FakeClock) -> None:
    """Leaving async with closes the async client's pool."""
    async with make_async_client(fake, clock) as krea:
        http = krea._http
    assert http.is_closed
