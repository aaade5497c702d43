"""Hostile or broken answers raise a ``KreaError`` that says what was wrong, sync and async.

Krea's answers are small JSON documents. A body that is not one (a 500,000-character job id, a
document nested 100,000 levels deep, an endless body, an integer of 5,000 digits) must end the
call with a typed error that names the problem, never ``RecursionError``, httpx's
``InvalidURL`` or a process that reads forever; both clients share one request core, and each
case runs through both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from krea_dagster.api import (
    AmbiguousSubmitError,
    InvalidIdentifierError,
    KreaError,
    MalformedPayloadError,
    NotFoundError,
)
from krea_dagster.api.config import MAX_ANSWER_BYTES

from .support import (
    TEST_JOB_ID,
    FakeClock,
    FakeKrea,
    make_async_client,
    make_client,
    make_job,
)

JOB_PATH = f"/jobs/{TEST_JOB_ID}"
CHUNK = 1024 * 1024


def call(mode: str, fake: FakeKrea, operation: Callable[[Any], Any]) -> Any:
    """Run ``operation(client)`` on a sync or an async client over the same fake Krea."""
    clock = FakeClock()
    if mode == "sync":
        with make_client(fake, clock) as krea:
            return operation(krea)

    async def main() -> Any:
        async with make_async_client(fake, clock) as krea:
            result = operation(krea)
            return await result if asyncio.iscoroutine(result) else result

    return asyncio.run(main())


def nested(depth: int) -> bytes:
    """A job whose ``result`` holds lists nested ``depth`` levels deep."""
    job = json.dumps(make_job(status="completed")).encode()
    return job[:-1] + b', "extra": ' + b"[" * depth + b"]" * depth + b"}"


MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("depth", [100, 100_000], ids=["under-the-recursion-limit", "far-over"])
def test_a_deeply_nested_job_is_a_malformed_payload(mode: str, depth: int) -> None:
    """GET /jobs/{id} answering a document nested too deep raises MalformedPayloadError."""
    fake = FakeKrea().on("GET", JOB_PATH, httpx.Response(200, content=nested(depth)))
    with pytest.raises(MalformedPayloadError, match="nests deeper than 64 levels") as raised:
        call(mode, fake, lambda krea: krea.get_job(TEST_JOB_ID))
    assert "GET /jobs/{id}" in str(raised.value) and len(str(raised.value)) < 500


@pytest.mark.parametrize("mode", MODES)
def test_a_huge_job_id_in_an_answer_is_a_malformed_payload(mode: str) -> None:
    """A 500,000-character job_id is refused when the answer is read, before any URL is built."""
    body = make_job(job_id="j" * 500_000)
    fake = FakeKrea().on("GET", JOB_PATH, httpx.Response(200, json=body))
    with pytest.raises(MalformedPayloadError, match="job_id has 500000 characters") as raised:
        call(mode, fake, lambda krea: krea.get_job(TEST_JOB_ID))
    assert len(str(raised.value)) < 500


@pytest.mark.parametrize("mode", MODES)
def test_a_huge_job_id_given_to_the_client_is_refused_before_sending(mode: str) -> None:
    """get_job with a 500,000-character id raises InvalidIdentifierError, not httpx.InvalidURL."""
    fake = FakeKrea()
    with pytest.raises(InvalidIdentifierError, match="more than any Krea id") as raised:
        call(mode, fake, lambda krea: krea.get_job("j" * 500_000))
    assert isinstance(raised.value, KreaError) and len(str(raised.value)) < 500
    assert fake.requests == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "job_id", ["with space", "tab\there", "nl\n"], ids=["space", "tab", "newline"]
)
def test_an_id_with_spaces_or_controls_is_refused_before_sending(mode: str, job_id: str) -> None:
    """An id holding whitespace or a control character cannot be a Krea id: nothing is sent."""
    fake = FakeKrea()
    with pytest.raises(InvalidIdentifierError, match="spaces or control characters"):
        call(mode, fake, lambda krea: krea.cancel_job(job_id))
    assert fake.requests == []


@pytest.mark.parametrize("mode", MODES)
def test_a_huge_job_id_in_a_post_answer_is_an_ambiguous_submit(mode: str) -> None:
    """A 2xx POST answer whose job_id cannot be one: the job may exist, so it is ambiguous."""
    body = make_job(job_id="j" * 500_000)
    fake = FakeKrea().on(
        "POST", "/generate/image/openai/gpt-image-2", httpx.Response(200, json=body)
    )
    fake.jobs = []  # the reconciliation that follows reads GET /jobs; nothing to list here
    with pytest.raises(AmbiguousSubmitError) as raised:
        call(mode, fake, lambda krea: krea.submit("openai/gpt-image-2", {"prompt": "a cat"}))
    assert "job_id has 500000 characters" in str(raised.value.__cause__)


@pytest.mark.parametrize("mode", MODES)
def test_an_integer_of_5000_digits_is_a_malformed_payload(mode: str) -> None:
    """An answer holding an integer longer than any field takes is refused while parsing."""
    content = json.dumps(make_job())[:-1].encode() + b', "n": ' + b"7" * 5_000 + b"}"
    fake = FakeKrea().on("GET", JOB_PATH, httpx.Response(200, content=content))
    with pytest.raises(MalformedPayloadError, match="integer of 5000 digits"):
        call(mode, fake, lambda krea: krea.get_job(TEST_JOB_ID))


@pytest.mark.parametrize("mode", MODES)
def test_a_huge_status_or_cursor_is_a_malformed_payload(mode: str) -> None:
    """A 1 MB status is not a status; a 500,000-character cursor is not a cursor."""
    fake = FakeKrea().on("GET", JOB_PATH, httpx.Response(200, json=make_job(status="s" * 10**6)))
    with pytest.raises(MalformedPayloadError, match="is not a status or code"):
        call(mode, fake, lambda krea: krea.get_job(TEST_JOB_ID))
    page = {"items": [make_job()], "next_cursor": "c" * 500_000}
    fake = FakeKrea().on("GET", "/jobs", httpx.Response(200, json=page))
    with pytest.raises(MalformedPayloadError, match="next_cursor has 500000 characters"):
        call(mode, fake, lambda krea: krea.list_jobs())


@pytest.mark.parametrize("mode", MODES)
def test_a_huge_error_message_is_shortened_in_the_job(mode: str) -> None:
    """A failed job's 1 MB message and code are kept short: they reach logs and metadata."""
    body = make_job(status="failed", error={"code": "c" * 10**5, "message": "m" * 10**6})
    fake = FakeKrea().on("GET", JOB_PATH, httpx.Response(200, json=body))
    job = call(mode, fake, lambda krea: krea.get_job(TEST_JOB_ID))
    assert job.error is not None
    assert len(job.error.message or "") <= 2_000 and len(job.error.code or "") <= 100
    assert "(1000000 characters)" in (job.error.message or "")


class EndlessBody:
    """A body that never ends (1 MB chunks), counting what was read of it."""

    def __init__(self) -> None:
        self.served = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.served += CHUNK
            yield b" " * CHUNK

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_an_endless_answer_is_read_up_to_the_cap_and_refused(mode: str) -> None:
    """An answer that never ends is read to just past MAX_ANSWER_BYTES, then refused by size."""
    body = EndlessBody()

    def reply(request: httpx.Request) -> httpx.Response:
        stream = body if mode == "sync" else body.__aiter__()
        return httpx.Response(200, content=stream)

    fake = FakeKrea().on("GET", JOB_PATH, reply)
    with pytest.raises(MalformedPayloadError, match=f"more than {MAX_ANSWER_BYTES} bytes"):
        call(mode, fake, lambda krea: krea.get_job(TEST_JOB_ID))
    assert body.served <= MAX_ANSWER_BYTES + 2 * CHUNK


@pytest.mark.parametrize("mode", MODES)
def test_a_hostile_error_body_still_gives_the_status_error(mode: str) -> None:
    """A 404 whose JSON body nests 100,000 levels raises NotFoundError with a short message."""
    content = b'{"error": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    fake = FakeKrea().on(
        "GET",
        JOB_PATH,
        httpx.Response(404, content=content, headers={"content-type": "application/json"}),
    )
    with pytest.raises(NotFoundError) as raised:
        call(mode, fake, lambda krea: krea.get_job(TEST_JOB_ID))
    assert len(str(raised.value)) < 1_000
