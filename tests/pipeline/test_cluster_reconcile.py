"""Reconciling several lost answers of one account whose windows overlap, against the emulator.

With several submit lanes a killed worker can leave several POSTs unanswered at once. Their
jobs exist at Krea, and the windows cannot say which is whose: the jobs that have not completed
yet are cancelled (a cancelled job costs nothing) and every prompt they could belong to is sent
again; jobs that already completed (billed) leave their rows reported, never re-sent.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from krea_dagster.api import Job, JobStatus
from krea_dagster.emulator.testing import run_emulator
from krea_dagster.engine.errors import ErrorCode
from krea_dagster.engine.ledger import Ledger, SubmissionState, may_submit, utcnow
from krea_dagster.engine.reconcile import LISTING_LAG, Outcome, reconcile, settle
from krea_dagster.engine.run import run_coroutine

from .conftest import TEST_MODEL
from .test_guards import Account, create_job

LOG = logging.getLogger("krea_dagster.tests.clusters")
#: Short request windows: each row's window closes about 7 s after its send.
REQUEST_WINDOW = 3.0


def dead_row(ledger: Ledger, account: str, key: str, sent_at: Any) -> str:
    """The row of a POST sent at ``sent_at`` on one of 4 lanes by a worker that is gone."""
    claim = ledger.claim(
        scope="s",
        batch="b1",
        generation=1,
        prompt_key=key,
        model=TEST_MODEL,
        request={"prompt": key},
        request_hash=key,
        submission_id=str(uuid.uuid4()),
        estimated_usd=0.007,
        run_id="killed",
        max_attempts=3,
        account=account,
        lease_seconds=0.0,  # expired at once: the worker was killed
        sent_at=sent_at,
        krea_offset=(-0.1, 0.1),  # the emulator shares this host's clock
        lanes=4,
    )
    assert claim.row is not None
    return claim.row.submission_id


def killed_with_two_posts_in_flight(emulator: Any, ledger: Ledger) -> tuple[Job, Job, list[str]]:
    """Two jobs Krea made for two POSTs a killed worker sent 0.1 s apart (both windows hold
    both jobs), and the two rows it left unresolved."""
    first = create_job(emulator, "a lighthouse at dawn")
    second = create_job(emulator, "a lighthouse at dusk")
    rows = [
        dead_row(ledger, emulator.account, "k1", first.created_at - timedelta(seconds=0.3)),
        dead_row(ledger, emulator.account, "k2", first.created_at - timedelta(seconds=0.2)),
    ]
    return first, second, rows


def settled(emulator: Any, ledger: Ledger) -> list[Outcome]:
    async def work() -> list[Outcome]:
        async with Account(emulator.token, emulator.base_url).async_client() as client:
            return await settle(
                client, ledger, emulator.account, request_window=REQUEST_WINDOW, log=LOG
            )

    return run_coroutine(work())


def test_jobs_a_killed_worker_left_unattributable_are_cancelled_and_their_prompts_sent_again(
    tmp_path,
):
    """Two POSTs in flight at a kill -9 made two jobs both windows hold: still rendering, they
    are cancelled (nothing billed), and both prompts may be sent again instead of reported."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    with run_emulator(render_seconds=600.0, seed=3) as emulator:
        first, second, rows = killed_with_two_posts_in_flight(emulator, ledger)
        outcomes = settled(emulator, ledger)
        with Account(emulator.token, emulator.base_url).client() as client:
            statuses = {job: client.get_job(job).status for job in (first.job_id, second.job_id)}
        stats = emulator.stats()
    assert outcomes == [Outcome.ATTRIBUTED, Outcome.ATTRIBUTED]
    assert statuses == {first.job_id: JobStatus.CANCELLED, second.job_id: JobStatus.CANCELLED}
    found = ledger.get_many(rows)
    assert {row.job_id for row in found} == {first.job_id, second.job_id}
    assert {row.error_code for row in found} == {ErrorCode.RECONCILED_CANCELLED}
    assert all(row.state == JobStatus.CANCELLED for row in found)
    assert all(may_submit([row], max_attempts=3) for row in found)  # sent again, once
    assert stats["billed_usd"] == 0
    ledger.dispose()


def test_billed_jobs_a_killed_worker_left_unattributable_report_their_rows(tmp_path):
    """The same two jobs, completed before anyone looked: billed, and nobody knows whose is
    whose, so both rows are reported (never re-sent) and nothing is cancelled."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    with run_emulator(render_seconds=0.05, seed=3) as emulator:
        first, second, rows = killed_with_two_posts_in_flight(emulator, ledger)
        outcomes = settled(emulator, ledger)
    assert outcomes == [Outcome.REPORTED, Outcome.REPORTED]
    found = ledger.get_many(rows)
    assert all(row.state == SubmissionState.REPORTED for row in found)
    assert all(first.job_id in (row.error_message or "") for row in found)
    assert all(second.job_id in (row.error_message or "") for row in found)
    assert not any(may_submit([row], max_attempts=3) for row in found)
    ledger.dispose()


def test_a_live_senders_job_listed_before_its_answer_is_never_a_dead_rows(tmp_path):
    """A worker still sending on another lane has its job listed before its answer is written:
    a dead row whose window holds that job does not take it (the horizon stops at the live
    send), and is decided not created once the live answer names the job and its window closes."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")

    async def scenario(emulator: Any) -> Outcome:
        account = Account(emulator.token, emulator.base_url)
        dead = dead_row(ledger, emulator.account, "k1", utcnow() - timedelta(seconds=0.5))
        live = ledger.claim(
            scope="s",
            batch="b1",
            generation=1,
            prompt_key="k2",
            model=TEST_MODEL,
            request={"prompt": "k2"},
            request_hash="k2",
            submission_id=str(uuid.uuid4()),
            estimated_usd=0.007,
            run_id="live",
            max_attempts=3,
            account=emulator.account,
            lease_seconds=600.0,
            sent_at=utcnow(),
            krea_offset=(-0.1, 0.1),
            lanes=4,
        ).row
        assert live is not None
        job = create_job(emulator, "k2")  # the live POST's job, its answer still on the way
        async with account.async_client() as client:
            deciding = asyncio.create_task(
                reconcile(
                    client,
                    ledger,
                    ledger.get(dead),
                    request_window=REQUEST_WINDOW,
                    log=LOG,
                )
            )
            # Long enough for passes to list the job past the listing lag.
            await asyncio.sleep(LISTING_LAG.total_seconds() + 1.5)
            assert not deciding.done()
            assert ledger.mark_submitted(
                live.submission_id, job_id=job.job_id, status=job.status, created_at=job.created_at
            )
            return await deciding

    with run_emulator(render_seconds=600.0, seed=5) as emulator:
        outcome = run_coroutine(scenario(emulator))
    assert outcome == Outcome.NOT_CREATED
    with ledger.transaction() as conn:
        owners = conn.execute(
            sa.text("SELECT prompt_key FROM krea_submissions WHERE job_id IS NOT NULL")
        ).all()
    assert [owner for (owner,) in owners] == ["k2"]  # the job is the live sender's alone
    ledger.dispose()
