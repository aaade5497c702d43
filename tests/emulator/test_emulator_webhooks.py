"""Webhooks: one unsigned POST of the job JSON per terminal job, with retries."""

from __future__ import annotations

import httpx
import pytest
from conftest import TEST_MODEL_PATH, WebhookSink, make_body

from krea_dagster.emulator.testing import EmulatorHandle


def submit_with_hook(api: httpx.Client, url: str) -> str:
    """POST a job with X-Webhook-URL and return its id."""
    response = api.post(TEST_MODEL_PATH, json=make_body(), headers={"X-Webhook-URL": url})
    assert response.status_code == 200
    job_id: str = response.json()["job_id"]
    return job_id


def test_completed_job_posts_the_job_json_without_auth(
    krea_emulator: EmulatorHandle, api: httpx.Client, webhook_sink: WebhookSink
) -> None:
    """The webhook body equals GET /jobs/{id} and carries no Authorization header."""
    job_id = submit_with_hook(api, webhook_sink.url)
    delivery = webhook_sink.wait_for(1)[0]
    assert delivery == api.get(f"/jobs/{job_id}").json()
    assert delivery["status"] == "completed"
    assert "authorization" not in webhook_sink.headers[0]
    krea_emulator.wait_until(lambda stats: stats["webhooks_sent"] == 1)


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_failed_and_cancelled_jobs_are_delivered_too(
    krea_emulator: EmulatorHandle, api: httpx.Client, webhook_sink: WebhookSink, end: str
) -> None:
    """Every terminal status is delivered, with its error."""
    krea_emulator.configure(render_seconds=30)
    job_id = submit_with_hook(api, webhook_sink.url)
    if end == "failed":
        krea_emulator.fail_job(job_id, code="nsfw", message="flagged")
    else:
        api.delete(f"/jobs/{job_id}")
    delivery = webhook_sink.wait_for(1)[0]
    assert (delivery["status"], delivery["error"]["code"]) == (
        end,
        "nsfw" if end == "failed" else "cancelled",
    )


def test_failed_deliveries_are_retried_with_backoff(
    krea_emulator: EmulatorHandle, api: httpx.Client, webhook_sink: WebhookSink
) -> None:
    """Two 500 answers, then success: three attempts, one delivery."""
    webhook_sink.fail_first = 2
    submit_with_hook(api, webhook_sink.url)
    webhook_sink.wait_for(1)
    stats = krea_emulator.wait_until(lambda s: s["webhooks_sent"] == 1)
    assert (stats["webhook_attempts"], webhook_sink.attempts) == (3, 3)


def test_delivery_gives_up_after_max_attempts(
    krea_emulator: EmulatorHandle, api: httpx.Client, webhook_sink: WebhookSink
) -> None:
    """A receiver that always fails gets webhook_max_attempts tries, then the delivery is dropped."""
    krea_emulator.configure(webhook_max_attempts=3)
    webhook_sink.fail_first = 100
    job_id = submit_with_hook(api, webhook_sink.url)
    krea_emulator.wait_for_job(job_id)
    stats = krea_emulator.wait_until(lambda s: s["webhooks_failed"] == 1)
    assert (stats["webhooks_sent"], webhook_sink.attempts) == (0, 3)


def test_webhooks_fire_without_anybody_polling(
    krea_emulator: EmulatorHandle, api: httpx.Client, webhook_sink: WebhookSink
) -> None:
    """The background tick finishes jobs and delivers webhooks with no GET in between."""
    krea_emulator.configure(render_seconds=0.05)
    ids = {submit_with_hook(api, webhook_sink.url) for _ in range(3)}
    assert {d["job_id"] for d in webhook_sink.wait_for(3)} == ids
