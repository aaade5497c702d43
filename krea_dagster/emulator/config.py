"""Emulator knobs: timing, faults and default account settings.

The same names are used by the CLI flags (``--error-5xx-rate``), the JSON ``--config`` file
(``{"error_5xx_rate": 0.1}``), ``PATCH /_emulator/config`` and ``run_emulator(**knobs)``.

Every fault is drawn from its own ``random.Random`` stream seeded from ``seed`` and the fault
name, so a run is reproducible for a given seed and request order, and turning one fault on
does not shift the draws of another. Changing ``time_scale`` or ``render_seconds`` at run time
affects jobs created afterwards; jobs already accepted keep the timing they were given.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krea_dagster.emulator.errors import BadRequest

DEFAULT_JOB_FAILURES: tuple[tuple[str, str], ...] = (
    ("safety_filter", "The output was blocked by the safety filter."),
    ("nsfw", "The prompt or the output was flagged as NSFW by moderation."),
    ("internal_error", "The provider failed to generate the output."),
)

RATE_KNOBS = (
    "error_5xx_rate",
    "accept_then_drop_rate",
    "upload_accept_then_drop_rate",
    "error_429_rate",
    "job_failure_rate",
    "stuck_rate",
    "webhook_duplicate_rate",
)


@dataclass
class EmulatorConfig:
    """All run-time knobs (see the module docstring for how they are set)."""

    seed: int = 0
    # Latency and 5xx apply to the public API routes, or only to the routes listed (a route key
    # such as "POST /generate/image/{provider}/{model}" or a prefix of one, e.g. "POST /generate").
    latency_ms: float = 0.0
    latency_routes: list[str] = field(default_factory=list)
    error_5xx_rate: float = 0.0
    error_5xx_routes: list[str] = field(default_factory=list)
    # POST /generate and POST /node-apps/{id}/execute (which creates or refuses all its jobs).
    accept_then_drop_rate: float = 0.0
    error_429_rate: float = 0.0
    burst_429_every: int = 0  # every N-th of those POSTs starts a burst ...
    burst_429_length: int = 0  # ... of M answers 429 (that POST included)
    # POST /assets only: store the upload, then drop the connection without an answer.
    upload_accept_then_drop_rate: float = 0.0
    # Job outcomes, drawn when the job is created.
    job_failure_rate: float = 0.0
    job_failures: list[list[str]] = field(
        default_factory=lambda: [list(pair) for pair in DEFAULT_JOB_FAILURES]
    )
    stuck_rate: float = 0.0
    # Webhooks.
    webhook_duplicate_rate: float = 0.0
    webhook_delay_seconds: float = 0.0
    webhook_max_attempts: int = 4
    webhook_retry_seconds: float = 0.5  # first backoff; doubles on each attempt
    webhook_timeout_seconds: float = 5.0
    # Timing: render time = avg_seconds (or the per-kind default) x time_scale, unless
    # render_seconds fixes it for every job. The automatic timeouts are scaled by time_scale.
    time_scale: float = 1.0
    render_seconds: float | None = None
    # Seconds Krea's clock is ahead of the real one (negative: behind). Every created_at,
    # completed_at and Date header reads the shifted clock, like a server whose clock is off.
    clock_offset_seconds: float = 0.0
    # The emulator's "today" (ISO date) for alias sunsets; None = the clock's UTC date.
    today: str | None = None
    # A JSON file of node apps served besides the built-in ones (see node_apps.py).
    node_apps: str | None = None
    # An OpenAPI document (a JSON file) served at GET /openapi.json instead of the bundled one;
    # its POST /generate operations are the models served (see catalog.py).
    openapi: str | None = None
    # Settings of accounts created without explicit values (the CLI --token accounts included);
    # changing them at run time affects accounts created afterwards (and the startup accounts
    # on a reset with accounts=true); PATCH /_emulator/accounts/{account} changes an existing one.
    concurrency: int = 8
    backlog: int = 64
    balance_usd: float = 100.0

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` after checking names, types and ranges (BadRequest otherwise)."""
        checked = {name: _coerce(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)
        if self.burst_429_every and self.burst_429_length > self.burst_429_every:
            raise BadRequest("burst_429_length must not exceed burst_429_every")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready knobs."""
        return dataclasses.asdict(self)

    def copy(self) -> EmulatorConfig:
        """An independent copy (lists included)."""
        return EmulatorConfig(**json.loads(json.dumps(self.to_dict())))

    @classmethod
    def from_file(cls, path: str | Path) -> EmulatorConfig:
        """Knobs from a JSON object file; unknown names are an error."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise BadRequest(f"{path}: the config file must hold a JSON object")
        config = cls()
        config.update(data)
        return config


_FIELDS = {f.name: f for f in dataclasses.fields(EmulatorConfig)}


def knob_names() -> list[str]:
    """Every knob name, in declaration order."""
    return list(_FIELDS)


def _coerce(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        raise BadRequest(f"unknown config knob {name!r}; known knobs: {', '.join(_FIELDS)}")
    default = _FIELDS[name].default
    if name in ("render_seconds", "today", "node_apps", "openapi"):
        if value is None:
            return None
        if name == "node_apps":
            return _node_apps_file(value)
        if name == "openapi":
            return _openapi_file(value)
        return _positive(name, value) if name == "render_seconds" else _iso_date(value)
    if name in ("latency_routes", "error_5xx_routes"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"{name} must be a list of route strings")
        return list(value)
    if name == "job_failures":
        return _failures(value)
    if isinstance(default, bool) or isinstance(value, bool):
        raise BadRequest(f"{name} must be a number, not {value!r}")
    if name == "clock_offset_seconds":
        if not isinstance(value, int | float):
            raise BadRequest(f"{name} must be a number of seconds, not {value!r}")
        return float(value)
    if isinstance(default, int):
        if not isinstance(value, int) or value < 0:
            raise BadRequest(f"{name} must be a non-negative integer, not {value!r}")
        return value
    if not isinstance(value, int | float) or value < 0:
        raise BadRequest(f"{name} must be a non-negative number, not {value!r}")
    if name in RATE_KNOBS and value > 1:
        raise BadRequest(f"{name} is a probability between 0 and 1, not {value!r}")
    if name == "time_scale" and value == 0:
        raise BadRequest("time_scale must be greater than 0")
    return float(value)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequest(f"{name} must be a positive number or null, not {value!r}")
    return float(value)


def _iso_date(value: Any) -> str:
    from datetime import date

    try:
        return date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise BadRequest(f"today must be an ISO date like 2026-06-18, not {value!r}") from None


def _node_apps_file(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"node_apps must be the path of a JSON file or null, not {value!r}")
    from krea_dagster.emulator.node_apps import load_apps  # needs jsonschema (the server stack)

    load_apps(value)  # a bad file is refused now, with the fault named, not at the first request
    return value


def _openapi_file(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"openapi must be the path of a JSON file or null, not {value!r}")
    from krea_dagster.emulator.catalog import load_document

    load_document(value)  # a bad file is refused now, with the fault named
    return value


def _failures(value: Any) -> list[list[str]]:
    pairs: list[list[str]] = []
    for item in value if isinstance(value, list) else [None]:
        if isinstance(item, str):
            item = [item, f"Injected failure: {item}"]
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(part, str) for part in item)
        ):
            raise BadRequest("job_failures must be a non-empty list of [code, message] pairs")
        pairs.append([item[0], item[1]])
    if not pairs:
        raise BadRequest("job_failures must be a non-empty list of [code, message] pairs")
    return pairs
