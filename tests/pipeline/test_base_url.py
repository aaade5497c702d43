"""A wrong KREA_BASE_URL fails in seconds, naming the URL and where it came from (issue 20).

Nothing listening, no such host, or a web server that is not Krea's: before the API has ever
answered, these are a setting to fix, not an outage. The jobs step fails at once (no step
retries of a minute each) with a message that names the URL and the variable or setting it
came from, and nothing reached Krea. Once Krea has answered a batch, losing the connection
stays a transient stop that a retry resumes.
"""

import http.server
import threading
from collections.abc import Iterator

import dagster as dg
import pytest
from free_ports import free_port

from krea_dagster import KreaResource
from krea_dagster.engine.errors import BatchStoppedError
from krea_dagster.engine.run import run_coroutine

from .conftest import make_resource, materialize, write_batch

DEMO_KEY = "00000000-0000-4000-8000-000000000000:not-a-real-secret"


def failure(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    event = result.get_step_failure_events()[0]
    data = event.step_failure_data
    message = data.user_failure_data.description if data.user_failure_data else data.error.message
    return event.step_key, message


def retries(result: dg.ExecuteInProcessResult) -> list[str]:
    return [
        event.event_type_value for event in result.all_events if "RETRY" in event.event_type_value
    ]


def test_nothing_listening_at_krea_base_url_fails_at_once_naming_it(
    build, instance, prompts_dir, monkeypatch
):
    """KREA_BASE_URL at a port nothing listens on: the jobs step fails without a retry, and the
    message names the URL and KREA_BASE_URL."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("KREA_BASE_URL", url)
    write_batch(prompts_dir, "b", [{"prompt": "a cat"}])
    result = materialize(build(), "b", instance=instance, krea=KreaResource(api_key=DEMO_KEY))
    assert not result.success
    step, message = failure(result)
    assert step.endswith("jobs") and retries(result) == []
    assert f"the Krea API at {url} (from KREA_BASE_URL) never answered" in message
    assert "Nothing was sent to Krea" in message and "Check KREA_BASE_URL" in message


class NotKrea(http.server.BaseHTTPRequestHandler):
    """A web server that is not Krea's: every path is a 404 page."""

    requests: list[str] = []

    def _answer(self) -> None:
        NotKrea.requests.append(f"{self.command} {self.path}")
        page = b"<html><body><h1>404 Not Found</h1></body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_krea() -> Iterator[str]:
    NotKrea.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotKrea)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_web_server_that_is_not_krea_fails_at_once_naming_the_setting(
    build, instance, prompts_dir, not_krea
):
    """base_url at a server answering 404 pages: no POST, no retry, a message naming it."""
    write_batch(prompts_dir, "b", [{"prompt": "a cat"}, {"prompt": "a dog"}])
    krea = KreaResource(api_key=DEMO_KEY, base_url=not_krea)
    result = materialize(build(), "b", instance=instance, krea=krea)
    assert not result.success
    step, message = failure(result)
    assert step.endswith("jobs") and retries(result) == []
    assert f"the server at {not_krea} (from base_url) is not the Krea API" in message
    assert "404 and text/html" in message and "Check the base_url setting" in message
    # The jobs step's first call (the clock probe before the POST) finds no Krea: no POST.
    assert not [request for request in NotKrea.requests if request.startswith("POST")]


def test_a_backend_that_answered_the_batch_before_is_a_transient_stop(
    build, emulator, krea, instance, prompts_dir
):
    """After Krea answered a batch, an unreachable backend stops it as transient (a retry
    resumes); a batch Krea never answered stops for good."""
    write_batch(prompts_dir, "b", [{"prompt": "a cat"}])
    assets = build()
    assert materialize(assets, "b", instance=instance, krea=krea, roles=("prompts", "jobs")).success
    pipeline = assets.pipeline
    down = make_resource(emulator, base_url=f"http://127.0.0.1:{free_port()}")

    def submit(batch: str, prompts: list[str]) -> BaseException | None:
        write_batch(prompts_dir, batch, [{"prompt": text} for text in prompts])
        table = assets.node.prepare(0, batch).table
        summary = run_coroutine(
            pipeline.submit(
                down, table, batch=batch, regeneration_id=None, run_id=None, log=_Quiet()
            )
        )
        return summary.stopped_by

    mid_batch = submit("b", ["a cat", "a dog"])
    assert isinstance(mid_batch, BatchStoppedError) and mid_batch.transient
    fresh = submit("c", ["a fox"])
    assert isinstance(fresh, BatchStoppedError) and not fresh.transient
    assert "never answered" in str(fresh)
    assert emulator.stats()["jobs_created"] == 1


class _Quiet:
    def info(self, message: str) -> None:
        pass

    warning = error = debug = info
