"""Node apps in the client: ``get_node_app`` and ``execute_node_app`` (the care of ``submit``).

The happy paths, the refusals and the dropped answer run against the emulator in-process
(loopback); the 429 and body-shape scripts run on the FakeKrea with a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from krea_dagster.api import (
    AmbiguousSubmitError,
    AsyncKreaClient,
    BadRequestError,
    InsufficientCreditsError,
    KreaClient,
    NodeApp,
    NotFoundError,
    SendAttempt,
)
from krea_dagster.emulator import DEMO_NODE_APP_ID, pytest_plugin
from krea_dagster.emulator.testing import EmulatorHandle

from .support import TEST_NOW, FakeClock, FakeKrea, make_async_client, make_client, make_job

EXECUTE_ROUTE = "POST /node-apps/{id}/execute"
FAKE_APP = "app-version-1"
FAKE_EXECUTE = f"/node-apps/{FAKE_APP}/execute"
INPUTS = {"product_image": "data:,teapot", "product": "a teapot"}


# The plugin's fixtures (session emulator, reset before each test), also without its entry point.
krea_emulator_session = pytest_plugin.krea_emulator_session
krea_emulator = pytest_plugin.krea_emulator


@pytest.fixture
def krea(krea_emulator: EmulatorHandle) -> Iterator[KreaClient]:
    with KreaClient(krea_emulator.token, base_url=krea_emulator.base_url, timeout=10.0) as client:
        yield client


def test_get_node_app_reads_the_app(krea: KreaClient) -> None:
    """get_node_app returns a NodeApp with the schemas and mappings of the version."""
    app = krea.get_node_app(DEMO_NODE_APP_ID)
    assert isinstance(app, NodeApp)
    assert (app.id, app.name, app.slug, app.scope) == (
        DEMO_NODE_APP_ID,
        "Product angles",
        "product-angles",
        "public",
    )
    assert app.input_schema["required"] == ["product_image", "product"]
    assert app.output_schema is not None and set(app.output_schema["properties"]) == {
        "front",
        "three_quarter",
    }
    assert app.input_key_mapping["product_image"] == "node-1-image"
    assert app.raw["username"] == "krea-emulator"


def test_node_app_from_api_tolerates_nulls_and_extra_fields() -> None:
    """A null input schema reads as {}, null mappings as {}, unknown fields stay in raw."""
    app = NodeApp.from_api(
        {"id": "v1", "input_openapi_schema": None, "input_key_mapping": None, "new": 1}
    )
    assert (app.input_schema, app.output_schema, app.input_key_mapping) == ({}, None, {})
    assert app.raw["new"] == 1


def test_execute_node_app_returns_every_job(
    krea_emulator: EmulatorHandle, krea: KreaClient
) -> None:
    """One execute returns both jobs in step order; they complete like any generation job."""
    jobs = krea.execute_node_app(DEMO_NODE_APP_ID, INPUTS)
    assert len(jobs) == 2
    assert len({job.job_id for job in jobs}) == 2
    done = [krea.wait(job.job_id, timeout=10) for job in jobs]
    assert all(job.is_completed and job.result_urls for job in done)
    assert krea.stats.jobs_submitted == 2
    assert krea.stats.requests[EXECUTE_ROUTE] == 1
    assert krea_emulator.stats()["requests_by_route"][EXECUTE_ROUTE] == 1


def test_unknown_node_app_raises_not_found(krea: KreaClient) -> None:
    """A 404 on get and on execute raises NotFoundError naming the path template."""
    with pytest.raises(NotFoundError):
        krea.get_node_app("no-such-version")
    with pytest.raises(NotFoundError) as caught:
        krea.execute_node_app("no-such-version", INPUTS)
    assert caught.value.path_template == "/node-apps/{id}/execute"
    assert caught.value.submission_id is not None


def test_refusals_raise_the_submit_errors(krea_emulator: EmulatorHandle, krea: KreaClient) -> None:
    """A missing input is a BadRequestError naming it, a short balance InsufficientCreditsError."""
    with pytest.raises(BadRequestError, match="product_image"):
        krea.execute_node_app(DEMO_NODE_APP_ID, {"product": "a teapot"})
    krea_emulator.set_balance(0.3)  # one gpt-image-2 step, not two
    with pytest.raises(InsufficientCreditsError):
        krea.execute_node_app(DEMO_NODE_APP_ID, INPUTS)
    stats = krea_emulator.stats()
    assert stats["requests_by_route"][EXECUTE_ROUTE] == 2  # neither was resent
    assert stats["jobs_created"] == 0


def test_a_dropped_answer_is_ambiguous_and_not_resent(
    krea_emulator: EmulatorHandle, krea: KreaClient
) -> None:
    """The answer lost after both jobs were made raises AmbiguousSubmitError, after one POST."""
    krea_emulator.configure(accept_then_drop_rate=1.0)
    before = datetime.now(UTC)
    with pytest.raises(AmbiguousSubmitError) as caught:
        krea.execute_node_app(DEMO_NODE_APP_ID, INPUTS, submission_id="ledger-row-7")
    error = caught.value
    assert (error.kind, error.model) == ("node-app", f"node-app/{DEMO_NODE_APP_ID}")
    assert error.submission_id == "ledger-row-7"
    assert before <= error.submitted_at <= datetime.now(UTC)
    assert f"POST /node-apps/{DEMO_NODE_APP_ID}/execute may or may not have created jobs" in str(
        error
    )
    stats = krea_emulator.stats()
    assert stats["requests_by_route"][EXECUTE_ROUTE] == 1
    assert stats["node_app_jobs"] == 2
    assert krea.stats.ambiguous_submits == 1


def test_429_is_waited_out_with_on_send_before_each_wait_and_post(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """A 429 then 200: on_send sees attempt 1, the wait, attempt 2; each POST after its call."""
    limited = httpx.Response(429, json={"error": "maximum number of concurrent jobs"})
    jobs = [make_job(job_id=f"job-{n}") for n in range(2)]
    fake.on("POST", FAKE_EXECUTE, limited, httpx.Response(200, json=jobs))
    seen: list[tuple[SendAttempt, int]] = []

    def on_send(attempt: SendAttempt) -> None:
        seen.append((attempt, fake.count("POST", FAKE_EXECUTE)))

    with make_client(fake, clock) as krea:
        result = krea.execute_node_app(FAKE_APP, {"x": 1}, on_send=on_send)
    assert [job.job_id for job in result] == ["job-0", "job-1"]
    assert [(a.attempt, a.wait > 0, posts) for a, posts in seen] == [
        (1, False, 0),
        (2, True, 1),
        (2, False, 1),
    ]
    assert seen[1][0].wait == clock.sleeps[0]
    assert seen[0][0].sent_at == TEST_NOW
    assert len({a.submission_id for a, _ in seen}) == 1
    assert fake.count("POST", FAKE_EXECUTE) == 2


@pytest.mark.parametrize(
    "body", [{"job_id": "job-0"}, [], [{"status": "queued"}]], ids=["object", "empty", "not-a-job"]
)
def test_a_200_that_is_not_a_job_array_is_ambiguous(
    fake: FakeKrea, clock: FakeClock, body: Any
) -> None:
    """A 2xx that is not a non-empty array of jobs may hide created jobs: ambiguous, one POST."""
    fake.on("POST", FAKE_EXECUTE, httpx.Response(200, json=body))
    with make_client(fake, clock) as krea, pytest.raises(AmbiguousSubmitError) as caught:
        krea.execute_node_app(FAKE_APP, {"x": 1})
    assert "200 answer with an unreadable body" in str(caught.value)
    if isinstance(body, dict) or not body:
        assert "expected a non-empty array of Krea jobs" in str(caught.value)
    assert fake.count("POST", FAKE_EXECUTE) == 1


def test_a_connect_failure_is_resent(fake: FakeKrea, clock: FakeClock) -> None:
    """A POST that never left (ConnectError) is sent again; a read timeout is not."""
    fake.on("POST", FAKE_EXECUTE, httpx.ConnectError, httpx.ReadTimeout)
    with make_client(fake, clock) as krea, pytest.raises(AmbiguousSubmitError):
        krea.execute_node_app(FAKE_APP, {"x": 1})
    assert fake.count("POST", FAKE_EXECUTE) == 2


def test_async_client_gets_and_executes(krea_emulator: EmulatorHandle) -> None:
    """AsyncKreaClient reads the app and executes it into both jobs, like the sync client."""

    async def scenario() -> tuple[NodeApp, list[str]]:
        async with AsyncKreaClient(krea_emulator.token, base_url=krea_emulator.base_url) as krea:
            app = await krea.get_node_app(DEMO_NODE_APP_ID)
            jobs = await krea.execute_node_app(app.id, INPUTS)
            done = [await krea.wait(job.job_id, timeout=10) for job in jobs]
            return app, [job.status.value for job in done]

    app, statuses = asyncio.run(scenario())
    assert app.slug == "product-angles"
    assert statuses == ["completed", "completed"]
    assert krea_emulator.stats()["node_app_jobs"] == 2


def test_async_client_raises_the_same_ambiguity(fake: FakeKrea, clock: FakeClock) -> None:
    """The async twin raises AmbiguousSubmitError with kind node-app on a dropped answer."""

    async def scenario() -> None:
        async with make_async_client(fake, clock) as krea:
            await krea.execute_node_app(FAKE_APP, {"x": 1})

    fake.on("POST", FAKE_EXECUTE, httpx.RemoteProtocolError)
    with pytest.raises(AmbiguousSubmitError) as caught:
        asyncio.run(scenario())
    assert (caught.value.kind, caught.value.model) == ("node-app", f"node-app/{FAKE_APP}")
    assert fake.count("POST", FAKE_EXECUTE) == 1
