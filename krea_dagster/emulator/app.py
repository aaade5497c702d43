"""App factories: the Krea API app (with the admin plane) and the CDN app, from one state.

The routes lists below are the whole surface. Each public route has a key such as
``"GET /jobs/{id}"`` used for ``requests_by_route`` and for scoping the latency and 5xx faults;
admin routes are counted under ``admin_requests_by_route`` and never get faults; CDN downloads
count as ``cdn_downloads`` and get latency/5xx faults only when ``latency_routes`` or
``error_5xx_routes`` names them (``"CDN"`` for both CDN routes, or a full key such as
``"CDN GET /results/{job_id}/{name}"``). Requests to no route count as ``"unmatched"``.

The accept-then-drop fault creates the job (every job of a node-app execute), then starts a 200
response announcing a body it never sends and returns: uvicorn closes the connection, so the
client sees a transport error (``httpx.RemoteProtocolError``) at once instead of waiting for a
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from krea_dagster.emulator import admin, cdn, handlers
from krea_dagster.emulator.errors import DropConnection, EmulatorError, InjectedServerError
from krea_dagster.emulator.images import RenderCache
from krea_dagster.emulator.state import EmulatorState
from krea_dagster.emulator.webhooks import WebhookDispatcher

Handler = Callable[[Request, EmulatorState], Awaitable[Response]]
TICK_SECONDS = 0.02  # background advance period: webhooks and backlog move without polling

API_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/openapi.json", handlers.openapi),
    ("POST", "/generate/image/{provider}/{model:path}", handlers.generate),
    ("POST", "/generate/enhance/{provider}/{model:path}", handlers.generate),
    ("POST", "/generate/video/{provider}/{model:path}", handlers.generate),
    ("GET", "/node-apps/{id}", handlers.get_node_app),
    ("POST", "/node-apps/{id}/execute", handlers.execute_node_app),
    ("GET", "/jobs", handlers.list_jobs),
    ("GET", "/jobs/{id}", handlers.get_job),
    ("DELETE", "/jobs/{id}", handlers.delete_job),
    ("POST", "/assets", handlers.upload_asset),
    ("GET", "/assets", handlers.list_assets),
    ("GET", "/assets/{id}", handlers.get_asset),
    ("DELETE", "/assets/{id}", handlers.delete_asset),
]

ADMIN_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/_emulator/stats", admin.stats),
    ("POST", "/_emulator/reset", admin.reset),
    ("GET", "/_emulator/config", admin.get_config),
    ("PATCH", "/_emulator/config", admin.patch_config),
    ("POST", "/_emulator/accounts", admin.create_account),
    ("GET", "/_emulator/accounts", admin.list_accounts),
    ("PATCH", "/_emulator/accounts/{account}", admin.patch_account),
    ("GET", "/_emulator/jobs/{id}", admin.get_job),
    ("GET", "/_emulator/node-app-executions", admin.node_app_executions),
    ("POST", "/_emulator/jobs/{id}/complete", admin.complete_job),
    ("POST", "/_emulator/jobs/{id}/fail", admin.fail_job),
]

CDN_ROUTES: list[
    tuple[str, str, Callable[[Request, EmulatorState, RenderCache], Awaitable[Response]]]
] = [
    ("GET", "/results/{job_id}/{name}", cdn.result_file),
    ("GET", "/assets/{name}", cdn.asset_file),
]


def route_key(method: str, path: str, origin: str = "") -> str:
    """``"POST /generate/image/{provider}/{model}"`` from a route's method and path."""
    return f"{origin}{method} {path.replace(':path}', '}')}"


class DroppedResponse(Response):
    """Starts a response that announces a body and never sends it (accept-then-drop)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


def _error_response(error: EmulatorError) -> Response:
    return JSONResponse(error.to_json(), error.status_code)


async def _inject(state: EmulatorState, key: str, explicit: bool = False) -> None:
    delay = state.faults.latency_seconds(key, explicit)
    if delay:
        await asyncio.sleep(delay)
    status = state.faults.server_error(key, explicit)
    if status:
        raise InjectedServerError(f"injected server error ({status})", status)


Endpoint = Callable[[Request], Awaitable[Response]]


def _api_endpoint(
    state: EmulatorState, key: str, handler: Handler, after: Callable[[], None]
) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        state.count_request(key)
        try:
            await _inject(state, key)
            response = await handler(request, state)
        except EmulatorError as error:
            response = _error_response(error)
        except DropConnection:
            return DroppedResponse()
        finally:
            after()
        # Krea's own clock, like every HTTP server's Date (the server's is switched off).
        response.headers["date"] = formatdate(state.clock(), usegmt=True)
        return response

    return endpoint


def _admin_endpoint(state: EmulatorState, key: str, handler: Handler, admin_token: str) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        state.count_request(key, admin=True)
        try:
            admin.check_admin(request, admin_token)
            return await handler(request, state)
        except EmulatorError as error:
            return _error_response(error)

    return endpoint


def _not_found(state: EmulatorState) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        state.count_request("unmatched")
        status = getattr(exc, "status_code", 404)
        detail = getattr(exc, "detail", "Not Found")
        return JSONResponse({"error": f"{request.method} {request.url.path}: {detail}"}, status)

    return handle


def create_app(state: EmulatorState, *, admin_token: str = admin.DEFAULT_ADMIN_TOKEN) -> Starlette:
    """The Krea API app; its lifespan runs the background tick and the webhook dispatcher."""
    dispatcher = WebhookDispatcher(state)

    def after_request() -> None:
        dispatcher.drain()

    async def tick() -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            state.advance()
            dispatcher.drain()
            state.flush_counters()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ticker = asyncio.get_running_loop().create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await dispatcher.close()
            state.flush_counters(force=True)

    routes = [
        Route(path, _api_endpoint(state, route_key(m, path), h, after_request), methods=[m])
        for m, path, h in API_ROUTES
    ] + [
        Route(path, _admin_endpoint(state, route_key(m, path), h, admin_token), methods=[m])
        for m, path, h in ADMIN_ROUTES
    ]
    not_found = _not_found(state)
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found}
    )
    app.state.emulator = state
    app.state.webhooks = dispatcher
    return app


def create_cdn_app(state: EmulatorState, cache: RenderCache | None = None) -> Starlette:
    """The CDN app: result files and assets, no auth."""
    files = cache or RenderCache()

    def endpoint(
        key: str, handler: Callable[[Request, EmulatorState, RenderCache], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            try:
                await _inject(state, key, explicit=True)
                return await handler(request, state, files)
            except EmulatorError as error:
                return _error_response(error)

        return serve

    routes = [
        Route(path, endpoint(route_key(m, path, "CDN "), h), methods=[m])
        for m, path, h in CDN_ROUTES
    ]
    not_found = _not_found(state)
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.emulator = state
    return app
