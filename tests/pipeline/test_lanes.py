"""Submit lanes (issue 21): up to ``lanes`` unresolved POSTs of one Krea account at once.

The ledger half: claims take distinct lanes of ``[0, lanes)``, wait when all are live, take an
expired one over, survive racing claimers (SQLite, and PostgreSQL under ``-m system``), and a
version 4 ledger's single lease becomes lane 0. The submitter half, against the emulator: lanes
put several POSTs in flight at once and submit each prompt once, and a lost answer holds only
its own prompt.
"""

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from krea_dagster.emulator.testing import EmulatorHandle
from krea_dagster.engine.ledger import (
    SCHEMA_VERSION,
    Claim,
    Lease,
    Ledger,
    Submission,
    SubmissionState,
)
from krea_dagster.engine.ledger.schema import meta_table
from krea_dagster.engine.reconcile import Outcome
from krea_dagster.engine.submit import BatchSubmitter, PlannedPrompt, SubmitReport

from .conftest import TEST_MODEL, make_resource
from .test_ledger import ACCOUNT, T0, claim_result

LOG = logging.getLogger("krea_dagster.tests.lanes")
#: A pid above Linux's largest (2**22): never a live process of this host.
DEAD_PID = 2**22 + 12345


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.system)],
    ids=["sqlite", "postgresql"],
)
def ledger_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh ledger database: a SQLite file, or (system tests) a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    fresh: Callable[..., str] = request.getfixturevalue("fresh_pg_database")
    return fresh("krea_lanes")


def lanes_by_holder(ledger: Ledger, account: str = ACCOUNT) -> dict[str, int | None]:
    """Each unresolved row's lane (None: parked, its lease kept), by submission id."""
    return {lease.holder.submission_id: lease.lane for lease in ledger.leases(account)}


def answer(ledger: Ledger, row: Submission) -> None:
    """Krea's answer to the row's POST (a fresh job id)."""
    assert ledger.mark_submitted(
        row.submission_id, job_id=f"job-{uuid.uuid4()}", status="queued", created_at=T0
    )


def set_lease(ledger: Ledger, row: Submission, **values: Any) -> None:
    """Change one row's lease as a dead or paused worker would have left it."""
    with ledger.transaction() as conn:
        conn.execute(
            sa.text(
                "UPDATE krea_submit_leases SET "
                + ", ".join(f"{name} = :{name}" for name in values)
                + " WHERE submission_id = :sid"
            ),
            {**values, "sid": row.submission_id},
        )


# -- the ledger: lanes, waits and takeovers ------------------------------------------------------


def test_claims_take_k_distinct_lanes_then_wait_and_an_answer_frees_its_lane(ledger):
    """With lanes=3 three claims hold lanes 0, 1 and 2; a fourth writes no row and names the live
    lease that expires first; answering one row frees exactly its lane for the next claim."""
    rows = [
        claim_result(ledger, f"k{n}", lanes=3, lease_seconds=seconds).row
        for n, seconds in enumerate((60, 30, 90))
    ]
    assert all(row is not None for row in rows)
    assert sorted(lanes_by_holder(ledger).values()) == [0, 1, 2]
    busy = claim_result(ledger, "k3", lanes=3)
    assert busy.row is None and not busy.covered and busy.taken_over == ()
    assert busy.lease is not None and busy.lease.holder.submission_id == rows[1].submission_id
    assert len(ledger.rows("s")) == 3  # no intent was written for k3
    answer(ledger, rows[1])
    fourth = claim_result(ledger, "k3", lanes=3).row
    assert fourth is not None
    assert lanes_by_holder(ledger) == {
        rows[0].submission_id: 0,
        fourth.submission_id: 1,
        rows[2].submission_id: 2,
    }


def test_a_lost_answer_keeps_its_lane_until_released_then_stays_live_and_may_not_send_again(
    ledger,
):
    """A lost answer keeps the row's lane while its worker reconciles it; released, the lane goes
    to the next claim, but the row's lease stays live and the ledger refuses any further send."""
    lost = claim_result(ledger, "k1", lanes=1).row
    assert lost is not None
    assert ledger.mark_unknown(lost.submission_id, message="read timeout")
    held = claim_result(ledger, "k2", lanes=1)
    assert held.row is None and held.lease is not None
    assert held.lease.holder.submission_id == lost.submission_id
    ledger.release_lane(lost.submission_id)
    after = claim_result(ledger, "k2", lanes=1).row
    assert after is not None
    assert lanes_by_holder(ledger) == {lost.submission_id: None, after.submission_id: 0}
    assert ledger.live_holders(ACCOUNT) == {lost.submission_id, after.submission_id}
    assert not ledger.note_send(lost.submission_id, sent_at=datetime.now(UTC), lease_seconds=60)
    assert ledger.get(lost.submission_id).sent_at is None
    busy = claim_result(ledger, "k3", lanes=1)  # the lost row holds no lane; k2 holds lane 0
    assert busy.lease is not None and busy.lease.holder.submission_id == after.submission_id


@pytest.mark.parametrize(
    "gone",
    [{"expires_at": datetime.now(UTC) - timedelta(seconds=1)}, {"owner_pid": DEAD_PID}],
    ids=["lease-time-past", "local-process-dead"],
)
def test_an_expired_lane_is_taken_over_only_when_no_lane_is_free(ledger, gone):
    """A lane whose worker is gone (its lease past expires_at, or its process on this host dead)
    is left alone while a lane is free; once none is, the next claim takes it: the new row gets
    that lane, the old row is parked (lane None, still unresolved) and handed back in
    taken_over, and a late send of the old row is refused."""
    first, stalled = (claim_result(ledger, f"k{n}", lanes=3).row for n in (1, 2))
    assert first is not None and stalled is not None
    set_lease(ledger, stalled, **gone)
    assert stalled.submission_id not in ledger.live_holders(ACCOUNT)
    third = claim_result(ledger, "k3", lanes=3)
    assert third.row is not None and third.taken_over == ()  # lane 2 was free
    takeover = claim_result(ledger, "k4", lanes=3)
    assert takeover.row is not None
    assert [row.submission_id for row in takeover.taken_over] == [stalled.submission_id]
    assert lanes_by_holder(ledger) == {
        first.submission_id: 0,
        stalled.submission_id: None,
        takeover.row.submission_id: 1,
        third.row.submission_id: 2,
    }
    assert ledger.get(stalled.submission_id).state == SubmissionState.INTENT
    assert not ledger.note_send(stalled.submission_id, sent_at=datetime.now(UTC), lease_seconds=60)
    assert ledger.get(stalled.submission_id).sent_at is None


def test_a_claimer_with_fewer_lanes_never_takes_a_lane_beyond_its_own(ledger):
    """Workers configured with different lanes share one account: a lanes=1 claimer waits for
    lane 0 while higher lanes are free, and takes lane 0 once it is free whatever else is held."""
    wide = claim_result(ledger, "w1", lanes=3).row
    assert wide is not None
    narrow_waits = claim_result(ledger, "n1", lanes=1)
    assert narrow_waits.row is None
    assert narrow_waits.lease is not None
    assert narrow_waits.lease.holder.submission_id == wide.submission_id
    second_wide = claim_result(ledger, "w2", lanes=3).row
    assert second_wide is not None
    answer(ledger, wide)  # lane 0 free; lane 1 still held
    narrow = claim_result(ledger, "n1", lanes=1).row
    assert narrow is not None
    third_wide = claim_result(ledger, "w3", lanes=3).row
    assert third_wide is not None
    again = claim_result(ledger, "n2", lanes=1)
    assert again.lease is not None and again.lease.holder.submission_id == narrow.submission_id
    assert lanes_by_holder(ledger) == {
        narrow.submission_id: 0,
        second_wide.submission_id: 1,
        third_wide.submission_id: 2,
    }


RACERS = 6
RACE_LANES = 3
ROUNDS = 4


def test_racing_claimers_never_share_a_lane_nor_hold_more_than_the_lanes(ledger_url):
    """Six workers (own connections) released together by a barrier claim prompts of one
    account with lanes=3, round after round: each round exactly lanes 0, 1 and 2 are held, by
    three distinct rows, and the others are told to wait."""
    assert Ledger(ledger_url).engine is not None  # the schema, once
    barrier = threading.Barrier(RACERS, timeout=120)
    held: list[list[Lease]] = []
    waited: list[int] = [0] * ROUNDS
    counting = threading.Lock()
    failures: list[BaseException] = []

    def racer(index: int) -> None:
        mine = Ledger(ledger_url)
        try:
            assert mine.engine is not None  # connected and migrated before the race
            for round_ in range(ROUNDS):
                barrier.wait()
                row = None
                for _ in range(200):
                    result = claim_result(mine, f"r{round_}-p{index}", lanes=RACE_LANES)
                    assert not result.covered
                    if result.row is not None:
                        row = result.row
                        break
                    if result.lease is not None:  # every lane is live: sit this round out
                        with counting:
                            waited[round_] += 1
                        break
                    # a racer took the same lane first (the unique index refused this one)
                else:
                    raise AssertionError("a claim neither got a lane nor saw them all held")
                barrier.wait()
                if index == 0:
                    held.append(mine.leases(ACCOUNT))
                barrier.wait()
                if row is not None:
                    answer(mine, row)
        except BaseException as error:
            failures.append(error)
            barrier.abort()
        finally:
            mine.dispose()

    threads = [threading.Thread(target=racer, args=(index,)) for index in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert len(held) == ROUNDS
    for leases in held:
        assert len(leases) == RACE_LANES
        assert {lease.lane for lease in leases} == set(range(RACE_LANES))
        assert len({lease.holder.submission_id for lease in leases}) == RACE_LANES
    assert waited == [RACERS - RACE_LANES] * ROUNDS
    assert len(Ledger(ledger_url).rows("s")) == ROUNDS * RACE_LANES


def test_racing_claimers_take_each_expired_lane_over_exactly_once(ledger_url):
    """Every lane of the account is held by a dead worker; six workers released together by a
    barrier claim with lanes=3: three new rows hold lanes 0, 1 and 2, each dead row is parked and
    handed to exactly one claimer for reconciliation, and the other three are told to wait."""
    ledger = Ledger(ledger_url)
    dead = [claim_result(ledger, f"dead{n}", lanes=RACE_LANES).row for n in range(RACE_LANES)]
    for row in dead:
        assert row is not None
        set_lease(ledger, row, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    barrier = threading.Barrier(RACERS, timeout=120)
    claims: list[Claim] = []
    failures: list[BaseException] = []

    def racer(index: int) -> None:
        mine = Ledger(ledger_url)
        try:
            assert mine.engine is not None  # connected and migrated before the race
            barrier.wait()
            for _ in range(200):
                result = claim_result(mine, f"p{index}", lanes=RACE_LANES)
                if result.row is not None or result.lease is not None:
                    claims.append(result)
                    return
            raise AssertionError("a claim neither got a lane nor saw them all held")
        except BaseException as error:
            failures.append(error)
        finally:
            mine.dispose()

    threads = [threading.Thread(target=racer, args=(index,)) for index in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    winners = [claim.row.submission_id for claim in claims if claim.row is not None]
    assert len(winners) == RACE_LANES
    assert sum(claim.lease is not None for claim in claims) == RACERS - RACE_LANES
    handed = sorted(row.submission_id for claim in claims for row in claim.taken_over)
    assert handed == sorted(row.submission_id for row in dead if row is not None)
    lanes = lanes_by_holder(ledger)
    assert {lanes[winner] for winner in winners} == set(range(RACE_LANES))
    assert all(lanes[row.submission_id] is None for row in dead if row is not None)


# -- upgrading a version 4 ledger ------------------------------------------------------------------


def _version_4_leases(conn: sa.Connection, leases: list[dict[str, Any]]) -> None:
    """Replace the leases table by version 4's (one row per account; a free lease has no
    submission) holding ``leases``, and mark the ledger version 4."""
    conn.execute(sa.text("DROP TABLE krea_submit_leases"))
    old = sa.Table(
        "krea_submit_leases",
        sa.MetaData(),
        sa.Column("account", sa.String(128), primary_key=True),
        sa.Column("submission_id", sa.String(36)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("owner_host", sa.String(255)),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    old.create(conn)
    conn.execute(old.insert(), leases)
    conn.execute(meta_table.update().values(value="4"))


def test_a_version_4_ledger_keeps_its_held_lease_on_lane_0_and_drops_its_free_one(ledger_url):
    """Upgrading a version 4 ledger in place: the lease an unresolved row held becomes that
    row's lease on lane 0 (it still blocks a lanes=1 claim and counts against lanes=2), and an
    account's free lease leaves nothing behind."""
    ledger = Ledger(ledger_url)
    held = claim_result(ledger, "k1").row
    freed = claim_result(ledger, "k1", batch="b2", account="acct-free").row
    assert held is not None and freed is not None
    answer(ledger, freed)
    (lease,) = ledger.leases(ACCOUNT)
    now = datetime.now(UTC)
    with ledger.transaction() as conn:
        _version_4_leases(
            conn,
            [
                {
                    "account": ACCOUNT,
                    "submission_id": held.submission_id,
                    "expires_at": lease.expires_at,
                    "owner_host": lease.owner_host,
                    "owner_pid": lease.owner_pid,
                    "updated_at": now,
                },
                {
                    "account": "acct-free",
                    "submission_id": None,
                    "expires_at": None,
                    "owner_host": lease.owner_host,
                    "owner_pid": lease.owner_pid,
                    "updated_at": now,
                },
            ],
        )
    ledger.dispose()

    upgraded = Ledger(ledger_url)
    (kept,) = upgraded.leases(ACCOUNT)
    assert kept.holder.submission_id == held.submission_id and kept.lane == 0
    assert kept.expires_at == lease.expires_at and kept.owner_pid == lease.owner_pid
    assert upgraded.live_holders(ACCOUNT) == {held.submission_id}
    blocked = claim_result(upgraded, "k2", lanes=1)
    assert blocked.lease is not None and blocked.lease.holder.submission_id == held.submission_id
    beside = claim_result(upgraded, "k2", lanes=2).row
    assert beside is not None
    assert lanes_by_holder(upgraded) == {held.submission_id: 0, beside.submission_id: 1}
    assert upgraded.leases("acct-free") == []
    with upgraded.engine.connect() as conn:
        assert conn.execute(sa.select(meta_table.c.value)).scalar_one() == str(SCHEMA_VERSION)
        count = conn.execute(sa.text("SELECT COUNT(*) FROM krea_submit_leases")).scalar_one()
    assert count == 2  # k1's upgraded lease and k2's; nothing of the free one


# -- the submitter, against the emulator -----------------------------------------------------------


def planned(count: int) -> list[PlannedPrompt]:
    return [
        PlannedPrompt(f"k{n}", {"prompt": f"a lane test prompt {n}"}, f"h{n}", 0.007)
        for n in range(count)
    ]


def submit(
    emulator: EmulatorHandle,
    ledger: Ledger,
    prompts: list[PlannedPrompt],
    *,
    lanes: int,
    request_window: float | None = None,
) -> SubmitReport:
    """One pass of the engine's submitter over ``prompts`` with ``lanes`` lanes (windows of
    ``request_window``, the resource's by default)."""
    krea = make_resource(emulator)

    async def work() -> SubmitReport:
        async with krea.async_client() as client:
            submitter = BatchSubmitter(
                client,
                ledger,
                scope="s",
                batch="b1",
                generation=1,
                model=TEST_MODEL,
                run_id="run",
                account=krea.account_id,
                request_window=request_window or krea.request_window,
                lanes=lanes,
                log=LOG,
            )
            return await submitter.run(prompts)

    return asyncio.run(work())


def max_overlap(intervals: list[tuple[datetime | None, datetime | None]]) -> int:
    """The most intervals that share an instant (each must have both ends)."""
    assert all(start is not None and end is not None for start, end in intervals)
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    current = best = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


class FirstClaimsMeet(Ledger):
    """The first ``parties`` claims wait for each other before writing, so the lanes' first
    POSTs start together (``met`` says whether they did: a submitter that claims one prompt at
    a time breaks the barrier)."""

    def __init__(self, url: str, parties: int) -> None:
        super().__init__(url)
        self._barrier = threading.Barrier(parties, timeout=30)
        self._waiting = parties
        self._lock = threading.Lock()
        self.met = True

    def claim(self, **facts: Any) -> Claim:
        with self._lock:
            first = self._waiting > 0
            self._waiting -= 1
        if first:
            try:
                self._barrier.wait()
            except threading.BrokenBarrierError:
                self.met = False
        return super().claim(**facts)


LATENCY_MS = 1000.0


def test_lanes_put_several_posts_in_flight_and_submit_each_prompt_once(emulator, tmp_path):
    """With lanes=4 and 1 s of latency on every POST, the first four claims happen together,
    their [sent_at, submitted_at] intervals overlap, Krea creates jobs less than one POST's
    latency apart (only POSTs in flight together can), never more than four are unresolved at
    once, and each of the 8 prompts is submitted exactly once."""
    emulator.configure(latency_ms=LATENCY_MS, latency_routes=["POST /generate"])
    ledger = FirstClaimsMeet(f"sqlite:///{tmp_path / 'ledger.db'}", parties=4)
    # The schema first, as the pipeline's earlier ledger calls make it: the lanes' first claims
    # all use the ledger at once.
    assert ledger.engine is not None
    report = submit(emulator, ledger, planned(8), lanes=4)
    assert report.stopped_by is None and report.submitted == 8
    assert ledger.met
    rows = ledger.rows("s")
    assert len(rows) == 8 and all(row.job_id for row in rows)
    intervals = [(row.sent_at, row.submitted_at) for row in rows]
    assert 2 <= max_overlap(intervals) <= 4
    created = sorted(row.krea_created_at for row in rows if row.krea_created_at is not None)
    assert len(created) == 8
    gaps = [later - earlier for earlier, later in itertools.pairwise(created)]
    assert min(gaps) < timedelta(milliseconds=LATENCY_MS)
    stats = emulator.stats()
    assert stats["jobs_created"] == 8 and stats["duplicate_submissions"] == 0


class LosesAnswers(Ledger):
    """The emulator loses the answer to the POST of each of ``lost_keys`` (``fault`` is on only
    while that POST is in flight, and it is the only POST in flight then: its claim waits for
    every other claimed row to be answered, and other claims wait for its answer to be lost).

    Each lost row's resolution waits (at most ``hold`` seconds) until every other prompt of
    the batch is answered, so a submitter that keeps the lost row's prompt from the others
    shows it: ``others_first`` turns False.
    """

    def __init__(
        self,
        url: str,
        emulator: EmulatorHandle,
        lost_keys: set[str],
        fault: dict[str, Any],
        *,
        prompts: int,
        hold: float = 30.0,
    ) -> None:
        super().__init__(url)
        self.emulator = emulator
        self.lost_keys = lost_keys
        self.fault = fault
        self.prompts = prompts
        self.hold = hold
        self.lost: set[str] = set()
        self.others_first = True
        self._alone = threading.Lock()
        self._faulty = False
        #: Prompts claimed while a lost answer was still undecided.
        self.claimed_while_lost: list[str] = []

    def claim(self, **facts: Any) -> Claim:
        losing = facts["prompt_key"] in self.lost_keys
        while True:
            with self._alone:
                if not self._faulty and (not losing or self._quiet()):
                    if any(self.get(lost).is_unresolved for lost in self.lost):
                        self.claimed_while_lost.append(facts["prompt_key"])
                    result = super().claim(**facts)
                    if result.row is not None and losing:
                        self.emulator.configure(**self.fault)
                        self._faulty = True
                    return result
            time.sleep(0.01)

    def _quiet(self) -> bool:
        """No claimed row is waiting for its answer."""
        return not any(row.state == SubmissionState.INTENT for row in self.rows("s"))

    def mark_unknown(self, submission_id: str, *, message: str) -> bool:
        self.emulator.configure(**dict.fromkeys(self.fault, 0.0))
        self._faulty = False
        self.lost.add(submission_id)
        return super().mark_unknown(submission_id, message=message)

    def _resolve(self, submission_id: str, **values: Any) -> bool:
        if submission_id in self.lost:
            deadline = time.monotonic() + self.hold
            while not self._others_answered():
                if time.monotonic() > deadline:
                    self.others_first = False
                    break
                time.sleep(0.05)
        return super()._resolve(submission_id, **values)

    def _others_answered(self) -> bool:
        rows = self.rows("s")
        answered = [row for row in rows if row.job_id and row.submission_id not in self.lost]
        return len(answered) >= self.prompts - len(self.lost_keys)


DROP = {"accept_then_drop_rate": 1.0}
SERVER_ERROR = {"error_5xx_rate": 1.0}


@pytest.mark.parametrize(
    ("fault", "outcome", "jobs"),
    [(DROP, Outcome.ATTRIBUTED, 5), (SERVER_ERROR, Outcome.NOT_CREATED, 4)],
    ids=["answer-dropped-job-created", "5xx-no-job"],
)
def test_with_two_lanes_a_lost_answer_holds_only_its_own_prompt(
    emulator, tmp_path, fault, outcome, jobs
):
    """With lanes=2, the second of five POSTs loses its answer: the other four prompts are all
    submitted before the lost row is decided, and the lost row ends attributed to the job its
    POST made (or not created, after a 5xx that made none), nothing paid twice."""
    emulator.configure(error_5xx_routes=["POST /generate"])
    ledger = LosesAnswers(f"sqlite:///{tmp_path / 'ledger.db'}", emulator, {"k1"}, fault, prompts=5)
    report = submit(emulator, ledger, planned(5), lanes=2)
    assert report.stopped_by is None
    assert report.reconciled == [outcome]
    assert ledger.others_first
    (lost_id,) = ledger.lost
    lost = ledger.get(lost_id)
    others = [row.submitted_at for row in ledger.rows("s") if row.submission_id != lost_id]
    assert len(others) == 4
    assert all(submitted is not None and submitted < lost.updated_at for submitted in others)
    if outcome is Outcome.ATTRIBUTED:
        assert lost.job_id is not None and lost.state != SubmissionState.REPORTED
    else:
        assert lost.state == SubmissionState.NOT_CREATED and lost.job_id is None
    stats = emulator.stats()
    assert stats["jobs_created"] == jobs and stats["duplicate_submissions"] == 0


def test_with_one_lane_nothing_is_sent_while_a_lost_answer_is_undecided(emulator, tmp_path):
    """With lanes=1, a 5xx that made no job keeps the account's only lane until its window has
    closed: no prompt after it is even claimed before it is decided not created, so no job is
    ever doubtful. (Its window, 25 s, is far longer than the few seconds a lost answer waits
    on its lane with several lanes, however slowly the 5xx comes back.)"""
    emulator.configure(error_5xx_routes=["POST /generate"])
    ledger = LosesAnswers(
        f"sqlite:///{tmp_path / 'ledger.db'}", emulator, {"k1"}, SERVER_ERROR, prompts=5, hold=1.0
    )
    report = submit(emulator, ledger, planned(5), lanes=1, request_window=12.0)
    assert report.stopped_by is None and report.reconciled == [Outcome.NOT_CREATED]
    assert ledger.claimed_while_lost == []
    (lost_id,) = ledger.lost
    lost = ledger.get(lost_id)
    later = [
        row.intent_at
        for row in ledger.rows("s")
        if row.submission_id != lost_id and row.intent_at > lost.intent_at
    ]
    assert len(later) == 3 and all(intent > lost.updated_at for intent in later)


def test_two_lost_answers_in_a_row_on_one_lane_are_each_attributed_none_reported(
    emulator, tmp_path
):
    """With lanes=1, the answers of two consecutive POSTs are dropped after Krea created their
    jobs: each is attributed to its own job before the lane moves on (none left for a person),
    nothing re-sent."""
    ledger = LosesAnswers(
        f"sqlite:///{tmp_path / 'ledger.db'}", emulator, {"k1", "k2"}, DROP, prompts=5, hold=0.0
    )  # no hold: the lost rows are decided as soon as the evidence allows
    report = submit(emulator, ledger, planned(5), lanes=1)
    assert report.stopped_by is None
    states = {row.prompt_key: row.state for row in ledger.rows("s")}
    assert SubmissionState.REPORTED not in states.values(), states
    assert sorted(report.reconciled) == [Outcome.ATTRIBUTED, Outcome.ATTRIBUTED]
    stats = emulator.stats()
    assert stats["jobs_created"] == 5 and stats["duplicate_submissions"] == 0
