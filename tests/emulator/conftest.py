"""Fixtures of the emulator tests: the plugin's ``krea_emulator``, clients and a webhook sink.

The plugin fixtures are imported here so the suite works whether or not the package's pytest11
entry point is installed (a conftest fixture overrides a plugin fixture of the same name).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from krea_dagster.emulator import pytest_plugin
from krea_dagster.emulator.testing import EmulatorHandle

krea_emulator_session = pytest_plugin.krea_emulator_session
krea_emulator = pytest_plugin.krea_emulator

TEST_MODEL_PATH = "/generate/image/bfl/flux-1-dev"
TEST_SLOW_MODEL_PATH = "/generate/image/openai/gpt-image-2"
SAMPLE_BODY: dict[str, Any] = {"prompt": "a lighthouse at dawn", "width": 512, "height": 512}


def make_body(**changes: Any) -> dict[str, Any]:
    """SAMPLE_BODY with some fields changed (None removes a field)."""
    body = {**SAMPLE_BODY, **changes}
    return {key: value for key, value in body.items() if value is not None}


@pytest.fixture
def api(krea_emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    """An httpx client of the main account on the reset session emulator."""
    with krea_emulator.client() as client:
        yield client


@dataclass
class WebhookSink:
    """A loopback HTTP server recording the webhook POSTs it receives."""

    url: str
    fail_first: int = 0  # answer 500 to this many requests first
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    attempts: int = 0
    event: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block until ``count`` deliveries arrived (AssertionError otherwise)."""
        with self.event:
            done = self.event.wait_for(lambda: len(self.received) >= count, timeout)
        assert done, f"expected {count} webhook deliveries, got {len(self.received)}"
        return self.received


@contextlib.contextmanager
def serve_webhook_sink() -> Iterator[WebhookSink]:
    """A webhook receiver on 127.0.0.1 (``sink.url``), optionally failing its first requests."""
    sink = WebhookSink(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with sink.event:
                sink.attempts += 1
                if sink.attempts <= sink.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                sink.received.append(json.loads(body))
                sink.headers.append({k.lower(): v for k, v in self.headers.items()})
                sink.event.notify_all()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    """A fresh webhook receiver for one test."""
    with serve_webhook_sink() as sink:
        yield sink
