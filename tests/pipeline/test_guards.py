"""Each guard of the pay-once promise fails a fast test when it is removed (issue 23).

Engine-level tests against the bundled emulator, without Dagster: each builds the moment a
guard exists for (a job created long after its send, a lease lost before the send, an upload
whose worker died before recording it, ...) from real ledgers, clients and stores, and checks
what can be observed: ledger rows, the emulator's counters, raised errors. The mutation check
(``scripts/mutation_check.py``) removes each guard in turn and runs the test that pins it.
"""

import base64
import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pytest
import sqlalchemy as sa
from PIL import Image

from krea_dagster.api import (
    AsyncKreaClient,
    Job,
    KreaClient,
    SubmitRateLimitPolicy,
    Timeouts,
    catalog,
)
from krea_dagster.api.config import Clock
from krea_dagster.emulator import DEMO_NODE_APP_ID
from krea_dagster.emulator.testing import EmulatorHandle, run_emulator
from krea_dagster.engine.catalogs import CatalogSettings
from krea_dagster.engine.collect import BatchCollector
from krea_dagster.engine.errors import LeaseUnavailableError
from krea_dagster.engine.ledger import (
    Claim,
    JobUpdate,
    Ledger,
    Submission,
    SubmissionState,
    utcnow,
)
from krea_dagster.engine.nodes import load_node_app
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.prompts import PromptValidationError, prepare_batch
from krea_dagster.engine.reconcile import SEND_SLACK, Outcome, reconcile
from krea_dagster.engine.references import AsyncReferenceResolver, ReferenceResolver
from krea_dagster.engine.run import run_coroutine
from krea_dagster.engine.store import ImageStore
from krea_dagster.engine.submit import BatchSubmitter, PlannedPrompt, SubmitReport
from krea_dagster.engine.table_rules import RESERVED_COLUMNS

from .conftest import TEST_MODEL

#: The longest a POST may be in flight in these tests: long, so that one and two request
#: windows after a send are far apart next to the clock skew reconciliation allows.
REQUEST_WINDOW = 30.0
NODE_APP = f"node-app/{DEMO_NODE_APP_ID}"
LOG = logging.getLogger("krea_dagster.tests.guards")


@dataclass
class Account:
    """A ``KreaAccount`` without Dagster: how the engine runs in scripts and in these tests."""

    token: str
    base_url: str
    max_concurrent_submits: int = 0
    submit_lanes: int = 1
    max_concurrent_downloads: int = 4
    poll_interval: float = 0.05
    poll_timeout: float = 30.0
    on_poll_timeout: Literal["report", "cancel"] = "report"
    request_window: float = 3.0
    #: The clients' clock (None: the real one).
    clock: Clock | None = None

    @property
    def account_id(self) -> str:
        return self.token.split(":", 1)[0]

    @property
    def catalog_settings(self) -> CatalogSettings:
        # The emulator serves the document the bundled catalog comes from.
        return CatalogSettings(base_url=self.base_url)

    @property
    def timeouts(self) -> Timeouts:
        third = self.request_window / 3
        return Timeouts(connect=third, read=third, write=third)

    @contextmanager
    def client(self) -> Iterator[KreaClient]:
        with KreaClient(
            self.token, base_url=self.base_url, timeout=self.timeouts, clock=self.clock
        ) as client:
            yield client

    @asynccontextmanager
    async def async_client(self) -> AsyncIterator[AsyncKreaClient]:
        async with AsyncKreaClient(
            self.token, base_url=self.base_url, timeout=self.timeouts, clock=self.clock
        ) as client:
            yield client


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield ledger
    ledger.dispose()


@pytest.fixture
def account(emulator: EmulatorHandle) -> Account:
    return Account(emulator.token, emulator.base_url)


def png(size: tuple[int, int] = (20, 12), colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def create_job(emulator: EmulatorHandle, prompt: str, **params: Any) -> Job:
    """A job made at Krea by a POST whose answer the ledger never recorded."""
    with Account(emulator.token, emulator.base_url).client() as client:
        return client.submit(TEST_MODEL, {"prompt": prompt, **params})


def intent(ledger: Ledger, account: str, *, request: dict[str, Any] | None = None) -> Submission:
    """The intent row of one prompt, holding the account's submit lease."""
    claim = ledger.claim(
        scope="s",
        batch="b1",
        generation=1,
        prompt_key="k1",
        model=TEST_MODEL,
        request=request or {"prompt": "k1"},
        request_hash="h",
        submission_id=str(uuid.uuid4()),
        estimated_usd=0.007,
        run_id="run",
        max_attempts=3,
        account=account,
        lease_seconds=120.0,
    )
    assert claim.row is not None
    return claim.row


def sent_row(ledger: Ledger, account: str, sent_at: datetime) -> Submission:
    """A row whose POST went out at ``sent_at`` and whose worker then vanished."""
    row = intent(ledger, account)
    assert ledger.note_send(row.submission_id, sent_at=sent_at, lease_seconds=600)
    return ledger.get(row.submission_id)


def reconciled(emulator: EmulatorHandle, ledger: Ledger, row: Submission) -> Outcome:
    async def work() -> Outcome:
        async with Account(emulator.token, emulator.base_url).async_client() as client:
            return await reconcile(
                client,
                ledger,
                ledger.get(row.submission_id),
                request_window=REQUEST_WINDOW,
                log=LOG,
            )

    return run_coroutine(work())


# -- the reconciliation window ---------------------------------------------------------------


def test_a_job_created_between_one_and_two_request_windows_after_the_send_is_attributed(
    emulator, ledger
):
    """The reconciliation window is two request windows after the send: a job a server still
    working after the client gave up created 1.7 request windows later is the row's."""
    job = create_job(emulator, "a lighthouse at dawn")
    row = sent_row(ledger, emulator.account, job.created_at - timedelta(seconds=52))
    assert reconciled(emulator, ledger, row) == Outcome.ATTRIBUTED
    found = ledger.get(row.submission_id)
    assert found.job_id == job.job_id and found.state != SubmissionState.NOT_CREATED


def test_a_late_ambiguous_at_extends_the_window(emulator, ledger):
    """A failure seen long after the send (ambiguous_at) extends the window to a request window
    after it: a job created 200 s after the send, before the failure was seen, is attributed."""
    job = create_job(emulator, "a lighthouse at dusk")
    row = sent_row(ledger, emulator.account, job.created_at - timedelta(seconds=200))
    assert ledger.mark_unknown(row.submission_id, message="read timeout")
    assert ledger.get(row.submission_id).ambiguous_at >= job.created_at
    assert reconciled(emulator, ledger, row) == Outcome.ATTRIBUTED
    assert ledger.get(row.submission_id).job_id == job.job_id


class ShiftedClock:
    """Wall-clock time plus ``shift`` seconds: an emulator that made a job a while ago."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


def test_a_lone_job_in_the_window_is_reported_when_unknown_jobs_stand_around_it(ledger):
    """Another submitter's job in the guard band means the lone unknown job in the window may
    be theirs: the row is reported, not attributed, and the foreign job is counted."""
    clock = ShiftedClock()
    with run_emulator(clock=clock, time_scale=0.005, seed=7) as emulator:
        clock.shift = -20.0  # another tool on the account submitted 20 s before our POST
        other = create_job(emulator, "somebody else's prompt")
        clock.shift = 0.0
        job = create_job(emulator, "a lighthouse at night")
        row = sent_row(ledger, emulator.account, job.created_at - timedelta(seconds=1))
        assert reconciled(emulator, ledger, row) == Outcome.REPORTED
    reported = ledger.get(row.submission_id)
    assert reported.state == SubmissionState.REPORTED and reported.job_id is None
    assert job.job_id in (reported.error_message or "")
    assert other.job_id in (reported.error_message or "")
    assert ledger.foreign_jobs_seen(emulator.account) == 1


def test_a_row_whose_window_cannot_be_placed_is_reported_never_not_created(emulator, ledger):
    """A row sent from another host that recorded no measurement of Krea's clock, with no
    answered row to bound it: nothing places its window, so it is reported (a person decides),
    never concluded "not created" and re-sent, even though Krea lists no job around it."""
    row = sent_row(ledger, emulator.account, utcnow() - timedelta(minutes=10))
    with ledger.transaction() as conn:
        conn.execute(
            sa.text("UPDATE krea_submissions SET owner_host = 'another-host'"),
        )
    assert reconciled(emulator, ledger, row) == Outcome.REPORTED
    reported = ledger.get(row.submission_id)
    assert reported.state == SubmissionState.REPORTED
    assert "cannot be placed" in (reported.error_message or "")
    assert ledger.claim(
        scope="s",
        batch="b1",
        generation=1,
        prompt_key="k1",
        model=TEST_MODEL,
        request={"prompt": "k1"},
        request_hash="h",
        submission_id=str(uuid.uuid4()),
        estimated_usd=0.007,
        run_id="rerun",
        max_attempts=3,
        account=emulator.account,
        lease_seconds=120.0,
    ).covered  # never re-sent


def test_a_late_answer_whose_job_reconciliation_already_matched_is_not_recorded_again(ledger):
    """A paused sender wakes to Krea's answer after reconciliation matched that very job to its
    row: the job is on record once, with no late-answer row and no second paid row."""
    row = intent(ledger, "acct")
    assert ledger.mark_unknown(row.submission_id, message="the sender froze")
    answer = JobUpdate(
        "j-matched", "completed", result_url="https://cdn/x.png", created_at=utcnow()
    )
    assert ledger.attribute(row.submission_id, **answer.answer())  # reconciliation's match
    assert ledger.record_late_job(row, answer) is None  # the sender's late write
    rows = ledger.rows("s", "b1")
    assert [(r.submission_id, r.job_id) for r in rows] == [(row.submission_id, "j-matched")]
    assert ledger.paid_duplicates("s", "b1", 1) == {}


class NeighbourMatchesMidListing(Ledger):
    """Once, right after a reconciler has read which jobs the ledger knows (before it lists
    Krea), a neighbouring worker runs ``neighbour``: its listing is then stale."""

    neighbour: Callable[[], None] | None = None

    def known_job_ids(self, start: datetime, end: datetime) -> set[str]:
        known = super().known_job_ids(start, end)
        neighbour, self.neighbour = self.neighbour, None
        if neighbour is not None:
            neighbour()
        return known


def test_a_reconciler_whose_listing_went_stale_while_a_neighbour_matched_the_row_concludes_and_logs_nothing(
    emulator, tmp_path, caplog
):
    """A dead worker's row is reconciled by two workers at once. The neighbour matches the row
    to its job and sends three more prompts while the other lists Krea with what the ledger
    knew before: the other sees four unknown jobs in the window, and neither reports the row
    nor logs anything wrong (no ERROR, no foreign jobs counted); the row keeps its match."""
    ledger = NeighbourMatchesMidListing(f"sqlite:///{tmp_path / 'ledger.db'}")
    account = Account(emulator.token, emulator.base_url)
    row = intent(ledger, account.account_id, request={"prompt": "a lighthouse at dawn"})
    assert ledger.note_send(row.submission_id, sent_at=utcnow(), lease_seconds=0.0)
    job = create_job(emulator, "a lighthouse at dawn")  # the POST left; its worker died

    def neighbour() -> None:
        """Another jobs run: it reconciles the expired lease's row first, then sends."""
        prompts = [PlannedPrompt(f"k{n}", {"prompt": f"prompt {n}"}, "h", 0.007) for n in (2, 3, 4)]

        async def work() -> SubmitReport:
            async with account.async_client() as client:
                submitter = BatchSubmitter(
                    client,
                    ledger,
                    scope="s",
                    batch="b1",
                    generation=1,
                    model=TEST_MODEL,
                    run_id="neighbour",
                    account=account.account_id,
                    request_window=REQUEST_WINDOW,
                    log=LOG,
                )
                return await submitter.run(prompts)

        assert run_coroutine(work()).submitted == 3

    ledger.neighbour = neighbour
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert reconciled(emulator, ledger, row) == Outcome.ALREADY_RESOLVED
    matched = ledger.get(row.submission_id)
    assert matched.job_id == job.job_id and not matched.is_unresolved
    assert not matched.is_reported
    assert ledger.neighbour is None  # the neighbour ran between the two reads
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert ledger.foreign_jobs_seen(account.account_id) == 0
    assert emulator.stats()["jobs_created"] == 4


# -- the send: lease and slack ---------------------------------------------------------------


class SteppedClock:
    """Monotonic time that moves only when told to (and the real wall clock)."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return utcnow()


def submit_one(
    ledger: Ledger,
    emulator: EmulatorHandle,
    clock: SteppedClock | None = None,
    *,
    rate_limit_budget: float | None = None,
) -> SubmitReport:
    """One prompt through the submitter, as the jobs step sends it (``clock``: the monotonic
    time of the submitter and its client; ``rate_limit_budget``: seconds of 429 waits)."""
    prompt = PlannedPrompt("k1", {"prompt": "a red bicycle"}, "h", 0.007)
    account = Account(emulator.token, emulator.base_url, clock=clock)
    options: dict[str, Any] = {} if clock is None else {"clock": clock.monotonic}
    policy = (
        {}
        if rate_limit_budget is None
        else {"budget": rate_limit_budget, "initial_delay": 0.05, "max_delay": 0.1}
    )

    async def work() -> SubmitReport:
        async with AsyncKreaClient(
            account.token,
            base_url=account.base_url,
            timeout=account.timeouts,
            clock=account.clock,
            submit_rate_limit=SubmitRateLimitPolicy(**policy),
        ) as client:
            submitter = BatchSubmitter(
                client,
                ledger,
                scope="s",
                batch="b1",
                generation=1,
                model=TEST_MODEL,
                run_id="run",
                account=account.account_id,
                request_window=account.request_window,
                log=LOG,
                **options,
            )
            return await submitter.run([prompt])

    return run_coroutine(work())


def posts(emulator: EmulatorHandle) -> int:
    routes = emulator.stats()["requests_by_route"]
    return sum(count for route, count in routes.items() if route.startswith("POST "))


class LeaseExpiresDuringTheWait(Ledger):
    """The worker stalls during a 429 wait for longer than its lease."""

    def note_send(self, submission_id: str, **facts: Any) -> bool:
        with self.transaction() as conn:
            conn.execute(
                sa.text("UPDATE krea_submit_leases SET expires_at = :t"),
                {"t": utcnow() - timedelta(seconds=1)},
            )
        return super().note_send(submission_id, **facts)


def test_a_sender_whose_lease_was_lost_sends_nothing(emulator, tmp_path):
    """The ledger refuses the send time of a later attempt (after a 429) whose lease expired:
    the sender stops the batch with LeaseUnavailableError and sends no further POST."""
    emulator.configure(error_429_rate=1.0)
    ledger = LeaseExpiresDuringTheWait(f"sqlite:///{tmp_path / 'ledger.db'}")
    report = submit_one(ledger, emulator, rate_limit_budget=2.0)
    assert isinstance(report.stopped_by, LeaseUnavailableError)
    assert "lease" in str(report.stopped_by)
    assert report.submitted == 0
    rows = ledger.rows("s", "b1")  # each claim's first attempt (answered 429), nothing after
    assert rows and all(row.job_id is None for row in rows)
    assert posts(emulator) == len(rows) and emulator.stats()["jobs_created"] == 0


class SlowSendRecords(Ledger):
    """A busy database: every write of a send time (the claim's, a later attempt's) takes one
    and a half send slacks."""

    clock: SteppedClock

    def claim(self, **facts: Any) -> Claim:
        self.clock.seconds += 1.5 * SEND_SLACK.total_seconds()
        return super().claim(**facts)

    def note_send(self, submission_id: str, **facts: Any) -> bool:
        self.clock.seconds += 1.5 * SEND_SLACK.total_seconds()
        return super().note_send(submission_id, **facts)


def test_a_send_whose_sent_at_write_took_longer_than_the_slack_is_not_made(emulator, tmp_path):
    """When recording the send time keeps taking longer than SEND_SLACK, the POST is never
    sent: its job could otherwise be created after the window the row records."""
    clock = SteppedClock()
    ledger = SlowSendRecords(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.clock = clock
    report = submit_one(ledger, emulator, clock)
    assert isinstance(report.stopped_by, LeaseUnavailableError)
    assert report.submitted == 0
    assert posts(emulator) == 0 and emulator.stats()["jobs_created"] == 0


class SlowClaims(SlowSendRecords):
    """A busy database for the claim only: recording a later send time is quick."""

    def note_send(self, submission_id: str, **facts: Any) -> bool:
        return Ledger.note_send(self, submission_id, **facts)


def test_a_claim_whose_send_record_took_longer_than_the_slack_records_the_send_again(
    emulator, tmp_path
):
    """A claim that took longer than SEND_SLACK has a stale send time: the first attempt
    records a fresh one (note_send) before its POST, so the window starts at the real send."""
    clock = SteppedClock()
    ledger = SlowClaims(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.clock = clock
    recorded: list[datetime] = []
    original = ledger.note_send

    def note_send(submission_id: str, **facts: Any) -> bool:
        recorded.append(facts["sent_at"])
        return original(submission_id, **facts)

    ledger.note_send = note_send  # type: ignore[method-assign]
    report = submit_one(ledger, emulator, clock)
    assert report.submitted == 1 and report.stopped_by is None
    (row,) = ledger.rows("s", "b1")
    assert len(recorded) == 1 and row.sent_at == recorded[0] > row.intent_at


class CountedCalls(Ledger):
    """Counts the ledger calls a POST makes."""

    calls: list[str]

    def __getattribute__(self, name: str) -> Any:
        if name in ("claim", "note_send", "get", "get_many", "mark_submitted"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)


def test_a_post_costs_the_claim_and_its_answer(emulator, tmp_path):
    """One POST is two ledger writes: the claim (intent, lease and the first send time, the
    row handed back as written) and the answer; no read-back, no separate send record."""
    ledger = CountedCalls(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.calls = []
    report = submit_one(ledger, emulator)
    assert report.submitted == 1
    assert ledger.calls == ["claim", "mark_submitted"]
    (row,) = ledger.rows("s", "b1")
    assert row.sent_at is not None and row.sent_at <= row.submitted_at
    assert row.krea_offset_low is not None and row.krea_offset_high is not None


# -- the ledger's guarded writes -------------------------------------------------------------


def test_a_terminal_row_is_never_changed_by_a_later_answer(ledger):
    """A completed (paid) row stays completed with its cost whatever a later poll or page says
    of its job: a terminal status is written once."""
    row = intent(ledger, "acct")
    ledger.mark_submitted(row.submission_id, job_id="j1", status="queued", created_at=utcnow())
    (done,) = ledger.update_jobs([JobUpdate("j1", "completed", result_url="https://cdn/x.png")])
    for late in ("failed", "cancelled", "processing"):
        assert ledger.update_jobs([JobUpdate("j1", late, error_code="internal_error")]) == []
    final = ledger.get(row.submission_id)
    assert (final.state, final.error_code, final.result_url) == ("completed", None, done.result_url)
    assert final.cost_usd == pytest.approx(0.007)


# -- uploads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_killed_upload_is_looked_up_at_krea_before_it_is_sent_again(
    flavour, emulator, account, ledger, tmp_path
):
    """An upload whose worker died after the POST (its intent in the ledger, no answer) is
    found in GET /assets by its hash: the same bytes are not uploaded a second time."""
    photo = tmp_path / "red.png"
    photo.write_bytes(png())
    sha256 = hashlib.sha256(photo.read_bytes()).hexdigest()
    cache = ledger.upload_cache(account.account_id)
    assert cache.begin(sha256) is False  # the dead worker's intent
    with account.client() as client:
        uploaded = client.upload_asset(photo.read_bytes(), filename="red.png")  # its POST
        if flavour == "sync":
            resolved = ReferenceResolver(client, ledger.upload_cache(account.account_id)).resolve(
                str(photo)
            )
        else:

            async def work() -> Any:
                async with account.async_client() as aclient:
                    resolver = AsyncReferenceResolver(
                        aclient, ledger.upload_cache(account.account_id)
                    )
                    return await resolver.resolve(str(photo))

            resolved = run_coroutine(work())
    assert (resolved.how, resolved.value) == ("found", uploaded.image_url)
    assert emulator.stats()["uploads"] == 1
    assert cache.get(sha256) == uploaded.image_url


# -- verified images ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "code"),
    [
        ({"width": 1024, "height": 768}, "wrong_size"),
        ({"aspect_ratio": "16:9"}, "wrong_aspect_ratio"),
    ],
    ids=["width-and-height", "aspect-ratio"],
)
def test_an_image_of_another_size_than_requested_is_never_stored(
    asked, code, emulator, account, ledger, tmp_path
):
    """A completed job whose image is not the size (or shape) its row asked for is recorded as
    an image error with the reason; nothing is stored."""
    job = create_job(emulator, "a square tile", width=512, height=512)
    assert emulator.wait_for_job(job.job_id)["status"] == "completed"
    row = intent(ledger, account.account_id, request={"prompt": "a square tile", **asked})
    ledger.mark_submitted(
        row.submission_id, job_id=job.job_id, status="completed", created_at=job.created_at
    )
    store = ImageStore(tmp_path / "store")

    async def work() -> Any:
        async with account.async_client() as client:
            collector = BatchCollector(
                client, ledger, store, prefix="s", batch="b1", poll_interval=0.05, poll_timeout=5
            )
            return await collector.store_rows([ledger.get(row.submission_id)])

    report = run_coroutine(work())
    stored = ledger.get(row.submission_id)
    assert (stored.image_uri, stored.error_code) == (None, code), stored.error_message
    assert "512x512" in (stored.error_message or "")
    assert report.image_errors == 1 and report.downloaded == 0
    assert not list((tmp_path / "store").rglob("*.png"))


# -- node apps ---------------------------------------------------------------------------------


def node_app_row(
    account: Account,
    ledger: Ledger,
    store: Path,
    settle: Callable[[Submission, Submission], None] = lambda submission, output: None,
) -> dict[str, Any]:
    """One table row through a node-app step of the engine (submit, ``settle`` the execution's
    two jobs at Krea, collect): the row's manifest record."""
    photo = "data:image/png;base64," + base64.b64encode(png()).decode()
    pipeline = KreaImagePipeline(
        prefix="s",
        model=NODE_APP,
        store=ImageStore(store),
        ledger=ledger,
        price_usd=0.25,
    )

    async def work() -> pd.DataFrame:
        async with account.async_client() as client:
            await load_node_app(client, NODE_APP, price_usd=0.25)
        frame = pd.DataFrame({"product_image": [photo], "product": ["red sneaker"]})
        prompts = prepare_batch(frame, batch="b1", model=NODE_APP, price_usd=0.25).table
        summary = await pipeline.submit(
            account, prompts, batch="b1", regeneration_id=None, run_id=None, log=LOG
        )
        submission, output = ledger.rows("s", "b1")
        assert output.parent_id == submission.submission_id
        settle(submission, output)
        await pipeline.collect(
            account, prompts, batch="b1", generation=summary.generation, run_id=None, log=LOG
        )
        return pipeline.manifest(prompts, batch="b1", generation=summary.generation, carried=[])

    (row,) = run_coroutine(work()).to_dict(orient="records")
    return {str(column): value for column, value in row.items()}


@pytest.mark.parametrize(
    ("failed", "code"),
    [("second", "nsfw"), ("first", "internal_error")],
    ids=["second-job-failed", "first-job-failed-transiently"],
)
def test_a_node_app_row_with_a_failed_job_is_failed_and_never_executed_again(
    failed, code, emulator, ledger, tmp_path
):
    """A node-app row is completed only when every one of its jobs is: one failed job makes it
    a failed row with that job's error, and the app is never executed again, even for a
    transient failure (a new execution would pay again for the job that completed)."""
    emulator.configure(render_seconds=60.0, time_scale=1.0)  # nothing finishes on its own
    account = Account(emulator.token, emulator.base_url, poll_timeout=3.0)

    def one_job_fails(submission: Submission, output: Submission) -> None:
        bad, good = (output, submission) if failed == "second" else (submission, output)
        emulator.fail_job(bad.job_id or "", code, "this view could not be made")
        emulator.complete_job(good.job_id or "")

    row = node_app_row(account, ledger, tmp_path / "store", one_job_fails)
    assert (row["status"], row["error_code"]) == ("failed", code)
    assert row["uri"] is None and len(row["outputs"]) == 1
    assert emulator.stats()["node_app_executions"] == 1


def test_every_job_of_a_node_app_row_is_collected_and_stored(emulator, account, ledger, tmp_path):
    """Collecting a node-app batch polls and stores the output rows' jobs too: the row is
    completed with one stored image per job."""
    row = node_app_row(account, ledger, tmp_path / "store")
    assert row["status"] == "completed", row["error_message"]
    assert len(row["outputs"]) == 2 and row["outputs"][0] == row["uri"]
    assert all(Path(out).is_file() for out in row["outputs"])


# -- prompt tables ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column", sorted(RESERVED_COLUMNS - set(catalog.get_model(TEST_MODEL).fields))
)
def test_a_column_named_like_one_krea_dagster_writes_is_refused(column):
    """A table column named like one the package writes (prompt_key, request_json, status, ...)
    is refused, naming the column: it would overwrite what validation computed."""
    frame = pd.DataFrame({"prompt": ["a cat"], column: ["0"]})
    with pytest.raises(PromptValidationError) as caught:
        prepare_batch(frame, batch="b1", model=TEST_MODEL)
    assert [(p.column, p.rule) for p in caught.value.problems] == [(column, "reserved")]


def test_a_float_too_large_to_hold_a_whole_number_is_refused():
    """A float cell (a Parquet float64 column) above 2**53 is refused, never sent as whatever
    integer the float rounded it to; a whole float of ordinary size is sent as that integer."""
    model, field = "qwen/2512", "num_inference_steps"  # an integer field without a maximum
    rounded = float(2**60 + 1)  # 2**60 + 1 does not fit a float: this is 2**60
    with pytest.raises(PromptValidationError) as caught:
        prepare_batch(pd.DataFrame({"prompt": ["a cat"], field: [rounded]}), batch="b", model=model)
    (problem,) = caught.value.problems
    assert (problem.row, problem.column) == (1, field)
    assert "too large to hold a whole number exactly" in problem.message
    fine = prepare_batch(pd.DataFrame({"prompt": ["a cat"], field: [28.0]}), batch="b", model=model)
    assert json.loads(fine.table["request_json"][0])[field] == 28
