"""Every fault knob over real HTTP, including accept-then-drop seen by a real httpx client."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from conftest import TEST_MODEL_PATH, WebhookSink, make_body

from krea_dagster.emulator.app import API_ROUTES
from krea_dagster.emulator.testing import EmulatorHandle

GENERATE_ROUTE = "POST /generate/image/{provider}/{model}"


def post_statuses(api: httpx.Client, count: int) -> list[int]:
    """Status codes of ``count`` generation POSTs with distinct prompts."""
    return [
        api.post(TEST_MODEL_PATH, json=make_body(prompt=f"p{i}")).status_code for i in range(count)
    ]


def test_latency_is_added_to_scoped_routes_only(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """latency_ms delays the scoped route and leaves the others fast."""
    krea_emulator.configure(latency_ms=80, latency_routes=["GET /jobs/{id}"])
    job_id = api.post(TEST_MODEL_PATH, json=make_body()).json()["job_id"]
    started = time.perf_counter()
    api.get(f"/jobs/{job_id}")
    assert time.perf_counter() - started >= 0.08
    api.get("/jobs")
    assert krea_emulator.stats()["faults_injected"]["latency"] == 1  # not on the other routes


def test_latency_without_routes_delays_every_public_route_and_not_admin_or_cdn(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """latency_ms with no latency_routes delays every public API route (POST /generate and
    GET /jobs included, whatever the answer) and neither the admin API nor the CDN."""
    job = api.post(TEST_MODEL_PATH, json=make_body()).json()
    finished = krea_emulator.wait_for_job(job["job_id"])
    krea_emulator.configure(latency_ms=60)
    slow = []
    for method, path, _handler in API_ROUTES:
        url = path.replace("{provider}/{model:path}", "bfl/flux-1-dev").replace("{id}", "absent")
        body = make_body() if path.startswith("/generate/image") else None
        started = time.perf_counter()
        api.request(method, url, json=body)
        slow.append((method, path, time.perf_counter() - started >= 0.06))
    assert [entry for entry in slow if not entry[2]] == []
    with httpx.Client(trust_env=False) as cdn:
        assert cdn.get(finished["result"]["urls"][0]).status_code == 200
    # One latency per public request: the CDN download and the admin calls got none.
    assert krea_emulator.stats()["faults_injected"]["latency"] == len(API_ROUTES)


def test_5xx_faults_happen_before_any_state_change(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """error_5xx_rate=1 answers 500/502/503 and creates no job."""
    krea_emulator.configure(error_5xx_rate=1.0)
    statuses = post_statuses(api, 10)
    assert set(statuses) <= {500, 502, 503} and len(statuses) == 10
    stats = krea_emulator.stats()
    assert (stats["jobs_created"], stats["faults_injected"]["error_5xx"]) == (0, 10)


def test_5xx_faults_can_be_scoped_to_generation(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """error_5xx_routes limits the fault to the listed route prefixes."""
    krea_emulator.configure(error_5xx_rate=1.0, error_5xx_routes=["POST /generate"])
    assert post_statuses(api, 1)[0] >= 500
    assert api.get("/jobs").status_code == 200


def test_5xx_rate_is_deterministic_for_a_seed(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """The same seed gives the same sequence of answers."""

    def run() -> list[int]:
        krea_emulator.reset(config=True)
        krea_emulator.configure(seed=11, error_5xx_rate=0.5, error_5xx_routes=["GET /jobs"])
        return [api.get("/jobs").status_code for _ in range(30)]

    first, second = run(), run()
    assert first == second
    assert {200} < set(first)


def test_429_rate_refuses_without_creating_jobs(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """error_429_rate=1 answers 429 naming the concurrency limit."""
    krea_emulator.configure(error_429_rate=1.0)
    response = api.post(TEST_MODEL_PATH, json=make_body())
    assert response.status_code == 429
    assert "maximum number of concurrent jobs (8)" in response.json()["error"]
    assert krea_emulator.stats()["jobs_created"] == 0


def test_burst_429_every_nth_post_starts_a_burst(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """burst_429_every=4, burst_429_length=2: POSTs 4-5 and 8-9 get 429."""
    krea_emulator.configure(burst_429_every=4, burst_429_length=2, concurrency=20, backlog=20)
    assert post_statuses(api, 10) == [200, 200, 200, 429, 429, 200, 200, 429, 429, 200]
    assert krea_emulator.stats()["faults_injected"]["burst_429"] == 4


def test_accept_then_drop_is_a_transport_error_but_the_job_exists_and_is_billed(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """The client sees RemoteProtocolError at once; the job runs and is billed."""
    krea_emulator.configure(accept_then_drop_rate=1.0)
    started = time.perf_counter()
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.post(TEST_MODEL_PATH, json=make_body(prompt="dropped"))
    assert time.perf_counter() - started < 1.0
    krea_emulator.configure(accept_then_drop_rate=0.0)
    items = api.get("/jobs").json()["items"]
    assert len(items) == 1
    krea_emulator.wait_for_job(items[0]["job_id"])
    stats = krea_emulator.stats()
    assert (stats["jobs_billed"], stats["faults_injected"]["accept_then_drop"]) == (1, 1)


@pytest.mark.parametrize(
    ("failures", "expected_codes"),
    [
        (None, {"safety_filter", "nsfw", "internal_error"}),
        ([["ip_detected", "IP detected"]], {"ip_detected"}),
    ],
    ids=["default-codes", "configured-code"],
)
def test_job_failure_rate_fails_jobs_with_listed_codes(
    krea_emulator: EmulatorHandle, api: httpx.Client, failures: Any, expected_codes: set[str]
) -> None:
    """job_failure_rate=1 fails every job with a (code, message) from job_failures."""
    knobs: dict[str, Any] = {"job_failure_rate": 1.0, "concurrency": 30, "seed": 3}
    if failures:
        knobs["job_failures"] = failures
    krea_emulator.configure(**knobs)
    ids = [
        api.post(TEST_MODEL_PATH, json=make_body(prompt=f"p{i}")).json()["job_id"]
        for i in range(20)
    ]
    codes = {krea_emulator.wait_for_job(job_id)["error"]["code"] for job_id in ids}
    assert codes == expected_codes
    assert krea_emulator.stats()["jobs_billed"] == 0


def test_stuck_job_fails_with_timeout(krea_emulator: EmulatorHandle, api: httpx.Client) -> None:
    """stuck_rate=1 leaves a hosted job in sampling until the scaled 3-minute timeout."""
    krea_emulator.configure(stuck_rate=1.0, time_scale=0.01)  # sampling at 28 ms, timeout 1.8 s
    job_id = api.post(TEST_MODEL_PATH, json=make_body()).json()["job_id"]
    time.sleep(0.1)
    assert api.get(f"/jobs/{job_id}").json()["status"] == "sampling"
    job = krea_emulator.wait_for_job(job_id, timeout=5)
    assert (job["status"], job["error"]["code"]) == ("failed", "timeout")


def test_webhook_duplicate_rate_delivers_twice(
    krea_emulator: EmulatorHandle, api: httpx.Client, webhook_sink: WebhookSink
) -> None:
    """webhook_duplicate_rate=1 posts the same terminal job twice."""
    krea_emulator.configure(webhook_duplicate_rate=1.0)
    job_id = api.post(
        TEST_MODEL_PATH, json=make_body(), headers={"X-Webhook-URL": webhook_sink.url}
    ).json()["job_id"]
    deliveries = webhook_sink.wait_for(2)
    assert [d["job_id"] for d in deliveries] == [job_id, job_id]
    assert deliveries[0] == deliveries[1]


def test_webhook_delay_holds_deliveries_back(
    krea_emulator: EmulatorHandle, api: httpx.Client, webhook_sink: WebhookSink
) -> None:
    """webhook_delay_seconds delivers late: after the job is already terminal when polled."""
    krea_emulator.configure(webhook_delay_seconds=1.0)
    job_id = api.post(
        TEST_MODEL_PATH, json=make_body(), headers={"X-Webhook-URL": webhook_sink.url}
    ).json()["job_id"]
    krea_emulator.wait_for_job(job_id)
    assert webhook_sink.received == []
    assert webhook_sink.wait_for(1)[0]["status"] == "completed"
    assert krea_emulator.stats()["faults_injected"]["webhook_delay"] == 1


def test_render_seconds_fixes_the_render_time(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """render_seconds overrides the per-model time for new jobs."""
    krea_emulator.configure(render_seconds=0.15)
    job_id = api.post(TEST_MODEL_PATH, json=make_body()).json()["job_id"]
    started = time.perf_counter()
    krea_emulator.wait_for_job(job_id)
    assert 0.1 < time.perf_counter() - started < 5.0


def test_unknown_or_invalid_knobs_are_rejected(krea_emulator: EmulatorHandle) -> None:
    """PATCH /_emulator/config refuses unknown knobs and out-of-range rates, changing nothing."""
    with pytest.raises(RuntimeError, match="unknown config knob 'nope'"):
        krea_emulator.configure(nope=1)
    with pytest.raises(RuntimeError, match="probability"):
        krea_emulator.configure(latency_ms=5, error_5xx_rate=2)
    assert krea_emulator.config()["latency_ms"] == 0


def test_cdn_faults_apply_only_when_scoped_explicitly(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """error_5xx_routes=["CDN"] fails downloads while the API answers normally."""
    job_id = api.post(TEST_MODEL_PATH, json=make_body()).json()["job_id"]
    url = krea_emulator.wait_for_job(job_id)["result"]["urls"][0]
    krea_emulator.configure(error_5xx_rate=1.0)
    assert httpx.get(url).status_code == 200  # unscoped faults never touch the CDN
    krea_emulator.configure(error_5xx_routes=["CDN"])
    assert httpx.get(url).status_code >= 500
    assert api.get(f"/jobs/{job_id}").status_code == 200
