"""Serve the API app and the CDN app with uvicorn on one event loop, on two ports.

Sockets are bound (port 0 = a free port) before anything runs, so the URLs are known up front
and a client connecting early just waits in the listen backlog. uvicorn runs with httptools and
uvloop when they are installed and without access logs; signal handling belongs to the caller
(the CLI installs SIGINT/SIGTERM handlers, the test helpers call :meth:`EmulatorServer.stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Literal

import uvicorn

from krea_dagster.emulator.admin import DEFAULT_ADMIN_TOKEN
from krea_dagster.emulator.app import create_app, create_cdn_app
from krea_dagster.emulator.state import EmulatorState

LISTEN_BACKLOG = 2048
HTTP_IMPL = "httptools" if importlib.util.find_spec("httptools") else "h11"


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class DropNoiseFilter(logging.Filter):
    """Hide uvicorn's complaint about the response the accept-then-drop fault leaves unfinished."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


def quiet_dropped_responses() -> None:
    """Install :class:`DropNoiseFilter` on uvicorn's error logger (once)."""
    error_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DropNoiseFilter) for f in error_logger.filters):
        error_logger.addFilter(DropNoiseFilter())


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when available, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a uvicorn[standard] dependency
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine function to completion on a fresh (uv)loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())


class EmulatorServer:
    """The two uvicorn servers of one emulator state."""

    def __init__(
        self,
        state: EmulatorState,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        admin_token: str = DEFAULT_ADMIN_TOKEN,
        log_level: str = "warning",
    ) -> None:
        self.state = state
        self.admin_token = admin_token
        quiet_dropped_responses()
        self._api_socket, self._cdn_socket = bind(host, port), bind(host, cdn_port)
        self.base_url, self.cdn_url = url_of(self._api_socket), url_of(self._cdn_socket)
        state.cdn_url = self.cdn_url
        self._servers = [
            _Server(self._config(create_app(state, admin_token=admin_token), "on", log_level)),
            _Server(self._config(create_cdn_app(state), "off", log_level)),
        ]

    @staticmethod
    def _config(app: Any, lifespan: Literal["on", "off"], log_level: str) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            http=HTTP_IMPL,
            ws="none",
            lifespan=lifespan,
            access_log=False,
            log_level=log_level,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
            # The app writes Date from the emulator's clock (``clock_offset_seconds``).
            date_header=False,
        )

    @property
    def ports(self) -> tuple[int, int]:
        """(API port, CDN port)."""
        return self._api_socket.getsockname()[1], self._cdn_socket.getsockname()[1]

    def info(self, token: str) -> dict[str, str]:
        """What a client needs: the two origins and the two tokens."""
        return {
            "base_url": self.base_url,
            "cdn_url": self.cdn_url,
            "token": token,
            "admin_token": self.admin_token,
        }

    async def serve(self) -> None:
        """Serve until :meth:`stop`; then shut both servers down and close the state."""
        try:
            await asyncio.gather(
                self._servers[0].serve(sockets=[self._api_socket]),
                self._servers[1].serve(sockets=[self._cdn_socket]),
            )
        finally:
            self.state.close()

    @property
    def started(self) -> bool:
        """Both servers accept connections."""
        return all(server.started for server in self._servers)

    def stop(self) -> None:
        """Ask both servers to exit (safe from any thread or a signal handler)."""
        for server in self._servers:
            server.should_exit = True
