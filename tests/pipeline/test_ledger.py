"""The ledger (claims, attempts, races, state changes) and reconciliation's matching rules."""

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from krea_dagster.engine.ledger import (
    JobUpdate,
    Ledger,
    LedgerSchemaError,
    SubmissionState,
    meta_table,
)
from krea_dagster.engine.reconcile import (
    Candidate,
    ClockBounds,
    Window,
    clock_bounds,
    match_windows,
    owner_is_alive,
)

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


def claim(
    ledger: Ledger, key: str = "k1", batch: str = "b1", generation: int = 1, max_attempts: int = 3
):
    return ledger.claim(
        scope="s",
        batch=batch,
        generation=generation,
        prompt_key=key,
        model="bfl/flux-1-dev",
        request={"prompt": key},
        request_hash="h",
        submission_id=str(uuid.uuid4()),
        estimated_usd=0.007,
        run_id="run",
        max_attempts=max_attempts,
    )


def test_a_live_or_paid_prompt_cannot_be_claimed_again(ledger):
    """While a prompt's job is live or paid, no second intent is written for it."""
    first = claim(ledger)
    assert first is not None and first.state == SubmissionState.INTENT
    assert claim(ledger) is None
    ledger.mark_submitted(first.submission_id, job_id="j1", status="queued", created_at=T0)
    assert claim(ledger) is None
    ledger.update_jobs([JobUpdate("j1", "completed", result_url="https://cdn/x.png")])
    assert claim(ledger) is None
    assert ledger.get(first.submission_id).cost_usd == pytest.approx(0.007)


def test_failed_prompts_get_new_attempts_up_to_the_limit(ledger):
    """A failed job frees its prompt for another attempt, at most max_attempts times."""
    for attempt in range(1, 3):
        row = claim(ledger, max_attempts=2)
        assert row is not None and row.attempt == attempt
        ledger.mark_submitted(
            row.submission_id, job_id=f"j{attempt}", status="queued", created_at=T0
        )
        ledger.update_jobs(
            [JobUpdate(f"j{attempt}", "failed", error_code="nsfw", error_message="flagged")]
        )
    assert claim(ledger, max_attempts=2) is None


def test_refusals_do_not_use_up_attempts_but_rejections_do(ledger):
    """A 402 (never created) leaves the attempt budget alone; a 400 (Krea refused the body) uses it."""
    for _ in range(3):
        row = claim(ledger, max_attempts=1)
        ledger.mark_not_created(row.submission_id, code="insufficient_credits", message="402")
    rejected = claim(ledger, max_attempts=1)
    ledger.mark_not_created(rejected.submission_id, code="rejected", message="400")
    assert claim(ledger, max_attempts=1) is None


def test_same_prompt_in_two_batches_is_two_deliverables(ledger):
    """A prompt key is claimed per batch: the same text in two batches is generated for each."""
    assert claim(ledger, batch="spring") is not None
    assert claim(ledger, batch="summer") is not None


def test_concurrent_claims_of_one_prompt_let_exactly_one_through(tmp_path):
    """Eight workers racing on one prompt (separate connections) write exactly one intent."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    assert Ledger(url).engine is not None  # create the schema once
    winners: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        mine = Ledger(url)
        barrier.wait()
        if claim(mine) is not None:
            winners.append(1)
        mine.dispose()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(Ledger(url).rows("s")) == 1


def test_status_updates_never_move_a_terminal_row_backwards(ledger):
    """A stale 'processing' from an older page cannot undo 'completed'."""
    row = claim(ledger)
    ledger.mark_submitted(row.submission_id, job_id="j1", status="queued", created_at=T0)
    changed = ledger.update_jobs([JobUpdate("j1", "completed")])
    assert [r.state for r in changed] == ["completed"]
    assert ledger.update_jobs([JobUpdate("j1", "processing")]) == []
    assert ledger.get(row.submission_id).state == "completed"


def test_a_failed_download_never_erases_an_image_another_worker_stored(ledger):
    """Two workers download one completed job; the one that fails leaves the other's image."""
    row = claim(ledger)
    ledger.mark_submitted(row.submission_id, job_id="j1", status="queued", created_at=T0)
    (seen,) = ledger.update_jobs([JobUpdate("j1", "completed", result_url="https://cdn/x.png")])
    ledger.record_image(
        seen.submission_id, uri="s3://b/x.png", sha256="ab", width=8, height=8, size_bytes=3
    )
    recorded = ledger.record_image_error(
        seen.submission_id, seen_uri=seen.image_uri, code="download_failed", message="reset"
    )
    stored = ledger.get(seen.submission_id)
    assert not recorded
    assert (stored.image_uri, stored.error_code) == ("s3://b/x.png", None)
    # A worker that saw this very image (say, gone from the store) and failed does record it.
    assert ledger.record_image_error(
        seen.submission_id, seen_uri="s3://b/x.png", code="download_failed", message="reset"
    )
    stored = ledger.get(seen.submission_id)
    assert (stored.image_uri, stored.error_code) == (None, "download_failed")
    with pytest.raises(KeyError):
        ledger.record_image_error("nope", seen_uri=None, code="c", message="m")


def test_unknown_future_statuses_are_kept_and_treated_as_pending(ledger):
    """A status this version does not know is stored verbatim and counts as pending."""
    row = claim(ledger)
    ledger.mark_submitted(row.submission_id, job_id="j1", status="queued", created_at=T0)
    ledger.update_jobs([JobUpdate("j1", "upscaling")])
    (pending,) = ledger.pending("s")
    assert pending.state == "upscaling" and pending.is_pending_at_krea


def test_generations_are_opened_once_per_run(ledger):
    """Regenerating opens generation n+1, and a retried step of the same run reuses it."""
    assert ledger.ensure_generation("s", "b1") == 1
    assert (
        ledger.start_generation("s", "b1", reason="regenerate", run_id="r1", reuse_for_run=True)
        == 2
    )
    assert (
        ledger.start_generation("s", "b1", reason="regenerate", run_id="r1", reuse_for_run=True)
        == 2
    )
    assert (
        ledger.start_generation("s", "b1", reason="regenerate", run_id="r2", reuse_for_run=True)
        == 3
    )
    assert ledger.batches("s") == [("b1", 3)]


def test_paid_duplicates_are_detected(ledger):
    """Two paid jobs for one prompt in one generation are listed (the double-pay check)."""
    for job in ("j1", "j2"):
        row = claim(ledger)
        if row is None:  # the real ledger refuses; force a second row the way a bug would
            with ledger.transaction() as conn:
                conn.execute(
                    sa.text("UPDATE krea_submissions SET state='failed' WHERE job_id='j1'")
                )
            row = claim(ledger)
        ledger.mark_submitted(row.submission_id, job_id=job, status="queued", created_at=T0)
    with ledger.transaction() as conn:
        conn.execute(sa.text("UPDATE krea_submissions SET state='completed'"))
    assert ledger.paid_duplicates("s", "b1", 1) == {"k1": ["j1", "j2"]}


def test_a_newer_schema_is_refused_with_what_to_do(tmp_path):
    """A ledger written by a newer krea-dagster is not touched."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    ledger = Ledger(url)
    assert ledger.engine is not None
    with ledger.transaction() as conn:
        conn.execute(meta_table.update().values(value="99"))
    with pytest.raises(LedgerSchemaError, match="upgrade krea-dagster"):
        _ = Ledger(url).engine


def test_repr_hides_passwords():
    """The ledger's repr never shows a database password."""
    assert "hunter2" not in repr(Ledger("postgresql+psycopg://krea:hunter2@db/krea"))


# -- reconciliation ---------------------------------------------------------------------------


def window(name: str, start: float, end: float, resolvable: bool = True) -> Window:
    return Window(name, T0 + timedelta(seconds=start), T0 + timedelta(seconds=end), resolvable)


def candidate(job: str, at: float, terminal: bool = False) -> Candidate:
    return Candidate(
        job, T0 + timedelta(seconds=at), "completed" if terminal else "queued", terminal
    )


LATER = T0 + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("windows", "candidates", "found", "not_created", "tangled", "waiting"),
    [
        ([window("u", 0, 1)], [], {}, ["u"], [], []),
        ([window("u", 0, 1)], [candidate("j", 0.5)], {"u": "j"}, [], [], []),
        ([window("u", 0, 1)], [candidate("j", 2)], {}, ["u"], [], []),
        (
            [window("u", 0, 1), window("v", 2, 3)],
            [candidate("j", 0.5), candidate("k", 2.5)],
            {"u": "j", "v": "k"},
            [],
            [],
            [],
        ),
        (
            [window("u", 0, 2), window("v", 1, 3)],
            [candidate("j", 0.5), candidate("k", 1.5)],
            {"u": "j", "v": "k"},
            [],
            [],
            [],
        ),
        (
            [window("u", 0, 2), window("v", 0, 2)],
            [candidate("j", 1), candidate("k", 1.5)],
            {},
            [],
            [["u", "v"]],
            [],
        ),
        (
            [window("u", 0, 2), window("w", 0, 2, resolvable=False)],
            [candidate("j", 1)],
            {},
            [],
            [],
            ["u"],
        ),
    ],
    ids=[
        "nothing-created",
        "one-candidate",
        "candidate-outside-window",
        "two-disjoint-windows",
        "chain-resolved-by-elimination",
        "two-overlapping-windows-two-jobs",
        "shared-with-a-live-worker",
    ],
)
def test_windows_are_matched_only_when_certain(
    windows, candidates, found, not_created, tangled, waiting
):
    """Unique pairings are attributed, empty closed windows prove nothing was created, the rest is not guessed."""
    matching = match_windows(windows, candidates, now=LATER)
    assert {k: c.job_id for k, c in matching.found.items()} == found
    assert matching.not_created == not_created
    assert [t.submission_ids for t in matching.tangles] == tangled
    assert matching.waiting == waiting


def test_an_open_window_without_candidates_waits():
    """A window that has not closed yet cannot prove that nothing was created."""
    matching = match_windows([window("u", 0, 1)], [], now=T0 + timedelta(seconds=1.5))
    assert matching.waiting == ["u"] and matching.not_created == []


def test_clock_bounds_come_from_answered_rows(ledger):
    """Answered rows bound Krea's clock offset; with none, the default skew either way."""
    assert clock_bounds([]) == ClockBounds.unknown()
    row = claim(ledger)
    ledger.mark_submitted(
        row.submission_id,
        job_id="j1",
        status="queued",
        created_at=datetime.now(UTC) + timedelta(seconds=10),
    )
    bounds = clock_bounds([ledger.get(row.submission_id)])
    assert timedelta(seconds=9) < bounds.low <= bounds.high < timedelta(seconds=11)


def test_owner_liveness_uses_the_process_table_on_this_host(ledger):
    """A row written by a dead process on this host is resolvable at once; a live one is not."""
    row = claim(ledger)
    now = datetime.now(UTC)
    assert owner_is_alive(row, stale_after=timedelta(minutes=10), now=now) is False  # our own pid
    import dataclasses
    import os

    parent = dataclasses.replace(row, owner_pid=os.getppid())
    assert owner_is_alive(parent, stale_after=timedelta(minutes=10), now=now) is True
    dead = dataclasses.replace(row, owner_pid=2**22 + 12345)
    assert owner_is_alive(dead, stale_after=timedelta(minutes=10), now=now) is False
    remote = dataclasses.replace(row, owner_host="elsewhere", run_id="r")
    assert owner_is_alive(
        remote, run_is_active=lambda run: run == "r", stale_after=timedelta(minutes=10), now=now
    )
