"""decide_cluster(): unresolved submissions whose windows overlap are decided together.

Pure decisions over windows and listed jobs (times in seconds after ``TEST_NOW``): what the
windows force is attributed, nothing is guessed, "not created" only once the horizon has
passed every window, and another submitter's job around the cluster reports all of it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from krea_dagster.api import Job
from krea_dagster.api.reconcile import (
    ClusterDecision,
    ReconciliationOutcome,
    SubmissionWindow,
    decide_cluster,
)

from .support import TEST_NOW, make_job

FOUND = ReconciliationOutcome.FOUND
NOT_CREATED = ReconciliationOutcome.NOT_CREATED
REPORTED = ReconciliationOutcome.UNDECIDABLE


def at(seconds: float) -> datetime:
    return TEST_NOW + timedelta(seconds=seconds)


def window(name: str, start: float, end: float, *, jobs: int | None = 1) -> SubmissionWindow:
    """Submission ``name``'s window from ``start`` to ``end`` seconds, 30 s guard band."""
    return SubmissionWindow(
        submitted_at=at(start),
        start=at(start),
        end=at(end),
        model="bfl/flux-1-dev",
        submission_id=name,
        guard=timedelta(seconds=30),
        jobs=jobs,
    )


def job(name: str, created: float, status: str = "queued") -> Job:
    return Job.from_api(make_job(name, status=status, created_at=at(created)))


def verdicts(decision: ClusterDecision) -> dict[str, object]:
    """Each submission's verdict: the job id(s) found, "not_created", "reported" or "waiting"."""
    found: dict[str, object] = {name: "waiting" for name in decision.waiting}
    for name, result in decision.decided.items():
        if result.outcome is FOUND:
            ids = [each.job_id for each in result.jobs]
            found[name] = ids[0] if len(ids) == 1 else ids
        else:
            found[name] = "not_created" if result.outcome is NOT_CREATED else "reported"
    return found


#: Two overlapping windows: a from 0 to 10 s, b from 5 to 15 s.
PAIR = [window("a", 0, 10), window("b", 5, 15)]


@pytest.mark.parametrize(
    ("jobs", "horizon", "expected"),
    [
        # A job only a's window holds is a's; the one both hold is then b's.
        ([job("j1", 3), job("j2", 7)], 20, {"a": "j1", "b": "j2"}),
        # Only a's job is listed and the windows are open: a's is forced, b waits.
        ([job("j1", 3)], 12, {"a": "j1", "b": "waiting"}),
        # The same once the horizon has passed b's window: b created nothing.
        ([job("j1", 3)], 20, {"a": "j1", "b": "not_created"}),
        # A job both windows hold could be either's: nothing is guessed while they are open...
        ([job("j2", 7)], 12, {"a": "waiting", "b": "waiting"}),
        # ... and both are reported once they have closed.
        ([job("j2", 7)], 20, {"a": "reported", "b": "reported"}),
        # Nothing in closed windows: neither created a job.
        ([], 20, {"a": "not_created", "b": "not_created"}),
        # A job created after the horizon may be a live send's: it does not count yet.
        ([job("j1", 3), job("late", 13)], 12, {"a": "j1", "b": "waiting"}),
    ],
    ids=[
        "forced-then-eliminated",
        "forced-one-waiting",
        "forced-one-not-created",
        "shared-job-waits",
        "shared-job-reported-once-closed",
        "nothing-not-created",
        "job-past-the-horizon-ignored",
    ],
)
def test_a_pair_of_overlapping_windows_attributes_only_what_they_force(
    jobs: list[Job], horizon: float, expected: dict[str, object]
) -> None:
    """Two overlapping windows: a job only one of them holds is that one's (and then so is the
    job left to the other), a shared job is never guessed, and "not created" waits for the
    horizon to pass every window."""
    assert verdicts(decide_cluster(PAIR, jobs, horizon=at(horizon))) == expected


def test_not_created_waits_for_the_horizon_to_pass_every_window_of_the_cluster() -> None:
    """A cluster with no job is not created only once the horizon is past its last window:
    a window closed on its own is still waited for while another of its cluster is open."""
    cluster = [window("a", 0, 10), window("b", 5, 15), window("c", 14, 30)]
    assert set(verdicts(decide_cluster(cluster, [], horizon=at(20))).values()) == {"waiting"}
    assert set(verdicts(decide_cluster(cluster, [], horizon=at(31))).values()) == {"not_created"}


def test_a_foreign_job_in_the_guard_band_reports_the_whole_cluster() -> None:
    """An unknown job around the cluster means another submitter: even a job only one window
    holds may be theirs, so every submission of the cluster is reported, none attributed."""
    decision = decide_cluster(
        PAIR, [job("j1", 3), job("j2", 7)], horizon=at(60), neighbours=[job("x", 40)]
    )
    assert verdicts(decision) == {"a": "reported", "b": "reported"}
    assert "another client or ledger" in decision.decided["a"].reason
    assert "x" in {each.job_id for each in decision.decided["a"].candidates}


def test_more_jobs_than_submissions_report_the_cluster() -> None:
    """Three unknown jobs for two submissions that make one job each: one is not theirs, so
    nothing is attributed, even the job only one window holds."""
    jobs = [job("j1", 3), job("j2", 7), job("j3", 8)]
    assert verdicts(decide_cluster(PAIR, jobs, horizon=at(60))) == {
        "a": "reported",
        "b": "reported",
    }


def test_two_jobs_only_one_window_holds_report_the_cluster() -> None:
    """Two jobs that only a's window holds: a made at most one, so the evidence contradicts
    itself and both submissions are reported."""
    jobs = [job("j1", 1), job("j2", 2), job("j3", 12)]
    assert set(verdicts(decide_cluster(PAIR, jobs, horizon=at(60))).values()) == {"reported"}


def test_a_cluster_of_one_is_the_single_window_rule() -> None:
    """One window alone: a lone job is attributed at once, nothing in it is not created only
    once it has closed, two jobs are reported."""
    alone = [window("a", 0, 10)]
    assert verdicts(decide_cluster(alone, [job("j1", 3)], horizon=at(5))) == {"a": "j1"}
    assert verdicts(decide_cluster(alone, [], horizon=at(5))) == {"a": "waiting"}
    assert verdicts(decide_cluster(alone, [], horizon=at(11))) == {"a": "not_created"}
    both = [job("j1", 3), job("j2", 4)]
    assert verdicts(decide_cluster(alone, both, horizon=at(5))) == {"a": "reported"}


def test_a_node_app_row_takes_the_jobs_only_its_window_holds_once_closed() -> None:
    """A node app's execution beside a /generate row: the jobs no other window holds are all
    the execution's once its window has closed; a job both could have made is the other row's
    only when the app's job count says so, never guessed."""
    cluster = [window("app", 0, 10, jobs=2), window("b", 9, 20)]
    mine = [job("n1", 1), job("n2", 1.5)]
    decision = decide_cluster(cluster, [*mine, job("jb", 15)], horizon=at(25))
    assert verdicts(decision) == {"app": ["n1", "n2"], "b": "jb"}
    shared = decide_cluster(cluster, [*mine, job("s", 9.5)], horizon=at(25))
    # The app makes 2 jobs and 2 only its window holds: the shared one is b's.
    assert verdicts(shared) == {"app": ["n1", "n2"], "b": "s"}
    unknown = [window("app", 0, 10, jobs=None), window("b", 9, 20)]
    guessed = decide_cluster(unknown, [*mine, job("s", 9.5)], horizon=at(25))
    assert verdicts(guessed) == {"app": "reported", "b": "reported"}


def test_jobs_several_submissions_could_each_have_made_are_doubtful_never_guessed() -> None:
    """A job both windows hold, with no other submitter around, is the cluster's own but
    nobody's in particular: doubtful while the windows are open and once they have closed (so
    it can be cancelled), and never doubtful when the evidence points at another submitter."""
    shared = [job("j1", 7), job("j2", 8)]
    open_ = decide_cluster(PAIR, shared, horizon=at(12))
    assert verdicts(open_) == {"a": "waiting", "b": "waiting"}
    assert [each.job_id for each in open_.doubtful] == ["j1", "j2"]
    closed = decide_cluster(PAIR, shared, horizon=at(20))
    assert verdicts(closed) == {"a": "reported", "b": "reported"}
    assert [each.job_id for each in closed.doubtful] == ["j1", "j2"]
    foreign = decide_cluster(PAIR, shared, horizon=at(20), neighbours=[job("x", 18)])
    assert foreign.doubtful == () and set(verdicts(foreign).values()) == {"reported"}
    too_many = decide_cluster(PAIR, [*shared, job("j3", 9)], horizon=at(20))
    assert too_many.doubtful == () and set(verdicts(too_many).values()) == {"reported"}
    forced = decide_cluster(PAIR, [job("j1", 3), job("j2", 7)], horizon=at(20))
    assert forced.doubtful == ()


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        # Two cancelled jobs both windows hold: one on each row, both sent again.
        ([job("j1", 7, "cancelled"), job("j2", 8, "cancelled")], {"a": "j1", "b": "j2"}),
        # One cancelled job both hold: recorded on the earlier window, the other made none.
        ([job("j1", 7, "cancelled")], {"a": "j1", "b": "not_created"}),
        # One cancelled, one completed: the completed one is billed and nobody's for sure.
        (
            [job("j1", 7, "cancelled"), job("j2", 8, "completed")],
            {"a": "reported", "b": "reported"},
        ),
    ],
    ids=["two-cancelled", "one-cancelled", "one-billed"],
)
def test_closed_windows_whose_doubtful_jobs_were_all_cancelled_send_their_rows_again(
    jobs: list[Job], expected: dict[str, object]
) -> None:
    """Once the windows have closed, doubtful jobs that were all cancelled cost nothing: each is
    recorded on a row whose window holds it (``unbilled``), the others made none, and every
    one of them is sent again; a billed one among them still reports the rows."""
    decision = decide_cluster(PAIR, jobs, horizon=at(20))
    assert verdicts(decision) == expected
    found = {name for name, value in expected.items() if value not in ("not_created", "reported")}
    assert decision.unbilled == frozenset(found)


def test_a_closed_node_app_window_takes_as_many_jobs_as_it_makes_only_it_could_have_made() -> None:
    """Two lost executions of an app that makes 2 jobs: once the first window has closed, the
    2 jobs only it could have made are its own, which leaves the later jobs to the second."""
    cluster = [window("app1", 0, 10, jobs=2), window("app2", 5, 20, jobs=2)]
    jobs = [job("a1", 1), job("a2", 1.5), job("b1", 6), job("b2", 6.5)]
    early = decide_cluster(cluster, jobs, horizon=at(8))
    assert verdicts(early) == {"app1": "waiting", "app2": "waiting"}
    first_closed = decide_cluster(cluster, jobs, horizon=at(12))
    assert verdicts(first_closed) == {"app1": ["a1", "a2"], "app2": "waiting"}
    both_closed = decide_cluster(cluster, jobs, horizon=at(25))
    assert verdicts(both_closed) == {"app1": ["a1", "a2"], "app2": ["b1", "b2"]}
    unknown_count = [window("app1", 0, 10, jobs=None), window("app2", 5, 20, jobs=None)]
    assert set(verdicts(decide_cluster(unknown_count, jobs, horizon=at(25))).values()) == {
        "reported"
    }
