"""The control plane under ``/_emulator/``, guarded by its own admin token.

Routes (all JSON, ``Authorization: Bearer <admin_token>``; API tokens are refused):

- ``GET /_emulator/stats``: counters (see ``counters.py``) plus live figures.
- ``POST /_emulator/reset``: clear jobs, assets and counters and restore each account's initial
  balance; body ``{"config": true}`` also restores the startup knobs and ``{"accounts": true}``
  also drops run-time accounts and restores the startup ones' settings.
- ``GET /_emulator/config`` and ``PATCH /_emulator/config`` (a JSON object of knobs).
- ``POST /_emulator/accounts`` ``{token?, concurrency?, backlog?, balance_usd?}`` -> the account,
  with its token; ``GET /_emulator/accounts`` -> ``{"items": [...]}``.
- ``PATCH /_emulator/accounts/{account}`` ``{balance_usd?, add_usd?, concurrency?, backlog?}``
  (``account`` is the id part of the token).
- ``GET /_emulator/jobs/{id}``: any account's job with its account, model, price, body and
  ``inputs`` (each media input's field, kind and content hash, see ``inputs.py``); a node-app
  job also names its ``node_app_id``, ``execution_id`` (shared by the jobs of one execute) and
  ``step`` (null on ``POST /generate`` jobs).
- ``GET /_emulator/node-app-executions``: ``{"items": [{execution_id, node_app_id, account,
  created_at, job_ids}]}``, every accepted node-app execute (a dropped answer included) with
  its jobs in step order, oldest first: how a test counts the jobs of each execute.
- ``POST /_emulator/jobs/{id}/complete`` and ``POST /_emulator/jobs/{id}/fail``
  ``{code?, message?}``: force the outcome of a non-terminal job now.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from krea_dagster.emulator import views
from krea_dagster.emulator.clock import format_micros
from krea_dagster.emulator.errors import BadRequest, Unauthorized
from krea_dagster.emulator.lifecycle import JobStatus
from krea_dagster.emulator.pricing import micros_to_usd
from krea_dagster.emulator.state import EmulatorState

DEFAULT_ADMIN_TOKEN = "krea-emulator-admin"


def check_admin(request: Request, admin_token: str) -> None:
    """401 unless the request carries the admin token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), admin_token):
        raise Unauthorized("the emulator admin API needs 'Authorization: Bearer <admin_token>'")


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def _optional(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value: Any = data.get(name)
    if value is None:
        return None
    wrong = isinstance(value, bool) or not isinstance(value, kind)
    if wrong or (not isinstance(value, str) and value < 0):
        raise BadRequest(f"{name} must be a non-negative {getattr(kind, '__name__', 'number')}")
    return value


async def stats(request: Request, state: EmulatorState) -> Response:
    """Counters and live figures."""
    return JSONResponse(state.stats())


async def reset(request: Request, state: EmulatorState) -> Response:
    """Clear activity (and optionally config and accounts)."""
    data = await _json_object(request)
    state.reset(config=bool(data.get("config")), accounts=bool(data.get("accounts")))
    return JSONResponse({"reset": True, "config": state.config.to_dict()})


async def get_config(request: Request, state: EmulatorState) -> Response:
    """The current knobs."""
    return JSONResponse(state.config.to_dict())


async def patch_config(request: Request, state: EmulatorState) -> Response:
    """Change knobs; unknown names or bad values are a 400 and change nothing."""
    data = await _json_object(request)
    candidate = state.config.copy()
    candidate.update(data)
    state.config.update(data)
    return JSONResponse(state.config.to_dict())


async def create_account(request: Request, state: EmulatorState) -> Response:
    """A new account (random token unless one is given)."""
    data = await _json_object(request)
    account = state.add_account(
        token=_optional(data, "token", str),
        concurrency=_optional(data, "concurrency", int),
        backlog=_optional(data, "backlog", int),
        balance_usd=_optional(data, "balance_usd", (int, float)),
    )
    return JSONResponse(views.account_json(account))


async def list_accounts(request: Request, state: EmulatorState) -> Response:
    """Every account."""
    state.advance()
    return JSONResponse({"items": [views.account_json(a) for a in state.accounts.values()]})


async def patch_account(request: Request, state: EmulatorState) -> Response:
    """Set or add balance, change concurrency or backlog."""
    data = await _json_object(request)
    add_usd = data.get("add_usd")
    if add_usd is not None and (isinstance(add_usd, bool) or not isinstance(add_usd, int | float)):
        raise BadRequest("add_usd must be a number")
    account = state.update_account(
        request.path_params["account"],
        balance_usd=_optional(data, "balance_usd", (int, float)),
        add_usd=add_usd,
        concurrency=_optional(data, "concurrency", int),
        backlog=_optional(data, "backlog", int),
    )
    return JSONResponse(views.account_json(account))


async def get_job(request: Request, state: EmulatorState) -> Response:
    """Any account's job with internal details."""
    state.advance()
    job = state.jobs.get(request.path_params["id"])
    if job is None:
        return JSONResponse({"error": "job not found"}, 404)
    data = views.job_json(job, state.cdn_url)
    data.update(
        account=job.account_id,
        model=job.model_key,
        price_usd=micros_to_usd(job.price_micros),
        request=job.body,
        width=job.width,
        height=job.height,
        outcome=job.outcome.kind,
        inputs=job.inputs,
        node_app_id=job.node_app_id,
        execution_id=job.execution_id,
        step=job.step,
        poster_url=views.poster_url(job, state.cdn_url) if job.result_token else None,
    )
    return JSONResponse(data)


async def node_app_executions(request: Request, state: EmulatorState) -> Response:
    """Every accepted node-app execute with its jobs in step order, oldest first."""
    found: dict[str, dict[str, Any]] = {}
    for job in state.jobs.values():
        if job.execution_id is None:
            continue
        entry = found.setdefault(
            job.execution_id,
            {
                "execution_id": job.execution_id,
                "node_app_id": job.node_app_id,
                "account": job.account_id,
                "created_us": job.created_us,
                "jobs": [],
            },
        )
        entry["jobs"].append((job.step, job.id))
        entry["created_us"] = min(entry["created_us"], job.created_us)
    items = sorted(found.values(), key=lambda entry: entry["created_us"])
    for entry in items:
        entry["job_ids"] = [job_id for _, job_id in sorted(entry.pop("jobs"))]
        entry["created_at"] = format_micros(entry.pop("created_us"))
    return JSONResponse({"items": items})


async def complete_job(request: Request, state: EmulatorState) -> Response:
    """Force a job to complete now (billed like any completed job)."""
    job = state.force(request.path_params["id"], JobStatus.COMPLETED, "", "")
    return JSONResponse(views.job_json(job, state.cdn_url))


async def fail_job(request: Request, state: EmulatorState) -> Response:
    """Force a job to fail now with ``code``/``message`` (default ``internal_error``)."""
    data = await _json_object(request)
    code = str(data.get("code") or "internal_error")
    message = str(data.get("message") or "Job failed (forced through the emulator admin API).")
    job = state.force(request.path_params["id"], JobStatus.FAILED, code, message)
    return JSONResponse(views.job_json(job, state.cdn_url))
