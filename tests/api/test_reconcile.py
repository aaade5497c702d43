"""reconcile_submission(): did an ambiguous submission create a job? Never resubmits."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest

from krea_dagster.api import AmbiguousSubmitError, Job
from krea_dagster.api.reconcile import (
    ReconciliationOutcome,
    SubmissionWindow,
    decide_reconciliation,
)

from .support import TEST_MODEL, TEST_NOW, FakeClock, FakeKrea, make_client, make_job

GENERATE = f"/generate/image/{TEST_MODEL}"


def ambiguous_error(
    submitted_at: datetime = TEST_NOW, request_timeout: float = 65.0
) -> AmbiguousSubmitError:
    return AmbiguousSubmitError(
        submission_id="sub-1",
        model=TEST_MODEL,
        kind="image",
        submitted_at=submitted_at,
        cause=httpx.ReadTimeout("read timed out"),
        request_timeout=request_timeout,
    )


def at(seconds: float) -> datetime:
    return TEST_NOW + timedelta(seconds=seconds)


@pytest.fixture
def later() -> FakeClock:
    """A clock ten minutes after the submission: the window (65 s + 30 s skew) has closed."""
    clock = FakeClock()
    clock.advance(600)
    return clock


def test_zero_candidates_after_the_window_means_not_created(
    fake: FakeKrea, later: FakeClock
) -> None:
    """No unknown job in a closed window: the submission created nothing."""
    fake.jobs = [make_job("old", created_at=at(-3600))]
    with make_client(fake, later) as krea:
        result = krea.reconcile_submission(ambiguous_error(), known_job_ids=[])
    assert result.outcome is ReconciliationOutcome.NOT_CREATED
    assert result.job is None and result.is_not_created


def test_zero_candidates_while_the_window_is_open_is_undecidable(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """No job yet, but Krea could still create it: undecidable, saying until when."""
    clock.advance(5)
    with make_client(fake, clock) as krea:
        result = krea.reconcile_submission(ambiguous_error(), known_job_ids=[])
    assert result.outcome is ReconciliationOutcome.UNDECIDABLE
    assert "still open" in result.reason


def test_one_candidate_is_found(fake: FakeKrea, later: FakeClock) -> None:
    """Exactly one unknown job created in the window is the submission's."""
    fake.jobs = [make_job("ours", created_at=at(0.4)), make_job("old", created_at=at(-900))]
    with make_client(fake, later) as krea:
        result = krea.reconcile_submission(ambiguous_error(), known_job_ids=[])
    assert result.outcome is ReconciliationOutcome.FOUND
    assert result.job is not None and result.job.job_id == "ours"


def test_several_candidates_are_undecidable_and_listed(fake: FakeKrea, later: FakeClock) -> None:
    """Two unknown jobs in the window cannot be told apart: undecidable, both listed by id."""
    fake.jobs = [make_job("a", created_at=at(0.2)), make_job("b", created_at=at(1.0))]
    with make_client(fake, later) as krea:
        result = krea.reconcile_submission(ambiguous_error(), known_job_ids=[])
    assert result.outcome is ReconciliationOutcome.UNDECIDABLE
    assert {job.job_id for job in result.candidates} == {"a", "b"}
    assert "a" in result.reason and "b" in result.reason


def test_known_ids_are_not_candidates(fake: FakeKrea, later: FakeClock) -> None:
    """Jobs the caller already owns are dropped, leaving the one that must be ours."""
    fake.jobs = [
        make_job("mine-1", created_at=at(0.1)),
        make_job("new", created_at=at(0.5)),
        make_job("mine-2", created_at=at(2.0)),
    ]
    with make_client(fake, later) as krea:
        result = krea.reconcile_submission(ambiguous_error(), known_job_ids={"mine-1", "mine-2"})
    assert result.is_found and result.job is not None and result.job.job_id == "new"


def test_jobs_outside_the_window_are_ignored(fake: FakeKrea, later: FakeClock) -> None:
    """Jobs created long before or after the window cannot be the submission's."""
    fake.jobs = [make_job("before", created_at=at(-120)), make_job("after", created_at=at(400))]
    with make_client(fake, later) as krea:
        result = krea.reconcile_submission(ambiguous_error(), known_job_ids=[])
    assert result.is_not_created


def test_reconciliation_lists_and_never_posts(fake: FakeKrea, later: FakeClock) -> None:
    """Reconciling only reads GET /jobs, starting at the window's end, and never re-POSTs."""
    fake.jobs = [make_job(f"j{n}", created_at=at(-n)) for n in range(50)]
    with make_client(fake, later) as krea:
        krea.reconcile_submission(ambiguous_error(), known_job_ids=[], types="externalImage")
    assert fake.count("POST") == 0
    assert fake.count("GET", "/jobs") == 1
    params = fake.requests[0].url.params
    assert params["types"] == "externalImage"
    assert datetime.fromisoformat(params["cursor"]) > at(65 + 30)


def test_an_ambiguous_submit_then_reconcile_end_to_end(fake: FakeKrea, clock: FakeClock) -> None:
    """The job an ambiguous POST did create is found, with exactly one POST in all."""

    def created_then_dropped(request: httpx.Request) -> httpx.Response:
        fake.jobs.append(make_job("created-anyway", created_at=clock.now()))
        raise httpx.ReadTimeout("connection dropped after the request was read", request=request)

    fake.on("POST", GENERATE, created_then_dropped)
    with make_client(fake, clock) as krea:
        with pytest.raises(AmbiguousSubmitError) as caught:
            krea.submit(TEST_MODEL, {"prompt": "a cat"})
        clock.advance(300)
        result = krea.reconcile_submission(caught.value, known_job_ids=[])
    assert result.is_found and result.job is not None
    assert result.job.job_id == "created-anyway"
    assert fake.count("POST") == 1


def test_a_window_without_timeout_never_closes() -> None:
    """With no request timeout the window stays open, so 'not created' is never concluded."""
    window = SubmissionWindow.from_submission(TEST_NOW, request_timeout=None, skew=30)
    result = decide_reconciliation(window, [], now=at(86_400))
    assert result.outcome is ReconciliationOutcome.UNDECIDABLE


def test_an_explicit_window_can_be_reconciled(fake: FakeKrea, later: FakeClock) -> None:
    """A SubmissionWindow (e.g. rebuilt from a ledger after a crash) works like the error."""
    window = SubmissionWindow.from_submission(TEST_NOW, request_timeout=10, skew=5)
    fake.jobs = [make_job("ours", created_at=at(3))]
    with make_client(fake, later) as krea:
        result = krea.reconcile_submission(window, known_job_ids=[])
    assert result.is_found and result.window == window


def node_app_window(jobs: int | None) -> SubmissionWindow:
    """The window of a node-app execution sent at TEST_NOW that creates ``jobs`` jobs."""
    window = SubmissionWindow.from_submission(TEST_NOW, request_timeout=10, skew=5)
    return SubmissionWindow(
        window.submitted_at, window.start, window.end, guard=timedelta(seconds=30), jobs=jobs
    )


def test_a_node_app_execution_is_attributed_all_its_jobs_once_the_window_closes() -> None:
    """Every unknown job of a closed node-app window is the execution's, oldest first."""
    window = node_app_window(jobs=2)
    jobs = [Job.from_api(make_job("second", created_at=at(1.0))), Job.from_api(make_job("first"))]
    open_result = decide_reconciliation(window, jobs, now=at(5))
    assert open_result.is_undecidable and open_result.candidates == ()  # still appearing
    result = decide_reconciliation(window, jobs, now=at(600))
    assert result.is_found
    assert [job.job_id for job in result.jobs] == ["first", "second"]
    assert result.job is not None and result.job.job_id == "first"


def test_a_node_app_window_with_the_wrong_number_of_jobs_is_undecidable() -> None:
    """Three unknown jobs where one execution makes two cannot all be the submission's."""
    window = node_app_window(jobs=2)
    jobs = [Job.from_api(make_job(name, created_at=at(0.5))) for name in ("a", "b", "c")]
    result = decide_reconciliation(window, jobs, now=at(600))
    assert result.is_undecidable and "creates 2" in result.reason
    assert {job.job_id for job in result.candidates} == {"a", "b", "c"}


def test_a_node_app_window_with_foreign_neighbours_is_undecidable() -> None:
    """Unknown jobs around a node-app window mean another submitter: nothing is attributed."""
    window = node_app_window(jobs=None)
    mine = [Job.from_api(make_job("a", created_at=at(0.5)))]
    other = [Job.from_api(make_job("x", created_at=at(25)))]
    result = decide_reconciliation(window, mine, now=at(600), neighbours=other)
    assert result.is_undecidable and "another client" in result.reason
    assert decide_reconciliation(window, [], now=at(600)).is_not_created
