"""The client tells a wrong base URL from a lost connection (issue 20), sync and async alike.

Before the API's origin has ever answered, a connection failure (nothing listening, no such
host) or a web page's 404 is ``BackendUnreachableError``, naming the URL and where it came
from; once the API has answered, a connection failure is an ordinary, transient
``APIConnectionError``.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from krea_dagster.api import APIConnectionError, BackendUnreachableError, KreaClient, NotFoundError

from .support import (
    TEST_API_KEY,
    TEST_JOB_ID,
    FakeClock,
    FakeKrea,
    make_async_client,
    make_client,
    make_job,
)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_no_such_host_is_a_backend_unreachable_error(mode: str) -> None:
    """A DNS failure (httpx's ConnectError) before any answer names the base URL, sync and async."""
    fake = FakeKrea().on(
        "GET", f"/jobs/{TEST_JOB_ID}", httpx.ConnectError("[Errno -2] Name or service not known")
    )
    with pytest.raises(BackendUnreachableError, match=r"never answered GET /jobs/\{id\}") as raised:
        _call(mode, fake, lambda krea: krea.get_job(TEST_JOB_ID))
    assert "Name or service not known" in str(raised.value)
    assert raised.value.base_url_source == "base_url"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_losing_a_backend_that_answered_is_an_ordinary_connection_error(mode: str) -> None:
    """Once the API answered, a connection failure is transient, not a wrong base URL."""
    fake = FakeKrea().on(
        "GET",
        f"/jobs/{TEST_JOB_ID}",
        httpx.Response(200, json=make_job()),
        httpx.ConnectError("[Errno 111] Connection refused"),
    )

    def twice(krea):
        if mode == "sync":
            krea.get_job(TEST_JOB_ID)
            return krea.get_job(TEST_JOB_ID)

        async def both():
            await krea.get_job(TEST_JOB_ID)
            return await krea.get_job(TEST_JOB_ID)

        return both()

    with pytest.raises(APIConnectionError) as raised:
        _call(mode, fake, twice)
    assert not isinstance(raised.value, BackendUnreachableError)


@pytest.mark.parametrize(
    ("env", "argument", "source"),
    [
        ("http://127.0.0.1:9", None, "KREA_BASE_URL"),
        (None, "http://127.0.0.1:9", "base_url"),
        ("http://127.0.0.1:8", "http://127.0.0.1:9", "base_url"),
    ],
    ids=["variable", "argument", "argument-over-variable"],
)
def test_the_message_names_where_the_base_url_came_from(monkeypatch, env, argument, source):
    """The error says whether the URL came from KREA_BASE_URL or the base_url setting."""
    if env:
        monkeypatch.setenv("KREA_BASE_URL", env)
    else:
        monkeypatch.delenv("KREA_BASE_URL", raising=False)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    transport = httpx.MockTransport(refuse)
    with (
        KreaClient(TEST_API_KEY, base_url=argument, transport=transport, max_retries=0) as krea,
        pytest.raises(BackendUnreachableError) as raised,
    ):
        krea.get_job(TEST_JOB_ID)
    assert f"http://127.0.0.1:9 (from {source})" in str(raised.value)


def _call(mode, fake, operation):
    clock = FakeClock()
    if mode == "sync":
        with make_client(fake, clock) as krea:
            return operation(krea)

    async def main():
        async with make_async_client(fake, clock) as krea:
            return await operation(krea)

    return asyncio.run(main())


def test_a_404_page_at_krea_s_own_address_stays_a_not_found(monkeypatch) -> None:
    """With the default base URL, a 404 page is Krea's (a retired path), not another server."""
    monkeypatch.delenv("KREA_BASE_URL", raising=False)
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            404, text="<html>gone</html>", headers={"content-type": "text/html"}
        )
    )
    with (
        KreaClient(TEST_API_KEY, transport=transport, max_retries=0) as krea,
        pytest.raises(NotFoundError) as raised,
    ):
        krea.get_job(TEST_JOB_ID)
    assert not isinstance(raised.value, BackendUnreachableError)


def test_a_404_page_at_another_address_is_not_krea(monkeypatch) -> None:
    """With KREA_BASE_URL pointing elsewhere, a 404 web page before any answer names it."""
    monkeypatch.setenv("KREA_BASE_URL", "http://127.0.0.1:9")
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            404, text="<html>no</html>", headers={"content-type": "text/html"}
        )
    )
    with (
        KreaClient(TEST_API_KEY, transport=transport, max_retries=0) as krea,
        pytest.raises(BackendUnreachableError, match=r"is not the Krea API: it answered GET"),
    ):
        krea.get_job(TEST_JOB_ID)
