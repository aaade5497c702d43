"""The control plane: admin auth, stats keys, reset, accounts, forced outcomes."""

from __future__ import annotations

import httpx
import pytest
from conftest import TEST_MODEL_PATH, make_body

from krea_dagster.emulator.testing import EmulatorHandle

STATS_KEYS = {
    "jobs_created",
    "jobs_by_status",
    "jobs_billed",
    "billed_usd",
    "requests_by_route",
    "admin_requests_by_route",
    "cdn_downloads",
    "max_running_seen",
    "duplicate_submissions",
    "repeated_requests",
    "faults_injected",
    "webhooks_sent",
    "webhook_attempts",
    "webhooks_failed",
    "webhooks_pending",
    "running",
    "backlogged",
    "live_jobs",
    "uploads",
    "uploads_by_sha256",
    "duplicate_uploads",
}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Bearer {token}"],
    ids=["no-token", "wrong-token", "api-token"],
)
def test_admin_api_needs_the_admin_token(
    krea_emulator: EmulatorHandle, authorization: str | None
) -> None:
    """Only the admin token opens /_emulator/ (not even an API token)."""
    headers = (
        {"Authorization": authorization.format(token=krea_emulator.token)} if authorization else {}
    )
    response = httpx.get(f"{krea_emulator.base_url}/_emulator/stats", headers=headers)
    assert response.status_code == 401 and "admin" in response.json()["error"]


def test_admin_token_is_not_an_api_token(krea_emulator: EmulatorHandle) -> None:
    """The admin token cannot call the Krea API."""
    with krea_emulator.client(krea_emulator.admin_token) as client:
        assert client.get("/jobs").status_code == 401


def test_stats_have_every_documented_key_and_count_routes(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """Stats count requests by route template, admin routes separately."""
    job_id = api.post(TEST_MODEL_PATH, json=make_body()).json()["job_id"]
    api.get(f"/jobs/{job_id}")
    api.get(f"/jobs/{job_id}")
    stats = krea_emulator.stats()
    assert set(stats) >= STATS_KEYS
    assert stats["requests_by_route"] == {
        "POST /generate/image/{provider}/{model}": 1,
        "GET /jobs/{id}": 2,
    }
    assert stats["admin_requests_by_route"]["GET /_emulator/stats"] == 1
    assert set(stats["jobs_by_status"]) == {
        "backlogged", "queued", "scheduled", "processing", "sampling",
        "intermediate-complete", "completed", "failed", "cancelled",
    }  # fmt: skip


def test_duplicate_submissions_detect_double_pay(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """The same body for the same model twice counts one duplicate; other accounts are separate."""
    api.post(TEST_MODEL_PATH, json=make_body(prompt="same", seed=1))
    api.post(TEST_MODEL_PATH, json={"seed": 1, **make_body(prompt="same")})
    with krea_emulator.client(krea_emulator.add_account()["token"]) as other:
        other.post(TEST_MODEL_PATH, json=make_body(prompt="same", seed=1))
    assert krea_emulator.stats()["duplicate_submissions"] == 1


def test_reset_clears_activity_and_restores_balances(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """POST /_emulator/reset drops jobs and counters and refunds balances."""
    job_id = api.post(TEST_MODEL_PATH, json=make_body()).json()["job_id"]
    krea_emulator.wait_for_job(job_id)
    krea_emulator.reset()
    assert api.get("/jobs").json()["items"] == []
    stats = krea_emulator.stats()
    assert (stats["jobs_created"], stats["jobs_billed"]) == (0, 0)
    main = next(a for a in krea_emulator.accounts() if a["account"] == krea_emulator.account)
    assert main["balance_usd"] == 100.0


def test_accounts_can_be_created_listed_and_changed(krea_emulator: EmulatorHandle) -> None:
    """Accounts get their own token, concurrency, backlog and balance."""
    krea_emulator.configure(render_seconds=30)
    created = krea_emulator.add_account(
        token="acct-1:secret", concurrency=1, backlog=0, balance_usd=5
    )
    assert (created["account"], created["token"], created["concurrency"]) == (
        "acct-1",
        "acct-1:secret",
        1,
    )
    with krea_emulator.client(created["token"]) as client:
        assert client.post(TEST_MODEL_PATH, json=make_body(prompt="a")).status_code == 200
        assert client.post(TEST_MODEL_PATH, json=make_body(prompt="b")).status_code == 429
    updated = krea_emulator.top_up(2.5, account="acct-1")
    assert updated["balance_usd"] == 7.5
    assert krea_emulator.set_concurrency(3, account="acct-1")["concurrency"] == 3
    assert {a["account"] for a in krea_emulator.accounts()} >= {"acct-1", krea_emulator.account}


def test_raising_concurrency_starts_backlogged_jobs(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """A concurrency raise takes jobs off the backlog at once."""
    krea_emulator.configure(render_seconds=30)
    krea_emulator.set_concurrency(1)
    ids = [
        api.post(TEST_MODEL_PATH, json=make_body(prompt=f"p{i}")).json()["job_id"] for i in range(3)
    ]
    assert [api.get(f"/jobs/{i}").json()["status"] for i in ids] == [
        "queued",
        "backlogged",
        "backlogged",
    ]
    krea_emulator.set_concurrency(3)
    assert [api.get(f"/jobs/{i}").json()["status"] for i in ids] == ["queued"] * 3


def test_forced_outcomes(krea_emulator: EmulatorHandle, api: httpx.Client) -> None:
    """Admin complete/fail end a pending job at once; a terminal job cannot be forced."""
    krea_emulator.configure(render_seconds=30)
    first, second = (
        api.post(TEST_MODEL_PATH, json=make_body(prompt=p)).json()["job_id"] for p in "ab"
    )
    assert krea_emulator.complete_job(first)["status"] == "completed"
    failed = krea_emulator.fail_job(second, code="nsfw", message="flagged")
    assert failed["error"] == {"code": "nsfw", "message": "flagged"}
    with pytest.raises(RuntimeError, match="already completed"):
        krea_emulator.fail_job(first)
    assert krea_emulator.job(first)["price_usd"] == 0.007
