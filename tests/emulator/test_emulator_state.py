"""Unit tests of the emulator state, driven by a manual clock (no HTTP, no sleeping)."""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
from PIL import Image

from krea_dagster.emulator import assets, views
from krea_dagster.emulator.clock import ManualClock, format_micros
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.errors import BadRequest, PaymentRequired, TooManyRequests
from krea_dagster.emulator.lifecycle import (
    PHASES,
    TERMINAL_STATUSES,
    InvalidTransition,
    JobStatus,
    check_transition,
)
from krea_dagster.emulator.persistence import SqliteStore
from krea_dagster.emulator.records import Job
from krea_dagster.emulator.state import DEMO_TOKEN, EmulatorState

FLUX = "image/bfl/flux-1-dev"  # Krea-hosted, $0.007
GPT_IMAGE_2 = "image/openai/gpt-image-2"  # external provider
SAMPLE_BODY = {"prompt": "a red bicycle", "width": 512, "height": 512}


def make_state(clock: ManualClock | None = None, **knobs: Any) -> EmulatorState:
    """A state on a manual clock with these knobs."""
    config = EmulatorConfig()
    config.update(knobs)
    return EmulatorState(config, clock=clock or ManualClock())


def submit(state: EmulatorState, model: str = FLUX, **changes: Any) -> Job:
    """Submit SAMPLE_BODY (with changes) for the demo account."""
    body = {**SAMPLE_BODY, **changes}
    return state.submit(state.by_token[DEMO_TOKEN], state.models[model], body)


def status_at(state: EmulatorState, clock: ManualClock, job: Job, seconds: float) -> str:
    """The job's status once the clock reads start + seconds."""
    clock.now = START + seconds
    state.advance()
    return job.status.value


START = ManualClock().now


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "queued"),
        (0.99, "queued"),
        (1.0, "scheduled"),
        (2.0, "processing"),
        (4.0, "sampling"),
        (8.49, "sampling"),
        (8.5, "intermediate-complete"),
        (10.0, "completed"),
    ],
    ids=lambda value: str(value),
)
def test_job_walks_through_the_phases_by_the_fraction_table(seconds: float, expected: str) -> None:
    """A 10 s job is queued, scheduled, processing, sampling, intermediate-complete, completed."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=10)
    job = submit(state)
    assert status_at(state, clock, job, seconds) == expected


def test_render_time_is_avg_seconds_times_time_scale() -> None:
    """Without render_seconds a job lasts the model's average time times time_scale."""
    clock = ManualClock()
    state = make_state(clock, time_scale=0.5)
    job = submit(state, GPT_IMAGE_2)  # avg 55 s -> 27.5 s
    assert status_at(state, clock, job, 27.49) == "intermediate-complete"
    assert status_at(state, clock, job, 27.5) == "completed"


def test_jobs_beyond_concurrency_are_backlogged_and_start_fifo() -> None:
    """Extra jobs wait as backlogged and take freed slots in submission order."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=10, concurrency=2, backlog=5)
    jobs = [submit(state, prompt=f"p{i}") for i in range(5)]
    assert [j.status.value for j in jobs] == ["queued"] * 2 + ["backlogged"] * 3
    status_at(state, clock, jobs[0], 10)
    assert [j.status.value for j in jobs] == ["completed"] * 2 + ["queued"] * 2 + ["backlogged"]
    status_at(state, clock, jobs[0], 20)
    assert [j.status.value for j in jobs] == ["completed"] * 4 + ["queued"]
    assert state.counters.max_running_seen == 2


def test_a_job_whose_asset_was_deleted_before_it_started_processing_fails_unbilled() -> None:
    """A job accepted while its uploaded input existed fetches it when it starts processing: a
    deleted asset fails it then ("Input file rejected"), with nothing charged."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=10, concurrency=1)
    account = state.by_token[DEMO_TOKEN]
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buffer, "PNG")
    asset = assets.upload(state, account, buffer.getvalue(), "red.png", None)
    url = assets.asset_json(state, asset)["image_url"]
    body = {"prompt": "the product", "image_urls": [url]}
    first = state.submit(account, state.models[GPT_IMAGE_2], body)
    second = state.submit(account, state.models[GPT_IMAGE_2], {**body, "prompt": "again"})
    assert second.status is JobStatus.BACKLOGGED
    assert status_at(state, clock, first, 3) == "processing"
    assets.delete(state, account, asset.id)
    status_at(state, clock, first, 60)
    assert first.status is JobStatus.COMPLETED  # it had fetched its input already
    assert second.status is JobStatus.FAILED
    assert second.error is not None and second.error[1].startswith("Input file rejected")
    assert state.counters.jobs_billed == 1


def test_backlogged_job_starts_when_the_slot_freed_however_late_time_advances() -> None:
    """One late advance() gives the same completion times as frequent polling."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=10, concurrency=1)
    jobs = [submit(state, prompt=f"p{i}") for i in range(3)]
    status_at(state, clock, jobs[0], 100)
    completed = [job.completed_us for job in jobs]
    assert completed == [round((START + 10 * (i + 1)) * 1e6) for i in range(3)]


def test_post_beyond_the_backlog_cap_is_429_naming_the_limit() -> None:
    """With every slot and backlog place taken, a submission is refused with 429."""
    state = make_state(render_seconds=10, concurrency=2, backlog=1)
    for i in range(3):
        submit(state, prompt=f"p{i}")
    with pytest.raises(TooManyRequests, match=r"maximum number of concurrent jobs \(2\)"):
        submit(state, prompt="one too many")


def test_402_when_balance_minus_reservations_cannot_cover_the_job() -> None:
    """Live jobs reserve their price: the third $0.007 job does not fit in $0.02."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=10, balance_usd=0.02)
    first = submit(state, prompt="a")
    submit(state, prompt="b")
    with pytest.raises(PaymentRequired, match=r"insufficient API balance.*top up"):
        submit(state, prompt="c")
    status_at(state, clock, first, 10)  # both complete: $0.014 charged, $0.006 left
    with pytest.raises(PaymentRequired):
        submit(state, prompt="c")


@pytest.mark.parametrize(
    ("knobs", "end", "charged"),
    [
        ({}, "completed", 0.007),
        ({"job_failure_rate": 1.0}, "failed", 0.0),
        ({"stuck_rate": 1.0}, "failed", 0.0),
    ],
    ids=["completed-is-charged", "failed-is-free", "timed-out-is-free"],
)
def test_only_completed_jobs_are_charged(knobs: dict[str, Any], end: str, charged: float) -> None:
    """Completion charges the price; failures release the reservation."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=10, balance_usd=1.0, **knobs)
    job = submit(state)
    assert status_at(state, clock, job, 200) == end
    account = state.by_token[DEMO_TOKEN]
    assert account.balance_micros == round((1.0 - charged) * 1e6)
    assert account.reserved_micros == 0
    assert state.counters.jobs_billed == (1 if charged else 0)


def test_cancel_frees_the_slot_advances_the_backlog_and_is_not_charged() -> None:
    """Cancelling a running job starts the next backlogged one and bills nothing."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=10, concurrency=1)
    running, waiting = submit(state, prompt="a"), submit(state, prompt="b")
    clock.now = START + 3
    account = state.by_token[DEMO_TOKEN]
    state.cancel(account, running.id)
    assert (running.status, waiting.status) == (JobStatus.CANCELLED, JobStatus.QUEUED)
    assert running.error is not None and running.error[0] == "cancelled"
    assert account.balance_micros == account.initial_balance_micros
    assert views.job_json(running, state.cdn_url)["completed_at"] == format_micros(
        round((START + 3) * 1e6)
    )


def test_cancel_of_a_backlogged_job_keeps_fifo_for_the_others() -> None:
    """A cancelled backlogged job is skipped when its turn comes."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=10, concurrency=1)
    jobs = [submit(state, prompt=f"p{i}") for i in range(3)]
    state.cancel(state.by_token[DEMO_TOKEN], jobs[1].id)
    status_at(state, clock, jobs[0], 10)
    assert [j.status.value for j in jobs] == ["completed", "cancelled", "queued"]


def test_cancel_of_a_terminal_job_is_a_noop() -> None:
    """DELETE on a completed job changes nothing."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=1)
    job = submit(state)
    status_at(state, clock, job, 5)
    before = views.job_json(job, state.cdn_url)
    assert views.job_json(state.cancel(state.by_token[DEMO_TOKEN], job.id), state.cdn_url) == before


@pytest.mark.parametrize(
    ("model", "timeout"),
    [(FLUX, 180.0), (GPT_IMAGE_2, 7200.0)],
    ids=["krea-hosted-3-minutes", "external-2-hours"],
)
def test_stuck_jobs_fail_with_timeout_after_the_documented_limit(
    model: str, timeout: float
) -> None:
    """A stuck job stays in sampling until the 3 min / 2 h automatic failure."""
    clock = ManualClock()
    state = make_state(clock, stuck_rate=1.0)
    job = submit(state, model)
    assert status_at(state, clock, job, timeout - 0.01) == "sampling"
    assert status_at(state, clock, job, timeout) == "failed"
    assert job.error is not None and job.error[0] == "timeout"


def test_render_longer_than_the_timeout_fails_with_timeout() -> None:
    """A hosted job that would render 200 s fails at 180 s."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=200)
    job = submit(state)
    assert status_at(state, clock, job, 180) == "failed"


def test_timeouts_scale_with_time_scale() -> None:
    """time_scale shrinks the automatic failure too (180 s x 0.001 = 0.18 s)."""
    clock = ManualClock()
    state = make_state(clock, stuck_rate=1.0, time_scale=0.001)
    job = submit(state)
    assert status_at(state, clock, job, 0.17) == "sampling"
    assert status_at(state, clock, job, 0.18) == "failed"


def test_created_at_is_unique_and_increasing_when_the_clock_stands_still() -> None:
    """Jobs created in the same microsecond get consecutive microseconds."""
    state = make_state(render_seconds=10, concurrency=5000, backlog=0, balance_usd=1000)
    jobs = [submit(state, prompt=f"p{i}") for i in range(50)]
    created = [job.created_us for job in jobs]
    assert created == list(range(created[0], created[0] + 50))


def test_cursor_paging_over_2500_jobs_never_loses_or_repeats_one() -> None:
    """Paging by next_cursor visits every one of 2,500 same-instant jobs exactly once."""
    state = make_state(render_seconds=10, concurrency=5000, backlog=0, balance_usd=1000)
    account = state.by_token[DEMO_TOKEN]
    ids = [submit(state, prompt=f"p{i}").id for i in range(2500)]
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = state.list_jobs(account, cursor, 100, None, None)
        seen += [job.id for job in page]
        if cursor is None:
            break
    assert seen == ids[::-1]


@pytest.mark.parametrize(
    ("status", "types", "expected"),
    [
        (JobStatus.COMPLETED, None, {"flux-done"}),
        (JobStatus.QUEUED, None, {"gpt-live"}),
        (None, {"flux"}, {"flux-done"}),
        (None, {"externalImage"}, {"gpt-live"}),
        (None, {"flux", "externalImage"}, {"flux-done", "gpt-live"}),
        (None, {"k1"}, set()),
        (JobStatus.COMPLETED, {"externalImage"}, set()),
    ],
    ids=[
        "status",
        "status-live",
        "type-flux",
        "type-external",
        "two-types",
        "unknown-type",
        "both",
    ],
)
def test_list_filters_by_status_and_types(
    status: JobStatus | None, types: set[str] | None, expected: set[str]
) -> None:
    """status and types filter the listing independently and together."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=10)
    submit(state, FLUX, prompt="flux-done")
    status_at(state, clock, next(iter(state.jobs.values())), 10)
    submit(state, GPT_IMAGE_2, prompt="gpt-live")
    page, _ = state.list_jobs(state.by_token[DEMO_TOKEN], None, 100, status, types)
    assert {job.body["prompt"] for job in page} == expected


def test_job_outcomes_are_deterministic_for_a_seed() -> None:
    """The same seed and request order give the same failures; another seed does not."""

    def outcomes(seed: int) -> list[str]:
        state = make_state(seed=seed, job_failure_rate=0.5, render_seconds=1, concurrency=100)
        return [submit(state, prompt=f"p{i}").outcome.kind for i in range(40)]

    assert outcomes(7) == outcomes(7)
    assert outcomes(7) != outcomes(8)


def test_duplicate_submissions_count_the_same_canonical_request() -> None:
    """Same model and body (key order and aliases aside) counts as a duplicate."""
    state = make_state(render_seconds=1, today="2026-06-01")
    submit(state, GPT_IMAGE_2, prompt="x", image_urls=["https://a.example/1.png"])
    submit(state, GPT_IMAGE_2, imageUrls=["https://a.example/1.png"], prompt="x")
    submit(state, GPT_IMAGE_2, prompt="y")
    assert state.stats()["duplicate_submissions"] == 1
    assert state.counters.repeated_requests == 1


def test_a_request_resent_after_its_job_was_cancelled_is_no_duplicate() -> None:
    """A prompt sent again after its first job was cancelled (unbilled) is a repeat, not a
    double payment; a third live copy is one."""
    state = make_state(render_seconds=60, today="2026-06-01")
    first = submit(state, GPT_IMAGE_2, prompt="x")
    state.cancel(state.by_token[DEMO_TOKEN], first.id)
    submit(state, GPT_IMAGE_2, prompt="x")
    stats = state.stats()
    assert (stats["repeated_requests"], stats["duplicate_submissions"]) == (1, 0)
    submit(state, GPT_IMAGE_2, prompt="x")
    assert state.stats()["duplicate_submissions"] == 1


def test_lifecycle_transitions_follow_the_table() -> None:
    """Phases move forward one at a time; terminal statuses never change."""
    for old, new in itertools.pairwise(PHASES):
        check_transition(old, new)
    check_transition(JobStatus.BACKLOGGED, JobStatus.QUEUED)
    for terminal in TERMINAL_STATUSES:
        with pytest.raises(InvalidTransition):
            check_transition(terminal, JobStatus.QUEUED)
    with pytest.raises(InvalidTransition):
        check_transition(JobStatus.SAMPLING, JobStatus.QUEUED)


def test_state_file_keeps_jobs_and_balances_and_time_keeps_running(tmp_path: Any) -> None:
    """A new state on the same file sees the jobs, which progressed by wall-clock time."""
    path = tmp_path / "state.sqlite"
    clock = ManualClock()
    config = EmulatorConfig()
    config.update({"render_seconds": 10, "concurrency": 1})
    first = EmulatorState(config, clock=clock, store=SqliteStore(path))
    jobs = [submit(first, prompt=f"p{i}") for i in range(2)]
    status_at(first, clock, jobs[0], 10)  # job 0 completed, job 1 started at +10
    first.close()
    clock.now = START + 25  # "restart" 15 s later
    second = EmulatorState(config.copy(), clock=clock, store=SqliteStore(path))
    second.advance()
    assert [second.jobs[j.id].status.value for j in jobs] == ["completed", "completed"]
    assert second.jobs[jobs[1].id].completed_us == round((START + 20) * 1e6)
    account = second.by_token[DEMO_TOKEN]
    assert account.balance_micros == account.initial_balance_micros - 2 * 7000
    assert second.counters.jobs_billed == 2


def test_job_record_round_trips() -> None:
    """A job's persisted record rebuilds an equal job."""
    state = make_state(render_seconds=10, job_failure_rate=1.0)
    job = submit(state)
    rebuilt = Job.from_record(job.to_record())
    rebuilt.version = job.version
    assert rebuilt == job


def test_reset_clears_jobs_and_restores_balances() -> None:
    """reset() drops jobs and counters and gives accounts their initial balance back."""
    clock = ManualClock()
    state = make_state(clock, render_seconds=1)
    job = submit(state)
    status_at(state, clock, job, 5)
    state.reset()
    account = state.by_token[DEMO_TOKEN]
    assert (state.jobs, state.counters.jobs_created) == ({}, 0)
    assert account.balance_micros == account.initial_balance_micros


def test_tokens_must_have_the_id_secret_shape() -> None:
    """Accounts are created only for '<id>:<secret>' tokens."""
    state = make_state()
    with pytest.raises(BadRequest, match="<id>:<secret>"):
        state.add_account(token="no-colon")
