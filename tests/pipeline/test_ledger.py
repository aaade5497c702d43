"""The ledger: claims, attempts, the submit lease, guarded state changes, generations, schema."""

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from krea_dagster.engine.ledger import (
    SCHEMA_VERSION,
    JobUpdate,
    Ledger,
    LedgerSchemaError,
    SubmissionState,
    attempts_by_prompt,
    may_submit,
)
from krea_dagster.engine.ledger.schema import meta_table
from krea_dagster.engine.manifest import build_manifest
from krea_dagster.engine.reconcile import ClockBounds, WindowUnplaceable, clock_bounds

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


ACCOUNT = "key-id-1"


def claim_result(
    ledger: Ledger,
    key: str = "k1",
    batch: str = "b1",
    generation: int = 1,
    max_attempts: int = 3,
    account: str = ACCOUNT,
    lease_seconds: float = 60.0,
    **send: Any,
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
        account=account,
        lease_seconds=lease_seconds,
        **send,
    )


def claim(ledger: Ledger, key: str = "k1", **kwargs):
    """The intent row, or None when the prompt is covered (fails if the lease was busy)."""
    result = claim_result(ledger, key, **kwargs)
    assert result.lease is None, f"lease held by {result.lease}"
    return result.row


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
    spring = claim(ledger, batch="spring")
    assert spring is not None
    ledger.mark_submitted(spring.submission_id, job_id="j1", status="queued", created_at=T0)
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


def test_generations_are_opened_once_per_regeneration_request(ledger):
    """A regeneration request opens generation n+1 once; its retries and re-executions reuse it."""
    assert ledger.ensure_generation("s", "b1") == 1
    assert ledger.start_generation("s", "b1", reason="regenerate", request_id="tick-1") == 2
    assert ledger.start_generation("s", "b1", reason="regenerate", request_id="tick-1") == 2
    assert ledger.start_generation("s", "b1", reason="regenerate", request_id="tick-2") == 3
    assert ledger.start_generation("s", "b1", reason="regenerate", request_id="tick-1") == 2
    assert ledger.batches("s") == [("b1", 3)]


def test_concurrent_openers_of_one_regeneration_agree(tmp_path):
    """Workers racing to open one regeneration request get one generation between them."""
    url = f"sqlite:///{tmp_path / 'gen.db'}"
    Ledger(url).ensure_generation("s", "b1")
    opened: list[int] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        mine = Ledger(url)
        barrier.wait()
        opened.append(mine.start_generation("s", "b1", reason="regenerate", request_id="r"))
        mine.dispose()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert opened == [2] * 6
    assert Ledger(url).current_generation("s", "b1") == 2


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


# -- the submit lease ---------------------------------------------------------------------------


def test_an_unresolved_row_holds_the_account_lease_until_answered(ledger):
    """With one lane, while one prompt's POST is unresolved no other prompt of the account
    can be claimed."""
    first = claim(ledger, "k1")
    busy = claim_result(ledger, "k2")
    assert busy.row is None and busy.lease is not None
    assert busy.lease.holder.submission_id == first.submission_id
    assert not busy.lease.is_expired(datetime.now(UTC))
    ledger.mark_submitted(first.submission_id, job_id="j1", status="queued", created_at=T0)
    assert claim(ledger, "k2") is not None


def test_the_lease_is_per_account(ledger):
    """Another Krea account's submissions do not wait for this one's lease."""
    claim(ledger, "k1", account="a")
    assert claim(ledger, "k2", account="b") is not None


def test_an_ambiguous_row_keeps_its_lease_its_released_lane_goes_on_and_a_resolution_frees_it(
    ledger,
):
    """mark_unknown keeps the row's lane and lease (a live worker reconciles it); release_lane
    frees the lane for the next POST and keeps the lease; reporting it deletes the lease."""
    row = claim(ledger, "k1")
    ledger.mark_unknown(row.submission_id, message="dropped")
    (held,) = ledger.leases(ACCOUNT)
    assert held.holder.submission_id == row.submission_id and held.lane == 0
    busy = claim_result(ledger, "k2")  # the only lane is still the lost row's
    assert busy.row is None and busy.lease is not None
    ledger.release_lane(row.submission_id)
    (parked,) = ledger.leases(ACCOUNT)
    assert parked.holder.submission_id == row.submission_id and parked.lane is None
    assert ledger.live_holders(ACCOUNT) == {row.submission_id}
    second = claim(ledger, "k2")
    assert second is not None
    assert ledger.live_holders(ACCOUNT) == {row.submission_id, second.submission_id}
    assert ledger.mark_reported(row.submission_id, message="two candidates")
    assert [lease.holder.submission_id for lease in ledger.leases(ACCOUNT)] == [
        second.submission_id
    ]
    assert ledger.live_holders(ACCOUNT) == {second.submission_id}


def test_a_lease_of_another_host_expires_by_time_whatever_its_run_says(ledger):
    """A worker on another host (its run maybe still STARTED) holds nothing past expires_at."""
    row = claim(ledger, "k1", lease_seconds=60)
    with ledger.transaction() as conn:
        conn.execute(sa.text("UPDATE krea_submit_leases SET owner_host='elsewhere'"))
    (lease,) = ledger.leases(ACCOUNT)
    assert lease.holder.submission_id == row.submission_id
    assert not lease.is_expired(datetime.now(UTC))
    assert lease.is_expired(datetime.now(UTC) + timedelta(seconds=61))


def test_a_lease_of_a_dead_local_process_expires_at_once(ledger):
    """On this host a lease whose process is gone is expired without waiting out its time."""
    claim(ledger, "k1", lease_seconds=600)
    with ledger.transaction() as conn:
        conn.execute(sa.text(f"UPDATE krea_submit_leases SET owner_pid={2**22 + 12345}"))
    (lease,) = ledger.leases(ACCOUNT)
    assert lease.is_expired(datetime.now(UTC))
    assert ledger.live_holders(ACCOUNT) == set()


def test_note_send_refuses_once_the_lease_has_expired(ledger):
    """A sender whose lease expired (and may have been taken over) is told not to send."""
    row = claim(ledger, "k1", lease_seconds=60)
    assert ledger.note_send(row.submission_id, sent_at=datetime.now(UTC), lease_seconds=60)
    assert ledger.get(row.submission_id).sent_at is not None
    with ledger.transaction() as conn:
        conn.execute(
            sa.text("UPDATE krea_submit_leases SET expires_at=:t"),
            {"t": datetime.now(UTC) - timedelta(seconds=1)},
        )
    assert not ledger.note_send(row.submission_id, sent_at=datetime.now(UTC), lease_seconds=60)


def test_note_send_refuses_a_row_that_is_no_longer_an_intent(ledger):
    """A row whose outcome went unknown keeps its lease, but no later attempt of it may be
    sent: note_send changes nothing (the lease is not extended) and says so."""
    row = claim(ledger, "k1", lease_seconds=60)
    (before,) = ledger.leases(ACCOUNT)
    assert ledger.mark_unknown(row.submission_id, message="dropped")
    assert not ledger.note_send(row.submission_id, sent_at=datetime.now(UTC), lease_seconds=600)
    after = ledger.get(row.submission_id)
    assert after.sent_at is None and after.state == SubmissionState.UNKNOWN
    (kept,) = ledger.leases(ACCOUNT)
    assert kept.expires_at == before.expires_at


def test_note_send_refuses_an_unknown_row_that_still_holds_a_lane(ledger):
    """The state guard alone refuses a send for an unknown row on a lane (as a version 4
    ledger's upgraded lease is), and rolls back the lease extension it made first."""
    row = claim(ledger, "k1", lease_seconds=60)
    (before,) = ledger.leases(ACCOUNT)
    with ledger.transaction() as conn:
        conn.execute(sa.text("UPDATE krea_submissions SET state='unknown'"))
    assert not ledger.note_send(row.submission_id, sent_at=datetime.now(UTC), lease_seconds=600)
    (kept,) = ledger.leases(ACCOUNT)
    assert kept.lane == 0 and kept.expires_at == before.expires_at
    assert ledger.get(row.submission_id).sent_at is None


def test_a_claim_records_the_first_send_and_returns_the_row_as_written(ledger):
    """The claim writes the first attempt's send time and offset with the intent, and hands
    back the row exactly as a read of it returns it."""
    sent_at = datetime.now(UTC)
    row = claim_result(ledger, "k1", sent_at=sent_at, krea_offset=(-0.5, 1.5)).row
    assert row is not None
    assert row.sent_at == sent_at and (row.krea_offset_low, row.krea_offset_high) == (-0.5, 1.5)
    assert row == ledger.get(row.submission_id)


def test_an_answer_after_a_takeover_is_written_once(ledger):
    """Two resolvers of one row (late POST answer, a reconciler) write it once."""
    row = claim(ledger, "k1")
    ledger.mark_unknown(row.submission_id, message="dropped")
    assert ledger.mark_not_created(row.submission_id, code="reconciled_not_created", message="")
    assert not ledger.attribute(row.submission_id, job_id="j1", status="queued", created_at=T0)
    assert ledger.get(row.submission_id).state == SubmissionState.NOT_CREATED


def test_a_reported_prompt_is_never_claimed_again(ledger):
    """Reconciliation could not decide: the prompt is not re-sent on a guess."""
    row = claim(ledger, "k1")
    ledger.mark_unknown(row.submission_id, message="dropped")
    ledger.mark_reported(row.submission_id, message="two candidates")
    assert claim(ledger, "k1") is None
    assert [r.submission_id for r in ledger.reported("s")] == [row.submission_id]
    assert ledger.unresolved() == []


# -- guarded writes -------------------------------------------------------------------------------


def test_live_statuses_never_move_backwards(ledger):
    """'processing' after 'sampling' is a stale page: ignored; an unknown new status is kept."""
    row = claim(ledger)
    ledger.mark_submitted(row.submission_id, job_id="j1", status="queued", created_at=T0)
    ledger.update_jobs([JobUpdate("j1", "sampling")])
    assert ledger.update_jobs([JobUpdate("j1", "processing")]) == []
    assert ledger.get(row.submission_id).state == "sampling"


def test_every_completed_row_carries_its_cost_however_it_was_learnt(ledger):
    """Completed by a poll, by the POST answer or by reconciliation: cost_usd is set."""
    polled = claim(ledger, "k1")
    ledger.mark_submitted(polled.submission_id, job_id="j1", status="queued", created_at=T0)
    ledger.update_jobs([JobUpdate("j1", "completed")])
    answered = claim(ledger, "k2")
    ledger.mark_submitted(answered.submission_id, job_id="j2", status="completed", created_at=T0)
    found = claim(ledger, "k3")
    ledger.mark_unknown(found.submission_id, message="dropped")
    ledger.attribute(found.submission_id, job_id="j3", status="completed", created_at=T0)
    costs = [ledger.get(r.submission_id).cost_usd for r in (polled, answered, found)]
    assert costs == [0.007, 0.007, 0.007]


def test_clock_bounds_come_from_answered_rows(ledger):
    """Answered rows bound Krea's clock offset; no evidence, or contradictory rows, give no
    bound at all (nothing is assumed)."""
    with pytest.raises(WindowUnplaceable, match="never measured"):
        clock_bounds([])
    row = claim(ledger)
    ledger.note_send(row.submission_id, sent_at=datetime.now(UTC), lease_seconds=60)
    ledger.mark_submitted(
        row.submission_id,
        job_id="j1",
        status="queued",
        created_at=datetime.now(UTC) + timedelta(seconds=10),
    )
    answered = ledger.get(row.submission_id)
    bounds = clock_bounds([answered])
    assert bounds is not None
    assert timedelta(seconds=9) < bounds.low <= bounds.high < timedelta(seconds=11)
    import dataclasses

    stepped = dataclasses.replace(
        answered, krea_created_at=answered.krea_created_at - timedelta(hours=1)
    )
    with pytest.raises(WindowUnplaceable, match="contradict"):
        clock_bounds([answered, stepped])
    measured = ClockBounds(timedelta(seconds=9.5), timedelta(seconds=30))
    assert clock_bounds([answered], measured).low >= timedelta(seconds=9.25)


def test_a_version_1_ledger_is_upgraded_in_place(tmp_path):
    """A ledger written by the previous schema gains the new columns and keeps its rows."""
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE krea_ledger_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(256) NOT NULL)"
            )
        )
        conn.execute(sa.text("INSERT INTO krea_ledger_meta VALUES ('schema_version', '1')"))
        conn.execute(
            sa.text(
                "CREATE TABLE krea_generations (scope VARCHAR(128), batch VARCHAR(256), generation INTEGER, "
                "reason VARCHAR(64) NOT NULL, run_id VARCHAR(64), started_at DATETIME NOT NULL, "
                "PRIMARY KEY (scope, batch, generation))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO krea_generations VALUES ('s', 'b1', 1, 'first', NULL, '2026-11-01 00:00:00')"
            )
        )
    engine.dispose()
    ledger = Ledger(url)
    assert ledger.current_generation("s", "b1") == 1
    assert ledger.start_generation("s", "b1", reason="regenerate", request_id="r") == 2
    with ledger.engine.connect() as conn:
        version = conn.execute(sa.select(meta_table.c.value)).scalar_one()
    assert version == str(SCHEMA_VERSION)


def node_app_claim(ledger: Ledger, key: str = "k1"):
    """An intent row of a node-app execution."""
    result = ledger.claim(
        scope="s",
        batch="b1",
        generation=1,
        prompt_key=key,
        model="node-app/app-1",
        request={"product": key},
        request_hash="h",
        submission_id=str(uuid.uuid4()),
        estimated_usd=0.5,
        run_id="run",
        max_attempts=3,
        account=ACCOUNT,
        lease_seconds=60.0,
    )
    assert result.row is not None
    return result.row


def test_a_node_app_answer_records_one_output_row_per_further_job(ledger):
    """Each further job of an execution gets an output row in the answer's transaction."""
    row = node_app_claim(ledger)
    assert ledger.jobs_per_submission("node-app/app-1") is None
    more = [JobUpdate("j2", "queued", created_at=T0), JobUpdate("j3", "queued", created_at=T0)]
    assert ledger.mark_submitted(
        row.submission_id, job_id="j1", status="queued", created_at=T0, more_jobs=more
    )
    outputs = ledger.outputs([row.submission_id])[row.submission_id]
    assert [out.job_id for out in outputs] == ["j2", "j3"]
    assert {out.parent_id for out in outputs} == {row.submission_id}
    assert len({out.prompt_key for out in outputs} | {row.prompt_key}) == 3
    assert all(out.estimated_usd == 0.0 and out.account == ACCOUNT for out in outputs)
    assert ledger.leases(ACCOUNT) == []  # the answer deleted the row's lease
    assert ledger.jobs_per_submission("node-app/app-1") == 3
    # Every job is polled like any other; the prompt stays covered by its submission row.
    assert {r.job_id for r in ledger.pending("s", "b1")} == {"j1", "j2", "j3"}
    ledger.update_jobs([JobUpdate(job, "completed") for job in ("j1", "j2", "j3")])
    assert node_app_claim_result_covered(ledger)
    completed = ledger.get_many([row.submission_id, *(o.submission_id for o in outputs)])
    assert [r.cost_usd for r in completed] == [pytest.approx(0.5), 0.0, 0.0]
    assert ledger.known_job_ids(T0 - timedelta(seconds=1), T0 + timedelta(seconds=1)) == {
        "j1",
        "j2",
        "j3",
    }


def node_app_claim_result_covered(ledger: Ledger) -> bool:
    result = claim_result(ledger, "k1")
    return result.row is None and result.covered


def test_an_attributed_node_app_row_gets_its_output_rows_and_a_second_answer_none(ledger):
    """Reconciliation's attribution writes the output rows once; a late writer adds nothing."""
    row = node_app_claim(ledger)
    ledger.mark_unknown(row.submission_id, message="read timeout")
    assert ledger.attribute(
        row.submission_id,
        job_id="j1",
        status="processing",
        created_at=T0,
        more_jobs=[JobUpdate("j2", "processing", created_at=T0)],
    )
    assert not ledger.mark_submitted(
        row.submission_id,
        job_id="j1",
        status="queued",
        created_at=T0,
        more_jobs=[JobUpdate("j2", "queued", created_at=T0)],
    )
    outputs = ledger.outputs([row.submission_id])
    assert [out.job_id for out in outputs[row.submission_id]] == ["j2"]


def test_a_version_2_ledger_gains_output_rows_in_place(tmp_path):
    """A version 2 ledger keeps its rows and gains the parent_id column and its index."""
    url = f"sqlite:///{tmp_path / 'v2.db'}"
    ledger = Ledger(url)
    row = claim(ledger)
    ledger.mark_submitted(row.submission_id, job_id="j1", status="queued", created_at=T0)
    with ledger.transaction() as conn:
        conn.execute(sa.text("DROP INDEX ix_krea_submissions_parent"))
        conn.execute(sa.text("ALTER TABLE krea_submissions DROP COLUMN parent_id"))
        conn.execute(sa.text("UPDATE krea_ledger_meta SET value='2'"))
    ledger.dispose()
    upgraded = Ledger(url)
    assert upgraded.get(row.submission_id).job_id == "j1"
    assert upgraded.get(row.submission_id).parent_id is None
    with upgraded.engine.connect() as conn:
        assert conn.execute(sa.select(meta_table.c.value)).scalar_one() == str(SCHEMA_VERSION)
        indexes = {index["name"] for index in sa.inspect(conn).get_indexes("krea_submissions")}
    assert "ix_krea_submissions_parent" in indexes


def test_a_node_app_execution_with_a_completed_job_is_covered_and_charged_whatever_its_first(
    ledger,
):
    """A node-app execution whose first job failed transiently and whose second completed is
    never executed again (claim, re-run) and is charged its price in the manifest's cost."""
    row = claim(ledger)
    assert ledger.mark_submitted(
        row.submission_id,
        job_id="j1",
        status="failed",
        created_at=T0,
        error_code="timeout",
        error_message="the provider timed out",
        more_jobs=[JobUpdate("j2", "processing", created_at=T0)],
    )
    assert ledger.get(row.submission_id).cost_usd is None
    ledger.update_jobs([JobUpdate("j2", "completed", result_url="https://cdn/j2.png")])
    rows = ledger.rows("s", "b1", 1)
    attempts, outputs = attempts_by_prompt(rows)
    assert not may_submit(attempts["k1"], 3, outputs)
    assert claim_result(ledger).covered
    charged = ledger.get(row.submission_id)
    assert charged.state == "failed" and charged.error_code == "timeout"
    assert charged.cost_usd == 0.007
    prompts = pd.DataFrame([{"row": 0, "prompt_key": "k1", "prompt": "p", "variant": ""}])
    manifest = build_manifest(
        prompts,
        {"k1": charged},
        batch="b1",
        generation=1,
        outputs=ledger.outputs([row.submission_id]),
    )
    assert manifest["cost_usd"].tolist() == [0.007]


def test_a_node_app_execution_whose_jobs_all_failed_transiently_may_run_again(ledger):
    """Nothing billed, nothing covered: an execution whose every job failed may be sent again."""
    row = claim(ledger)
    ledger.mark_submitted(
        row.submission_id,
        job_id="j1",
        status="failed",
        created_at=T0,
        error_code="timeout",
        more_jobs=[JobUpdate("j2", "failed", error_code="internal_error", created_at=T0)],
    )
    assert claim(ledger) is not None


def test_an_answer_written_after_the_jobs_ended_keeps_krea_errors_on_every_row(ledger):
    """A lost answer settled after its jobs failed keeps Krea's code and message on the
    submission row and on each output row (the code decides retries)."""
    row = claim(ledger)
    ledger.mark_unknown(row.submission_id, message="connection dropped")
    assert ledger.attribute(
        row.submission_id,
        **JobUpdate("j1", "failed", "internal_error", "provider failed", created_at=T0).answer(),
        more_jobs=[JobUpdate("j2", "failed", "nsfw", "flagged", created_at=T0)],
    )
    first = ledger.get(row.submission_id)
    (second,) = ledger.outputs([row.submission_id])[row.submission_id]
    assert (first.error_code, first.error_message) == ("internal_error", "provider failed")
    assert (second.error_code, second.error_message) == ("nsfw", "flagged")


def test_a_poll_keeps_the_late_marker_and_krea_code_both(ledger):
    """A late answer's row keeps its marker (``late_answer_of``) through polls, while its
    error code is Krea's own; a job reconciliation already matched is no late answer."""
    row = claim(ledger)
    ledger.mark_not_created(row.submission_id, code="reconciled_not_created", message="gone")
    late = ledger.record_late_job(row, JobUpdate("j-late", "queued", created_at=T0))
    assert late is not None and late.late_answer_of == row.submission_id
    ledger.update_jobs([JobUpdate("j-late", "failed", "internal_error", "provider failed")])
    polled = ledger.get(late.submission_id)
    assert polled.late_answer_of == row.submission_id
    assert (polled.error_code, polled.error_message) == ("internal_error", "provider failed")
    assert ledger.record_late_job(row, JobUpdate("j-late", "failed")) is None


class MigratesAfterAnotherThreadLooked(Ledger):
    """A fresh ledger whose first use stops between making its engine and creating its schema
    until another thread has used the ledger (at most 5 s): the overlap of the lanes' first
    claims, forced."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.engine_made = threading.Event()
        self.other_used_it = threading.Event()
        self._first = True

    def _migrate(self, engine: sa.Engine) -> None:
        if self._first:
            self._first = False
            self.engine_made.set()
            self.other_used_it.wait(timeout=5)
        super()._migrate(engine)


def test_threads_whose_first_ledger_calls_overlap_all_find_the_schema(tmp_path):
    """Two threads use a fresh ledger at once (the first claims of several submit lanes): the
    second never reads an engine whose tables are not created yet."""
    ledger = MigratesAfterAnotherThreadLooked(f"sqlite:///{tmp_path / 'ledger.db'}")
    failures: list[BaseException] = []

    def second() -> None:
        assert ledger.engine_made.wait(timeout=30)
        try:
            ledger.rows("s")
        except BaseException as error:
            failures.append(error)
        finally:
            ledger.other_used_it.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert ledger.rows("s") == []
    thread.join()
    assert failures == []
