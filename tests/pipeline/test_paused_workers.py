"""A worker frozen mid-submission (SIGSTOP: a VM pause, a long GC) wakes up and pays nothing twice.

Real run-worker processes (``crash_driver.py``) are stopped at a named point
(``KREA_DAGSTER_PAUSE_AT``), another worker takes their expired lease over in this process, and
the frozen one is woken with SIGCONT.
"""

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import httpx
import psutil
import pytest

from krea_dagster.api import AsyncKreaClient, KreaClient, SendAttempt, SendDeadlineError
from krea_dagster.api.config import SystemClock
from krea_dagster.engine.crashpoints import PAUSE_ENV
from krea_dagster.engine.errors import LeaseUnavailableError
from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.submit import BatchSubmitter, PlannedPrompt

from .conftest import check_results, manifest_of, materialize, prompt_rows, write_batch

DRIVER = Path(__file__).with_name("crash_driver.py")
PROMPTS = 4


def start_driver(tmp_path, emulator, ledger_url, pause_at: str) -> subprocess.Popen[bytes]:
    """A run worker of batch b1 that stops itself (SIGSTOP) the first time it reaches ``pause_at``."""
    home = tmp_path / "dagster_home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "KREA_DRIVER_PREFIX": "crash"}
    env[PAUSE_ENV] = pause_at
    command = [sys.executable, str(DRIVER), str(tmp_path / "prompts"), str(tmp_path / "store")]
    command += [ledger_url, emulator.base_url, emulator.token, "b1"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_until_stopped(worker: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    process = psutil.Process(worker.pid)
    while process.status() != psutil.STATUS_STOPPED:
        if worker.poll() is not None:
            raise AssertionError(f"the worker ended first: {worker.stderr.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, "the worker never reached its pause point"
        time.sleep(0.02)


@pytest.fixture
def paused_setup(tmp_path, build, emulator, prompts_dir):
    write_batch(prompts_dir, "b1", prompt_rows(PROMPTS))
    home = tmp_path / "dagster_home"
    home.mkdir()
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assets = build("crash", store=tmp_path / "store", ledger=ledger_url)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        instance.add_dynamic_partitions(assets.partitions_def.name, ["b1"])
        yield assets, instance, ledger_url


def take_over_then_wake(worker, assets, instance, krea) -> tuple[dg.ExecuteInProcessResult, int]:
    """Another worker materializes the batch while ``worker`` is frozen; then ``worker`` wakes."""
    try:
        wait_until_stopped(worker)
        takeover = materialize(assets, "b1", instance=instance, krea=krea)
        worker.send_signal(signal.SIGCONT)
        code = worker.wait(timeout=240)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            worker.wait(timeout=30)
    return takeover, code


def test_a_sender_paused_after_recording_its_send_wakes_past_its_lease_and_sends_nothing(
    tmp_path, emulator, krea, paused_setup
):
    """A worker frozen after ``note_send`` and before its POST is written, whose lease expired and
    whose prompt another worker re-sent, writes no POST when it wakes: every prompt is paid once."""
    assets, instance, ledger_url = paused_setup
    worker = start_driver(tmp_path, emulator, ledger_url, "submit.after_note_send")
    takeover, code = take_over_then_wake(worker, assets, instance, krea)
    assert takeover.success
    stats = emulator.stats()
    assert stats["jobs_created"] == PROMPTS, stats
    assert stats["jobs_billed"] == PROMPTS
    assert check_results(takeover)["no_duplicate_paid_jobs"] is True
    assert code == 0, worker.stderr.read().decode()[-3000:]
    rows = Ledger(ledger_url).rows("crash", "b1")
    assert sum(row.is_paid for row in rows) == PROMPTS
    # The frozen worker's row was decided "not created" by the takeover, never sent.
    assert [row.error_code for row in rows if row.job_id is None] == ["reconciled_not_created"]


def test_a_holder_paused_after_krea_answered_wakes_to_its_matched_job_and_goes_on(
    tmp_path, emulator, krea, paused_setup
):
    """A worker frozen between Krea's answer and its ledger write, whose job another worker
    matched to the row meanwhile, wakes up, finds its job on record and finishes its run."""
    assets, instance, ledger_url = paused_setup
    worker = start_driver(tmp_path, emulator, ledger_url, "submit.after_post")
    takeover, code = take_over_then_wake(worker, assets, instance, krea)
    assert takeover.success
    stderr = worker.stderr.read().decode()
    assert code == 0, stderr[-3000:]
    assert "could not record the late job" not in stderr
    stats = emulator.stats()
    assert stats["jobs_created"] == PROMPTS
    assert stats["jobs_billed"] == PROMPTS
    rows = Ledger(ledger_url).rows("crash", "b1")
    assert [row for row in rows if row.late_answer_of] == []
    assert set(manifest_of(takeover, assets)["status"]) == {"completed"}


class PausableClock(SystemClock):
    """Real time, plus 60 s once the process "was paused"."""

    paused = False

    def monotonic(self) -> float:
        return time.monotonic() + (60.0 if self.paused else 0.0)


@pytest.mark.parametrize("flavour", ["async", "sync"])
def test_the_write_deadline_is_checked_when_the_request_bytes_go_out(emulator, flavour):
    """A POST whose write deadline passes after the client's last check before the transport
    (a pause inside the connection pool) is stopped at the write itself: Krea receives nothing."""
    clock = PausableClock()

    def pause(request: httpx.Request) -> None:
        # httpx calls request hooks after the client's own last check, before the transport:
        # the process is frozen here for a minute.
        clock.paused = True

    async def pause_async(request: httpx.Request) -> None:
        pause(request)

    def on_send(attempt: SendAttempt) -> float:
        return clock.monotonic() + 5.0

    async def send() -> None:
        http = httpx.AsyncClient(event_hooks={"request": [pause_async]})
        async with AsyncKreaClient(
            emulator.token, base_url=emulator.base_url, clock=clock, http_client=http
        ) as client:
            await client.submit("bfl/flux-1-dev", {"prompt": "a lamp"}, on_send=on_send)
        await http.aclose()

    def send_sync() -> None:
        with (
            httpx.Client(event_hooks={"request": [pause]}) as http,
            KreaClient(
                emulator.token, base_url=emulator.base_url, clock=clock, http_client=http
            ) as client,
        ):
            client.submit("bfl/flux-1-dev", {"prompt": "a lamp"}, on_send=on_send)

    with pytest.raises(SendDeadlineError, match="send_request"):
        if flavour == "async":
            asyncio.run(send())
        else:
            send_sync()
    assert clock.paused
    stats = emulator.stats()
    assert stats["jobs_created"] == 0
    assert stats["requests_by_route"].get("POST /generate/image/{provider}/{model}", 0) == 0


def test_a_worker_waiting_for_another_hosts_lease_names_the_holder_and_its_expiry(
    tmp_path, emulator, caplog
):
    """While another host's submission holds the account's lease, the waiting worker logs which
    row holds it (submission, batch, prompt, host) and until when, and its error says so too."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.ensure_generation("other", "b9")
    holder = ledger.claim(
        scope="other",
        batch="b9",
        generation=1,
        prompt_key="k-held",
        model="bfl/flux-1-dev",
        request={"prompt": "x"},
        request_hash="h",
        submission_id=str(uuid.uuid4()),
        estimated_usd=None,
        run_id=None,
        max_attempts=3,
        account=emulator.account,
        lease_seconds=600,
    ).row
    assert holder is not None
    with ledger.transaction() as conn:
        conn.exec_driver_sql(
            "UPDATE krea_submit_leases SET owner_host = 'render-node-7', owner_pid = 4242"
        )
    ledger.ensure_generation("mine", "b1")
    log = logging.getLogger("test.lease")

    async def submit() -> None:
        async with AsyncKreaClient(emulator.token, base_url=emulator.base_url) as client:
            submitter = BatchSubmitter(
                client,
                ledger,
                scope="mine",
                batch="b1",
                generation=1,
                model="bfl/flux-1-dev",
                run_id=None,
                account=emulator.account,
                request_window=4.0,
                lease_wait=0.3,
                log=log,
            )
            await submitter.run([PlannedPrompt("k1", {"prompt": "a lamp"}, "h1", None)])

    with (
        caplog.at_level(logging.INFO, logger="test.lease"),
        pytest.raises(LeaseUnavailableError) as raised,
    ):
        asyncio.run(submit())
    (lease,) = ledger.leases(emulator.account)
    assert lease.holder.submission_id == holder.submission_id and lease.expires_at is not None
    for text in (caplog.text, str(raised.value)):
        assert holder.submission_id in text
        assert "other/b9" in text and "k-held" in text
        assert "render-node-7" in text
        assert lease.expires_at.isoformat() in text
    assert emulator.stats()["jobs_created"] == 0
