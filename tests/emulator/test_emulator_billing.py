"""Prices from the catalog and the USD balance: 402, reservations, charges at completion."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import TEST_MODEL_PATH, make_body

from krea_dagster.emulator.catalog import load_models
from krea_dagster.emulator.pricing import DEFAULT_PRICE_USD, micros_to_usd, price_micros
from krea_dagster.emulator.testing import EmulatorHandle


@pytest.mark.parametrize(
    ("model", "body", "usd"),
    [
        ("image/bfl/flux-1-dev", {"prompt": "x"}, 0.007),
        ("image/google/nano-banana-2", {"prompt": "xyz"}, 0.08),
        ("image/google/nano-banana-2", {"prompt": "xyz", "resolution": "4K"}, 0.16),
        ("image/google/nano-banana-pro", {"prompt": "xyz", "resolution": "4K"}, 0.30),
        ("image/ideogram/ideogram-3", {"prompt": "x"}, 0.063),
        (
            "image/ideogram/ideogram-3",
            {"prompt": "x", "character_reference_images": ["https://a.b/c.png"]},
            0.1575,
        ),
        ("image/luma/uni-1", {"prompt": "x"}, 0.0404),
        (
            "image/luma/uni-1",
            {
                "prompt": "x",
                "mode": "max",
                "style_images": [{"url": "https://a.b/c", "strength": 1}] * 2,
            },
            0.1062,
        ),
        ("video/google/veo-2", {"prompt": "x", "duration": 6}, 3.1604),
        (
            "enhance/topaz/generative-enhance",
            {"image_url": "https://a.b/c", "width": 64, "height": 64},
            DEFAULT_PRICE_USD,
        ),
    ],
    ids=[
        "flat-price",
        "resolution-default-1K",
        "resolution-4K",
        "pro-4K",
        "no-character-reference",
        "character-reference",
        "mode-default-no-refs",
        "mode-max-two-refs",
        "duration-6s",
        "no-price-default",
    ],
)
def test_price_follows_the_catalog_conditions(model: str, body: dict[str, Any], usd: float) -> None:
    """The price point whose `when` matches the request applies; else the base; else $0.01."""
    assert micros_to_usd(price_micros(load_models()[model], body)) == pytest.approx(usd)


def test_402_names_the_balance_and_says_top_up(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """An exhausted balance answers 402 and the job is not created; a top-up fixes it."""
    krea_emulator.set_balance(0.005)
    response = api.post(TEST_MODEL_PATH, json=make_body())
    assert response.status_code == 402
    assert "insufficient API balance" in response.json()["error"]
    assert "top up" in response.json()["error"]
    assert krea_emulator.stats()["jobs_created"] == 0
    krea_emulator.top_up(1.0)
    assert api.post(TEST_MODEL_PATH, json=make_body()).status_code == 200


def test_completed_jobs_are_charged_and_failed_or_cancelled_are_not(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """Only the completed job's price leaves the balance."""
    krea_emulator.configure(render_seconds=30)
    ids = [
        api.post(TEST_MODEL_PATH, json=make_body(prompt=f"p{i}")).json()["job_id"] for i in range(3)
    ]
    krea_emulator.complete_job(ids[0])
    krea_emulator.fail_job(ids[1])
    api.delete(f"/jobs/{ids[2]}")
    account = next(a for a in krea_emulator.accounts() if a["account"] == krea_emulator.account)
    assert account["balance_usd"] == pytest.approx(100 - 0.007)
    assert account["reserved_usd"] == 0
    stats = krea_emulator.stats()
    assert (stats["jobs_billed"], stats["billed_usd"]) == (1, pytest.approx(0.007))
