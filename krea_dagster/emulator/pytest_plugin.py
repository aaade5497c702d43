"""pytest plugin: a ``krea_emulator`` fixture backed by one emulator per test session.

Installed with the package (entry point ``pytest11: krea_emulator``), so any project's tests
can ask for it::

    def test_generates(krea_emulator):
        client = krea_emulator.client()
        job = client.post("/generate/image/bfl/flux-1-dev", json={"prompt": "a fox"}).json()
        assert krea_emulator.wait_for_job(job["job_id"])["status"] == "completed"

The server starts lazily on first use (loading the plugin costs nothing) with fast timing:
``time_scale`` = :data:`FAST_TIME_SCALE` turns Krea's average render times into about
5-120 ms per job (a 55 s gpt-image-2 job takes 55 ms) and the automatic timeouts into 0.18 s
(Krea-hosted) and 7.2 s (external). Before each test the emulator is reset to its startup state:
jobs, assets and counters cleared, knobs restored, run-time accounts removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the server code is imported only when a test asks for the fixture
    from krea_dagster.emulator.testing import EmulatorHandle

FAST_TIME_SCALE = 0.001
FAST_WEBHOOK_RETRY_SECONDS = 0.02


@pytest.fixture(scope="session")
def krea_emulator_session() -> Iterator[EmulatorHandle]:
    """One emulator for the whole session (prefer ``krea_emulator``, which resets it)."""
    from krea_dagster.emulator.testing import run_emulator

    with run_emulator(
        time_scale=FAST_TIME_SCALE, webhook_retry_seconds=FAST_WEBHOOK_RETRY_SECONDS
    ) as emulator:
        yield emulator


@pytest.fixture
def krea_emulator(krea_emulator_session: EmulatorHandle) -> EmulatorHandle:
    """The session emulator, reset to its startup state for this test."""
    krea_emulator_session.reset(config=True, accounts=True)
    return krea_emulator_session
