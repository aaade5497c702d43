"""Fixtures for the client tests (helpers live in ``support``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from krea_dagster.api import KreaClient

from .support import FakeClock, FakeKrea, make_client


@pytest.fixture
def fake() -> FakeKrea:
    return FakeKrea()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(fake: FakeKrea, clock: FakeClock) -> Iterator[KreaClient]:
    with make_client(fake, clock) as krea:
        yield krea


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a real token or base URL from the developer's environment."""
    monkeypatch.delenv("KREA_API_KEY", raising=False)
    monkeypatch.delenv("KREA_BASE_URL", raising=False)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
