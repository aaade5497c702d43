"""Thin handlers of the public Krea API: parse the request, call the state, serialize.

Every handler takes ``(request, state)``; ``app.py`` wraps it with request counting, fault
injection and error rendering. Query-string errors are 400s worded like body errors, e.g.
``query.limit: 0 is less than the minimum of 1 (minimum)``. Unknown query parameters are a
400 as well (``query.limits: unknown query parameter 'limits'``): Krea documents none, and a
silently ignored typo such as ``statuses=`` would return unfiltered pages to a client.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from krea_dagster.emulator import assets, views
from krea_dagster.emulator.clock import format_micros, parse_timestamp
from krea_dagster.emulator.errors import (
    BadRequest,
    DropConnection,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from krea_dagster.emulator.lifecycle import JobStatus
from krea_dagster.emulator.records import Account
from krea_dagster.emulator.state import EmulatorState

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STATUS_VALUES = [status.value for status in JobStatus]


def authenticate(request: Request, state: EmulatorState) -> Account:
    """The account of ``Authorization: Bearer <id>:<secret>`` (401 otherwise)."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized(
            "missing Authorization header; send 'Authorization: Bearer <id>:<secret>'"
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <id>:<secret>'")
    if ":" not in token:
        raise Unauthorized("malformed API token: expected '<id>:<secret>'")
    account = state.by_token.get(token)
    if account is None:
        raise Unauthorized("invalid API token")
    return account


def check_query(request: Request, allowed: tuple[str, ...]) -> None:
    """400 naming every query parameter the operation does not document."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise BadRequest(
            "; ".join(
                f"query.{name}: unknown query parameter {name!r} (additionalProperties: false)"
                for name in unknown
            )
        )


def parse_limit(request: Request) -> int:
    """``limit`` in 1-1000, default 100."""
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"query.limit: {raw!r} is not of type 'integer' (type)") from None
    if limit < 1:
        raise BadRequest(f"query.limit: {limit} is less than the minimum of 1 (minimum)")
    if limit > MAX_LIMIT:
        raise BadRequest(
            f"query.limit: {limit} is greater than the maximum of {MAX_LIMIT} (maximum)"
        )
    return limit


def parse_cursor(request: Request) -> int | None:
    """``cursor`` as epoch microseconds (an ISO 8601 date-time), or None."""
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    try:
        return parse_timestamp(raw)
    except (ValueError, OverflowError):
        raise BadRequest(f"query.cursor: {raw!r} is not a valid 'date-time' (format)") from None


def _webhook_url(request: Request) -> str | None:
    url = request.headers.get("x-webhook-url")
    if url is None:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest(f"header X-Webhook-URL: {url!r} is not an absolute http(s) URL (format)")
    return url.strip()


async def openapi(request: Request, state: EmulatorState) -> Response:
    """``GET /openapi.json``: Krea's document, public like the real one, with an ETag (a
    request whose ``If-None-Match`` names it is answered 304 Not Modified)."""
    document = state.documents.get(state.config.openapi)
    headers = {"ETag": document.etag}
    if document.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(document.text, media_type="application/json", headers=headers)


def _check_rate_limit(state: EmulatorState, account: Account) -> None:
    """The injected 429s of a job-creating POST (``error_429_rate``, ``burst_429_*``)."""
    rate_limited = state.faults.rate_limited()
    if rate_limited:
        raise TooManyRequests(
            f"You have reached the maximum number of concurrent jobs ({account.concurrency}); "
            f"slow down and retry (injected {rate_limited})"
        )


async def _json_body(request: Request, required: list[str]) -> Any:
    """The parsed JSON body (400 when it is missing or not JSON, naming ``required``)."""
    raw = await request.body()
    if not raw.strip():
        raise BadRequest(
            f"request body is missing: send a JSON object (required fields: {', '.join(required)})"
        )
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None


def _zero_data_retention(request: Request) -> bool:
    return request.headers.get("x-api-zero-data-retention", "").strip().lower() in ("1", "true")


async def generate(request: Request, state: EmulatorState) -> Response:
    """``POST /generate/{kind}/{provider}/{model}``: validate, bill-check and create a job."""
    account = authenticate(request, state)
    _check_rate_limit(state, account)
    kind = request.url.path.split("/")[2]
    params = request.path_params
    model_key = f"{kind}/{params['provider']}/{params['model']}"
    spec = state.documents.get(state.config.openapi).models.get(model_key)
    if spec is None:
        raise NotFound(f"unknown model '{model_key}': no such path /generate/{model_key}")
    webhook_url = _webhook_url(request)
    body = await _json_body(request, spec.request_schema.get("required", []))
    zdr = _zero_data_retention(request)
    job = state.submit(account, spec, body, webhook_url, zero_data_retention=zdr)
    if state.faults.drop_after_accept():
        raise DropConnection(job.id)
    return JSONResponse(views.created_json(job))


async def get_node_app(request: Request, state: EmulatorState) -> Response:
    """``GET /node-apps/{id}``: the node-app version's public object."""
    authenticate(request, state)
    return JSONResponse(state.node_app(request.path_params["id"]).public)


async def execute_node_app(request: Request, state: EmulatorState) -> Response:
    """``POST /node-apps/{id}/execute``: one job per step, created together (or none)."""
    account = authenticate(request, state)
    _check_rate_limit(state, account)
    app = state.node_app(request.path_params["id"])
    body = await _json_body(request, app.input_schema.get("required", []))
    jobs = state.execute(account, app, body, zero_data_retention=_zero_data_retention(request))
    if state.faults.drop_after_accept():
        raise DropConnection(",".join(job.id for job in jobs))
    return JSONResponse([views.job_json(job, state.cdn_url) for job in jobs])


async def get_job(request: Request, state: EmulatorState) -> Response:
    """``GET /jobs/{id}``."""
    account = authenticate(request, state)
    return JSONResponse(
        views.job_json(state.own_job(account, request.path_params["id"]), state.cdn_url)
    )


async def delete_job(request: Request, state: EmulatorState) -> Response:
    """``DELETE /jobs/{id}``: cancel (a no-op answering the job on a terminal one)."""
    account = authenticate(request, state)
    return JSONResponse(
        views.job_json(state.cancel(account, request.path_params["id"]), state.cdn_url)
    )


async def list_jobs(request: Request, state: EmulatorState) -> Response:
    """``GET /jobs``: newest first, time cursor, ``limit``, ``status`` and ``types`` filters."""
    account = authenticate(request, state)
    check_query(request, ("cursor", "limit", "types", "status"))
    limit, cursor = parse_limit(request), parse_cursor(request)
    raw_status = request.query_params.get("status")
    if raw_status is not None and raw_status not in STATUS_VALUES:
        raise BadRequest(f"query.status: {raw_status!r} is not one of {STATUS_VALUES} (enum)")
    raw_types = request.query_params.get("types")
    types = {t.strip() for t in raw_types.split(",") if t.strip()} if raw_types else None
    status = JobStatus(raw_status) if raw_status else None
    page, next_cursor = state.list_jobs(account, cursor, limit, status, types or None)
    return JSONResponse(
        {
            "items": [views.job_json(job, state.cdn_url) for job in page],
            "next_cursor": format_micros(next_cursor) if next_cursor is not None else None,
        }
    )


async def upload_asset(request: Request, state: EmulatorState) -> Response:
    """``POST /assets``: multipart ``file`` (+ ``description``)."""
    account = authenticate(request, state)
    declared = int(request.headers.get("content-length") or 0)
    if declared > assets.MAX_ASSET_BYTES + 1024 * 1024:
        raise BadRequest(f"upload is {declared} bytes; the maximum file size is 75MB")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("expected multipart/form-data with a 'file' field")
    async with request.form(max_files=1, max_fields=8) as form:
        upload, description = form.get("file"), form.get("description")
        if not isinstance(upload, UploadFile):
            raise BadRequest("body.file: required field 'file' is missing (required)")
        data = await upload.read(assets.MAX_ASSET_BYTES + 1)
        text = description if isinstance(description, str) else None
        asset = assets.upload(state, account, data, upload.filename, text)
    if state.faults.drop_after_upload():
        raise DropConnection(asset.id)
    return JSONResponse(assets.asset_json(state, asset))


async def list_assets(request: Request, state: EmulatorState) -> Response:
    """``GET /assets``: newest first with a time cursor."""
    account = authenticate(request, state)
    check_query(request, ("cursor", "limit"))
    page, next_cursor = assets.list_page(
        state, account, parse_cursor(request), parse_limit(request)
    )
    return JSONResponse(
        {
            "items": [assets.asset_json(state, asset) for asset in page],
            "next_cursor": format_micros(next_cursor) if next_cursor is not None else None,
        }
    )


async def get_asset(request: Request, state: EmulatorState) -> Response:
    """``GET /assets/{id}``."""
    account = authenticate(request, state)
    asset = assets.own_asset(state, account, request.path_params["id"])
    return JSONResponse(assets.asset_json(state, asset))


async def delete_asset(request: Request, state: EmulatorState) -> Response:
    """``DELETE /assets/{id}``."""
    account = authenticate(request, state)
    assets.delete(state, account, request.path_params["id"])
    return JSONResponse({"success": True, "message": "Asset deleted"})
