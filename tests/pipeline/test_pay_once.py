"""The pay-once promise on the paths that used to break it (issue 14), each through real runs.

Each test is one path: a retried regeneration, a crash after long 429 waits, two ledgers on one
account, transient job failures, an old unresolved row, the cost of reconciled rows, and a
worker on another host that died with its run still STARTED.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import sqlalchemy as sa

from krea_dagster.engine.crashpoints import CRASH_ENV
from krea_dagster.engine.ledger import Ledger, SubmissionState
from krea_dagster.execution import (
    REGENERATE_TAG,
    REGENERATION_ID_TAG,
    KreaJobsConfig,
)
from krea_dagster.execution import regeneration_id as _regeneration_id

from .conftest import (
    check_results,
    make_resource,
    manifest_of,
    materialize,
    prompt_rows,
    write_batch,
)

DRIVER = Path(__file__).with_name("crash_driver.py")
PRICE = 0.007  # bfl/flux-1-dev at the default size


def run_driver(tmp_path, emulator, *, prefix, ledger, store, crash_at=None, tags=None, wait=True):
    """Run one batch (b1) in a separate run-worker process (killed at ``crash_at``)."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "KREA_DRIVER_PREFIX": prefix}
    if crash_at:
        env[CRASH_ENV] = crash_at
    if tags:
        env["KREA_DRIVER_TAGS"] = json.dumps(tags)
    command = [sys.executable, str(DRIVER), str(tmp_path / "prompts"), str(store), ledger]
    command += [emulator.base_url, emulator.token, "b1"]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, env=env, capture_output=True, timeout=300)


def intent_of_first_prompt(assets, krea, batch: str, run_id: str):
    """An intent row for the batch's first prompt, as a worker that then vanished left it."""
    ledger = assets.pipeline.ledger
    ledger.ensure_generation(assets.prefix, batch)
    key = assets.node.prepare(0, batch).table["prompt_key"].iloc[0]
    claim = ledger.claim(
        scope=assets.prefix,
        batch=batch,
        generation=1,
        prompt_key=key,
        model=assets.pipeline.model,
        request={"prompt": key},
        request_hash="h",
        submission_id=str(uuid.uuid4()),
        estimated_usd=PRICE,
        run_id=run_id,
        max_attempts=3,
        account=krea.account_id,
        lease_seconds=60,
    )
    assert claim.row is not None
    return claim.row


@pytest.fixture
def home_instance(tmp_path):
    """The persistent instance the driver processes use too."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


def test_a_retried_regeneration_run_pays_for_the_batch_once(
    tmp_path, build, emulator, krea, prompts_dir, home_instance
):
    """A regeneration run killed mid-batch and retried (same tags) pays N for it, not 2N."""
    write_batch(prompts_dir, "b1", prompt_rows(4))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assets = build("crash", store=tmp_path / "store", ledger=ledger_url)
    home_instance.add_dynamic_partitions(assets.partitions_def.name, ["b1"])
    assert materialize(assets, "b1", instance=home_instance, krea=krea).success
    tags = {REGENERATE_TAG: "true", REGENERATION_ID_TAG: "launch-1"}
    killed = run_driver(
        tmp_path,
        emulator,
        prefix="crash",
        ledger=ledger_url,
        store=tmp_path / "store",
        crash_at="submit.after_post",
        tags=tags,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    retry = materialize(assets, "b1", instance=home_instance, krea=krea, tags=tags)
    assert retry.success
    stats = emulator.stats()
    assert stats["jobs_billed"] == 8  # 4 first + 4 regenerated, whatever was killed between
    assert stats["jobs_created"] == 8
    ledger = Ledger(ledger_url)
    assert ledger.current_generation("crash", "b1") == 2
    assert set(manifest_of(retry, assets)["generation"]) == {2}


def test_the_regeneration_id_comes_from_the_tag_then_the_root_run():
    """Retries and re-executions share the tag or the root run id; no regeneration, no id."""
    plain = KreaJobsConfig()

    def context(tags, root=None, run_id="run-2"):
        return SimpleNamespace(run=SimpleNamespace(tags=tags, root_run_id=root, run_id=run_id))

    assert _regeneration_id(context({}), plain) is None
    assert _regeneration_id(context({REGENERATE_TAG: "true"}, root="run-1"), plain) == "run-1"
    assert _regeneration_id(context({REGENERATE_TAG: "true"}), plain) == "run-2"
    tagged = context({REGENERATE_TAG: "true", REGENERATION_ID_TAG: "tick-9"}, root="run-1")
    assert _regeneration_id(tagged, plain) == "tick-9"
    assert _regeneration_id(context({}), KreaJobsConfig(regenerate=True)) == "run-2"


def test_a_crash_after_long_429_waits_is_reconciled_not_resent(
    tmp_path, build, emulator, krea, prompts_dir, home_instance
):
    """A POST sent after 429 waits longer than the request window, then a kill: found, not re-sent."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assets = build("crash", store=tmp_path / "store", ledger=ledger_url)
    home_instance.add_dynamic_partitions(assets.partitions_def.name, ["b1"])
    emulator.configure(burst_429_every=1, burst_429_length=1)  # every POST answers 429
    worker = run_driver(
        tmp_path,
        emulator,
        prefix="crash",
        ledger=ledger_url,
        store=tmp_path / "store",
        crash_at="submit.after_post",
        wait=False,
    )
    try:
        emulator.wait_until(
            lambda stats: stats["faults_injected"].get("burst_429", 0) >= 1, timeout=120
        )
        emulator.configure(burst_429_every=0, burst_429_length=0)  # the retry after ~10 s passes
        worker.wait(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == -signal.SIGKILL, worker.stderr.read().decode()[-2000:]
    assert emulator.stats()["jobs_created"] == 1
    result = materialize(assets, "b1", instance=home_instance, krea=krea)
    assert result.success
    stats = emulator.stats()
    assert stats["jobs_created"] == 1 and stats["duplicate_submissions"] == 0
    assert list(manifest_of(result, assets)["status"]) == ["completed"]


@pytest.mark.parametrize(
    "crash_at", ["submit.after_intent", "submit.after_post"], ids=["before-post", "after-post"]
)
def test_two_ledgers_on_one_account_never_take_or_cancel_each_others_jobs(
    crash_at, tmp_path, build, emulator, krea, prompts_dir, home_instance
):
    """Instance A crashes; instance B (another ledger, same token) submits; A's re-run claims
    none of B's jobs, cancels none of them and re-sends nothing B's jobs could hide."""
    write_batch(prompts_dir, "b1", prompt_rows(3, text="instance A prompt"))
    other_prompts = tmp_path / "other_prompts"
    other_prompts.mkdir()
    write_batch(other_prompts, "b1", prompt_rows(5, text="instance B prompt"))
    emulator.configure(render_seconds=5.0, time_scale=1.0)  # B's jobs stay pending a while
    ledger_a = f"sqlite:///{tmp_path / 'a.db'}"
    a = build("ledger_a", store=tmp_path / "store_a", ledger=ledger_a)
    b = build(
        "ledger_b",
        prompts=other_prompts,
        store=tmp_path / "store_b",
        ledger=f"sqlite:///{tmp_path / 'b.db'}",
    )
    home_instance.add_dynamic_partitions(a.partitions_def.name, ["b1"])
    killed = run_driver(
        tmp_path,
        emulator,
        prefix="ledger_a",
        ledger=ledger_a,
        store=tmp_path / "store_a",
        crash_at=crash_at,
    )
    assert killed.returncode == -signal.SIGKILL
    b_jobs = materialize(b, "b1", instance=home_instance, krea=krea, roles=("prompts", "jobs"))
    assert b_jobs.success
    b_job_ids = {row.job_id for row in b.pipeline.ledger.rows("ledger_b")}
    result = materialize(
        a, "b1", instance=home_instance, krea=make_resource(emulator, poll_timeout=60)
    )
    a_job_ids = {row.job_id for row in a.pipeline.ledger.rows("ledger_a") if row.job_id}
    assert not a_job_ids & b_job_ids, "instance A attributed instance B's job to its own prompt"
    stats = emulator.stats()
    assert stats["jobs_by_status"].get("cancelled", 0) == 0, "A cancelled B's jobs"
    assert stats["duplicate_submissions"] == 0
    manifest = manifest_of(result, a)
    assert not set(manifest["job_id"].dropna()) & b_job_ids
    if crash_at == "submit.after_intent":
        # The claim had recorded the killed POST's send time: B's jobs fall in its window, so
        # that prompt is reported (a person decides), never matched to B's jobs or re-sent.
        assert sorted(manifest["status"]) == ["completed", "completed", "unresolved"]
        assert len(a.pipeline.ledger.reported("ledger_a")) == 1
        assert stats["jobs_created"] == 2 + 5


def test_transient_job_failures_are_resubmitted_within_the_run_and_permanent_ones_never(
    build, emulator, krea, instance, prompts_dir
):
    """internal_error jobs are sent again in the same run (unbilled failures); safety_filter never."""
    write_batch(prompts_dir, "b1", prompt_rows(8))
    emulator.configure(job_failure_rate=0.4, job_failures=[["internal_error", "provider failed"]])
    assets = build(max_attempts=6, max_failed_fraction=1.0)
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert result.success
    manifest = manifest_of(result, assets)
    assert set(manifest["status"]) == {"completed"}
    stats = emulator.stats()
    assert stats["jobs_created"] > 8 and stats["jobs_billed"] == 8
    # Every repeated request is the resubmission of a failed (unbilled) job, nothing else:
    # repeats, none of them a double payment.
    assert stats["repeated_requests"] == stats["jobs_by_status"]["failed"]
    assert stats["duplicate_submissions"] == 0

    write_batch(prompts_dir, "b2", prompt_rows(6, text="other"))
    emulator.configure(job_failure_rate=1.0, job_failures=[["safety_filter", "blocked"]])
    before = emulator.stats()["jobs_created"]
    blocked = materialize(assets, "b2", instance=instance, krea=krea)
    assert set(manifest_of(blocked, assets)["status"]) == {"failed"}
    assert emulator.stats()["jobs_created"] - before == 6


def test_an_old_unresolved_row_is_decided_once_and_never_pages_back_again(
    tmp_path, build, emulator, krea, instance, prompts_dir
):
    """A row left unresolved a day ago is reconciled from its own window once; later runs list
    nothing, and a reported row fails the check that names it."""
    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build()
    ledger = assets.pipeline.ledger
    day_ago = datetime.now(UTC) - timedelta(days=1)
    intent_of_first_prompt(assets, krea, "b1", run_id="gone")
    with ledger.transaction() as conn:
        # Sent a day ago, with the offset to Krea's clock a real send records (emulator: 0).
        conn.execute(
            sa.text(
                "UPDATE krea_submissions SET sent_at=:t, intent_at=:t, "
                "krea_offset_low=-1, krea_offset_high=1"
            ),
            {"t": day_ago},
        )
        conn.execute(sa.text("UPDATE krea_submit_leases SET expires_at=:t"), {"t": day_ago})
    first = materialize(assets, "b1", instance=instance, krea=krea)
    assert first.success
    assert set(manifest_of(first, assets)["status"]) == {"completed"}
    lists = emulator.stats()["requests_by_route"].get("GET /jobs", 0)
    assert lists <= 2  # one to read Krea's clock, one page read from the window's end
    again = materialize(assets, "b1", instance=instance, krea=krea)
    assert again.success
    assert emulator.stats()["requests_by_route"].get("GET /jobs", 0) == lists

    # A reported row: out of the unresolved set, named by the failing check.
    write_batch(prompts_dir, "b2", prompt_rows(1, text="reported"))
    row = intent_of_first_prompt(assets, krea, "b2", run_id="gone")
    ledger.mark_unknown(row.submission_id, message="dropped")
    ledger.mark_reported(row.submission_id, message="2 jobs in the window: j-a, j-b")
    reported = materialize(assets, "b2", instance=instance, krea=krea)
    assert ledger.unresolved() == []
    assert check_results(reported)["every_prompt_resolved"] is False
    (evaluation,) = [
        e for e in reported.get_asset_check_evaluations() if e.check_name == "every_prompt_resolved"
    ]
    assert row.submission_id in json.dumps(evaluation.metadata["krea/reported"].value)
    assert emulator.stats()["jobs_created"] == 2  # the reported prompt was not re-sent


def test_spend_is_complete_after_a_crash_between_post_and_ledger(
    tmp_path, build, emulator, krea, prompts_dir, home_instance
):
    """The job a crashed worker created is attributed with its cost: the manifest sums what was billed."""
    write_batch(prompts_dir, "b1", prompt_rows(5))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assets = build("crash", store=tmp_path / "store", ledger=ledger_url)
    home_instance.add_dynamic_partitions(assets.partitions_def.name, ["b1"])
    killed = run_driver(
        tmp_path,
        emulator,
        prefix="crash",
        ledger=ledger_url,
        store=tmp_path / "store",
        crash_at="submit.after_post",
    )
    assert killed.returncode == -signal.SIGKILL
    time.sleep(0.5)  # let the orphaned job complete at Krea before it is reconciled
    result = materialize(assets, "b1", instance=home_instance, krea=krea)
    assert result.success
    manifest = manifest_of(result, assets)
    billed = emulator.stats()["jobs_billed"]
    assert billed == 5
    assert manifest["cost_usd"].sum() == pytest.approx(billed * PRICE)
    rows = Ledger(ledger_url).rows("crash", "b1")
    assert all(row.cost_usd == pytest.approx(PRICE) for row in rows if row.is_paid)


def test_a_worker_that_died_on_another_host_is_not_trusted_forever(
    tmp_path, build, emulator, krea, prompts_dir, home_instance
):
    """A row written on another host whose run is still STARTED is taken over once its lease
    expires: the prompt is delivered, nobody waits out the poll timeout."""
    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build()
    ledger = assets.pipeline.ledger
    stuck_run = home_instance.create_run_for_job(
        dg.Definitions(
            jobs=[dg.JobDefinition(graph_def=dg.GraphDefinition("g", node_defs=[]), name="j")]
        ).get_job_def("j"),
        status=dg.DagsterRunStatus.STARTED,
    )
    row = intent_of_first_prompt(assets, krea, "b1", run_id=stuck_run.run_id)
    past = datetime.now(UTC) - timedelta(minutes=5)
    with ledger.transaction() as conn:
        # Sent from another host, with the offset to Krea's clock it measured (emulator: 0).
        conn.execute(
            sa.text(
                "UPDATE krea_submissions SET owner_host='elsewhere', sent_at=:t, "
                "krea_offset_low=-1, krea_offset_high=1"
            ),
            {"t": past},
        )
        conn.execute(
            sa.text("UPDATE krea_submit_leases SET owner_host='elsewhere', expires_at=:t"),
            {"t": past},
        )
    assert home_instance.get_run_by_id(stuck_run.run_id).status == dg.DagsterRunStatus.STARTED
    result = materialize(
        assets, "b1", instance=home_instance, krea=make_resource(emulator, poll_timeout=30)
    )
    assert result.success
    assert set(manifest_of(result, assets)["status"]) == {"completed"}
    assert ledger.get(row.submission_id).state == SubmissionState.NOT_CREATED
    assert emulator.stats()["jobs_created"] == 2


def test_a_slow_sent_at_write_is_redone_so_the_window_covers_the_real_send(
    build, emulator, krea, instance, prompts_dir, monkeypatch
):
    """A database that takes 1.5 s to record the send time with the claim: the time is written
    again, so the recorded sent_at precedes the job Krea created by less than SEND_SLACK."""
    from krea_dagster.engine.reconcile import SEND_SLACK

    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build()
    slow_once = {"left": 1}
    original = Ledger.claim

    def slow_claim(self, **kwargs):
        if slow_once["left"]:
            slow_once["left"] -= 1
            time.sleep(1.5)
        return original(self, **kwargs)

    monkeypatch.setattr(Ledger, "claim", slow_claim)
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert result.success and slow_once["left"] == 0
    (row,) = assets.pipeline.ledger.rows(assets.prefix, "b1")
    assert row.sent_at is not None and row.krea_created_at is not None
    assert timedelta(0) <= row.krea_created_at - row.sent_at < SEND_SLACK + timedelta(seconds=1)


def test_a_late_answer_after_a_takeover_is_kept_on_record(
    build, emulator, krea, instance, prompts_dir, monkeypatch
):
    """Krea answers a POST whose row another worker already resolved: the job gets a row of
    its own, so the ledger knows every job Krea made and the prompt is not sent again."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build(max_failed_fraction=1.0)
    original = Ledger.mark_submitted

    def taken_over(self, submission_id, **kwargs):
        # Another worker reconciled the row (its lease expired) while the POST was in flight.
        self.mark_not_created(submission_id, code="reconciled_not_created", message="gone")
        return original(self, submission_id, **kwargs)

    monkeypatch.setattr(Ledger, "mark_submitted", taken_over)
    materialize(assets, "b1", instance=instance, krea=krea)
    monkeypatch.setattr(Ledger, "mark_submitted", original)
    first, late = assets.pipeline.ledger.rows(assets.prefix, "b1")
    assert first.state == "not_created" and first.job_id is None
    assert late.attempt == 2 and late.job_id is not None and late.state == "completed"
    assert late.cost_usd == pytest.approx(PRICE)
    stats = emulator.stats()
    assert stats["jobs_created"] == 1  # known to the ledger, so never sent again


def test_a_row_claimed_while_another_worker_settles_is_left_to_its_sender(
    tmp_path, build, emulator, krea, prompts_dir
):
    """Settling reads the unresolved rows before the lease: a row another worker claims (and is
    sending) meanwhile is never decided from a stale copy. Seen once in CI as a 'late answer'
    row beside a 'not_created' one for the same prompt."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build()
    pipeline, ledger = assets.pipeline, assets.pipeline.ledger
    claimed = []
    real_unresolved = ledger.unresolved

    def unresolved_after_a_concurrent_claim(scope=None):
        # Another worker claims its prompt at this very moment (it holds the live lease).
        if not claimed:
            claimed.append(intent_of_first_prompt(assets, krea, "b1", run_id="other"))
        return real_unresolved(scope)

    ledger.unresolved = unresolved_after_a_concurrent_claim  # type: ignore[method-assign]

    async def settle():
        async with krea.async_client() as client:
            return await pipeline.settle(
                client, krea, log=SimpleNamespace(info=print, warning=print, error=print)
            )

    from krea_dagster.engine.run import run_coroutine

    assert run_coroutine(settle()) == []
    (row,) = claimed
    assert ledger.get(row.submission_id).state == SubmissionState.INTENT  # still its sender's
    assert row.submission_id in ledger.live_holders(krea.account_id)
