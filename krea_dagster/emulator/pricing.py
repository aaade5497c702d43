"""The USD price of one job, computed from the catalog's ``price`` entry and the request.

Money is held in integer micro-dollars so that balances, reservations and the billed total add
up exactly. A point of ``price.points`` applies when every condition of its ``when`` that the
request can answer matches (conditions about parameters the model does not have are ignored);
the first such point wins, else the base ``price.usd``. A model with no price at all (the
document and the facts page give none, e.g. the Topaz enhance models) costs
:data:`DEFAULT_PRICE_USD`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from krea_dagster.emulator.catalog import ModelSpec
from krea_dagster.emulator.errors import PaymentRequired
from krea_dagster.emulator.records import Account

DEFAULT_PRICE_USD = 0.01
MICROS_PER_USD = 1_000_000


def usd_to_micros(usd: float) -> int:
    """Dollars to integer micro-dollars."""
    return round(usd * MICROS_PER_USD)


def micros_to_usd(micros: int) -> float:
    """Integer micro-dollars to dollars (rounded to the micro-dollar)."""
    return round(micros / MICROS_PER_USD, 6)


def _yes_no(flag: bool) -> str:
    return "Yes" if flag else "No"


def _param(spec: ModelSpec, body: dict[str, Any], name: str) -> Any:
    return body.get(name, spec.default(name))


# Each price condition name -> (the field it needs, how to compute its value from the body).
_CONDITIONS: dict[str, tuple[str, Callable[[ModelSpec, dict[str, Any]], str]]] = {
    "Resolution": ("resolution", lambda s, b: str(_param(s, b, "resolution"))),
    "Mode": ("mode", lambda s, b: str(_param(s, b, "mode"))),
    "Reference Images": ("style_images", lambda s, b: str(len(b.get("style_images") or []))),
    "Character Reference": (
        "character_reference_images",
        lambda s, b: _yes_no(bool(b.get("character_reference_images"))),
    ),
    "Duration": ("duration", lambda s, b: f"{_param(s, b, 'duration')}s"),
    "Audio": ("generate_audio", lambda s, b: _yes_no(bool(_param(s, b, "generate_audio")))),
    "LoRA": ("styles", lambda s, b: _yes_no(bool(b.get("styles") or b.get("has_lora")))),
    "Video Reference": ("video_reference", lambda s, b: _yes_no(bool(b.get("video_reference")))),
}


def _normalise(value: str) -> str:
    # "5.0s" and "5s" are the same duration; JSON numbers may arrive as floats.
    return value.replace(".0s", "s") if value.endswith(".0s") else value


def _matches(spec: ModelSpec, body: dict[str, Any], when: dict[str, str]) -> bool:
    for name, expected in when.items():
        condition = _CONDITIONS.get(name)
        if condition is None or condition[0] not in spec.fields:
            continue
        if _normalise(condition[1](spec, body)) != expected:
            return False
    return True


def price_micros(spec: ModelSpec, body: dict[str, Any]) -> int:
    """The price of one job for this validated request body, in micro-dollars."""
    price = spec.price
    if not price:
        return usd_to_micros(DEFAULT_PRICE_USD)
    for point in price.get("points", []):
        if _matches(spec, body, point["when"]):
            return usd_to_micros(point["usd"])
    return usd_to_micros(price["usd"])


def check_balance(account: Account, prices: list[int]) -> None:
    """402 unless the balance minus live jobs' reservations covers all these jobs together."""
    price = sum(prices)
    available = account.balance_micros - account.reserved_micros
    if available < price:
        what = "this job costs" if len(prices) == 1 else f"these {len(prices)} jobs cost"
        raise PaymentRequired(
            f"insufficient API balance: {what} ${micros_to_usd(price)} but only "
            f"${micros_to_usd(max(available, 0))} is available (balance "
            f"${micros_to_usd(account.balance_micros)} minus ${micros_to_usd(account.reserved_micros)} "
            "reserved by live jobs); top up your API balance at https://krea.ai/settings/api-tokens"
        )
