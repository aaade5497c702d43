"""The ledger's guarded writes on PostgreSQL, with two connections racing for one row."""

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from krea_dagster.engine.ledger import JobUpdate, Ledger

pytestmark = pytest.mark.system


def _submitted(ledger: Ledger, key: str, job_id: str) -> str:
    claim = ledger.claim(
        scope="s",
        batch="b",
        generation=1,
        prompt_key=key,
        model="bfl/flux-1-dev",
        request={"prompt": key},
        request_hash="h",
        submission_id=str(uuid.uuid4()),
        estimated_usd=0.007,
        run_id="r",
        max_attempts=3,
        account="acct",
        lease_seconds=60,
    )
    assert claim.row is not None
    ledger.mark_submitted(
        claim.row.submission_id, job_id=job_id, status="queued", created_at=datetime.now(UTC)
    )
    return claim.row.submission_id


def test_a_stale_status_never_overwrites_completed_under_a_race(postgres_url):
    """A poller holding 'processing' loses to a concurrent 'completed': the guard is in the SQL."""
    ledger = Ledger(postgres_url)
    submission_id = _submitted(ledger, "k1", "job-race")
    engine = sa.create_engine(postgres_url)
    stale_done = threading.Event()
    with engine.connect() as other:
        other.begin()
        # Another worker writes 'completed' and holds the row lock until it commits.
        other.execute(
            sa.text("UPDATE krea_submissions SET state='completed' WHERE job_id='job-race'")
        )

        def stale_poller() -> None:
            Ledger(postgres_url).update_jobs([JobUpdate("job-race", "processing")])
            stale_done.set()

        thread = threading.Thread(target=stale_poller)
        thread.start()
        time.sleep(0.5)  # the stale writer has read 'queued' and now waits for the row lock
        assert not stale_done.is_set()
        other.commit()
    thread.join(timeout=30)
    assert stale_done.is_set()
    assert ledger.get(submission_id).state == "completed"
    engine.dispose()


def test_two_workers_claim_on_one_account_one_at_a_time(postgres_url):
    """Eight workers claiming different prompts of one account: one intent at a time holds the lease."""
    url = postgres_url
    assert Ledger(url).engine is not None  # the schema, once
    holders: list[str] = []
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        mine = Ledger(url)
        barrier.wait()
        claim = mine.claim(
            scope="s",
            batch="lease",
            generation=1,
            prompt_key=f"p{index}",
            model="m",
            request={},
            request_hash="h",
            submission_id=str(uuid.uuid4()),
            estimated_usd=None,
            run_id=None,
            max_attempts=3,
            account="acct-lease",
            lease_seconds=60,
        )
        if claim.row is not None:
            holders.append(claim.row.submission_id)
        mine.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(holders) == 1
    assert len(Ledger(url).unresolved("s")) == 1
