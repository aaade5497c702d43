"""Where one POST's time goes on the submit path, and what one lost answer costs the account.

``python -m bench.submit_profile`` (SQLite; ``--pg`` adds PostgreSQL from ``KREA_TEST_PG_URL``,
``--smoke`` runs tiny counts with short timeouts). It drives the engine's ``BatchSubmitter``
directly (no Dagster) against a spawned emulator and measures three things:

1. **One lane** (``profile_lane``): one submitter POSTs ``n`` prompts, at each ``latencies``
   (the emulator's ``latency_ms`` on every API request) and on each ledger. Per POST: the wall
   time; the ledger calls the submitter makes, each with its transactions, SQL statements and
   milliseconds (``claim``, ``note_send``, ``mark_submitted``, ... as named by the ``Ledger``:
   nested calls count in the outermost one); the POST call (the client's ``submit``, minus the
   ``note_send`` it makes before sending: the network round trip and the client's own work);
   and what is left (the event loop and thread hand-offs).
2. **Several workers** (``profile_workers``): ``workers`` processes, each a submitter of its own
   batch, on one account and one ledger, started together. The account's total POSTs per second
   (Krea's ``created_at``), and the claims each worker had refused because another held the
   submit lease.
3. **One lost answer** (``profile_lost_answer``): one submitter, ``n`` prompts, with the
   client's default timeouts; the ``lost_at``-th POST meets one fault of the emulator and the
   others none. ``held_seconds`` is how long the account's next POST waited after the faulty
   one was sent (every other submission of the account waits as long: the lease is held).

Writes ``submit_profile.json`` and ``submit_profile.md`` to ``--out`` (default
``bench/results/``).
"""

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.params import MODEL, SEED
from bench.workload import job_times
from krea_dagster.api import AsyncKreaClient, Timeouts
from krea_dagster.api.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
)
from krea_dagster.emulator import DEMO_NODE_APP_ID
from krea_dagster.emulator.testing import EmulatorHandle, spawn_emulator
from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.prompts import request_hash
from krea_dagster.engine.submit import BatchSubmitter, PlannedPrompt, SubmitReport

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
NODE_APP = f"node-app/{DEMO_NODE_APP_ID}"
# The Ledger methods are wrapped by name; these are not calls of the protocol.
_NOT_PROFILED = frozenset({"transaction", "dispose", "engine", "url"})


@dataclass(frozen=True)
class ProfileParams:
    """Counts and knobs of one profile run (recorded in the JSON)."""

    mode: str
    lane_posts: int = 200
    latencies_ms: tuple[float, ...] = (0.0, 100.0)
    workers: int = 4
    worker_posts: int = 100
    lost_posts: int = 6
    lost_at: int = 3
    # The client's timeouts for the lost answers: Krea's defaults (connect, write, read).
    timeouts: tuple[float, float, float] = (
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_WRITE_TIMEOUT,
        DEFAULT_READ_TIMEOUT,
    )
    faults: tuple[str, ...] = ("dropped", "hung", "error_5xx", "node_app_dropped")


FULL = ProfileParams(mode="full")
SMOKE = ProfileParams(
    mode="smoke",
    lane_posts=10,
    latencies_ms=(20.0,),
    workers=2,
    worker_posts=5,
    lost_posts=4,
    lost_at=2,
    # Short enough that each window closes in seconds, long enough for a loaded machine.
    timeouts=(0.5, 0.5, 1.0),
    # "hung" is the 5xx case's path behind a read timeout: left to the full profile.
    faults=("dropped", "error_5xx", "node_app_dropped"),
)


def _say(message: str) -> None:
    print(f"[profile {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- instrumentation ------------------------------------------------------------------------------


@dataclass
class CallStats:
    """What one ledger method cost over a run (outermost calls only)."""

    seconds: list[float] = field(default_factory=list)
    transactions: int = 0
    statements: int = 0

    def record(self, posts: int) -> dict[str, Any]:
        ms = sorted(s * 1000 for s in self.seconds)
        return {
            "calls": len(ms),
            "calls_per_post": len(ms) / posts,
            "transactions_per_post": self.transactions / posts,
            "statements_per_post": self.statements / posts,
            "ms_total_per_post": sum(ms) / posts,
            "ms_mean": statistics.fmean(ms) if ms else 0.0,
            "ms_median": statistics.median(ms) if ms else 0.0,
            "ms_p95": ms[int(0.95 * (len(ms) - 1))] if ms else 0.0,
        }


class LedgerProfile:
    """Times every public method of one ``Ledger`` and counts the transactions and SQL
    statements each one runs (``begin`` and ``before_cursor_execute`` events of its engine),
    attributed to the outermost method on the calling thread."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.stats: dict[str, CallStats] = defaultdict(CallStats)
        self._local = threading.local()
        self._lock = threading.Lock()
        engine = ledger.engine
        sa.event.listen(engine, "begin", self._on_begin)
        sa.event.listen(engine, "before_cursor_execute", self._on_statement)
        for name in dir(type(ledger)):
            if name.startswith("_") or name in _NOT_PROFILED:
                continue
            method = getattr(ledger, name)
            if callable(method):
                setattr(ledger, name, self._wrap(name, method))

    def _current(self) -> str | None:
        stack: list[str] = getattr(self._local, "stack", [])
        return stack[0] if stack else None

    def _on_begin(self, _conn: Any) -> None:
        current = self._current()
        if current is not None:
            with self._lock:
                self.stats[current].transactions += 1

    def _on_statement(self, *_args: Any) -> None:
        current = self._current()
        if current is not None:
            with self._lock:
                self.stats[current].statements += 1

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack: list[str] = self._local.__dict__.setdefault("stack", [])
            stack.append(name)
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                stack.pop()
                if not stack:
                    with self._lock:
                        self.stats[name].seconds.append(elapsed)

        return timed

    def seconds(self, name: str) -> float:
        with self._lock:
            return sum(self.stats[name].seconds)

    def record(self, posts: int) -> dict[str, Any]:
        return {
            name: stats.record(posts) for name, stats in sorted(self.stats.items()) if stats.seconds
        }


class TimedPosts:
    """Wraps the client's job-creating calls: each call's time, minus the ``note_send`` write
    the submitter makes inside it (before the request goes out); an optional fault on one call.
    """

    def __init__(
        self,
        client: AsyncKreaClient,
        profile: LedgerProfile,
        fault: tuple[int, Callable[[], None], Callable[[], None]] | None = None,
    ) -> None:
        self.seconds: list[float] = []
        self.calls = 0
        self._profile = profile
        self._fault = fault
        for name in ("submit", "execute_node_app"):
            setattr(client, name, self._wrap(getattr(client, name)))

    def _wrap(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            faulty = self._fault is not None and self.calls == self._fault[0]
            if faulty and self._fault is not None:
                await asyncio.to_thread(self._fault[1])
            sends_before = self._profile.seconds("note_send")
            started = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds.append(elapsed - (self._profile.seconds("note_send") - sends_before))
                if faulty and self._fault is not None:
                    await asyncio.to_thread(self._fault[2])

        return timed


# -- the submitter under test ---------------------------------------------------------------------


def tiny_png() -> str:
    """A data: URI of a small PNG (the node app's product photo)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def planned_prompts(model: str, count: int, tag: str) -> list[PlannedPrompt]:
    """Distinct requests for ``model`` (a repeated body would be a duplicate paid job)."""
    photo = tiny_png() if model == NODE_APP else None
    prompts = []
    for index in range(count):
        if photo is not None:
            request: dict[str, Any] = {"product_image": photo, "product": f"{tag} teapot {index}"}
        else:
            request = {
                "prompt": f"{tag} {index}: a lighthouse at dusk",
                "width": 512,
                "height": 512,
            }
        prompts.append(
            PlannedPrompt(
                prompt_key=f"{tag}-{index:05d}",
                request=request,
                request_hash=request_hash(model, request),
                estimated_usd=None,
            )
        )
    return prompts


def client_for(emulator: dict[str, str], timeouts: tuple[float, float, float]) -> AsyncKreaClient:
    connect, write, read = timeouts
    return AsyncKreaClient(
        api_key=emulator["token"],
        base_url=emulator["base_url"],
        timeout=Timeouts(connect=connect, read=read, write=write),
    )


async def run_submitter(
    emulator: dict[str, str],
    ledger: Ledger,
    prompts: list[PlannedPrompt],
    *,
    model: str,
    scope: str,
    timeouts: tuple[float, float, float],
    fault: tuple[int, Callable[[], None], Callable[[], None]] | None = None,
    start_at: float | None = None,
) -> tuple[SubmitReport, LedgerProfile, TimedPosts, float, int]:
    """One ``BatchSubmitter`` over ``prompts`` (the jobs step's submitting, without Dagster):
    its report, the ledger profile, the POST calls, the wall seconds and refused claims."""
    batch = "profile"
    generation = ledger.ensure_generation(scope, batch)
    account = emulator["token"].split(":", 1)[0]
    ledger.register_account(account)
    profile = LedgerProfile(ledger)  # the submitter's calls only, not this set-up
    async with client_for(emulator, timeouts) as client:
        posts = TimedPosts(client, profile, fault)
        submitter = BatchSubmitter(
            client,
            ledger,
            scope=scope,
            batch=batch,
            generation=generation,
            model=model,
            run_id=None,
            account=account,
            request_window=sum(timeouts),
        )
        refused = 0
        claim = ledger.claim

        def counted_claim(**kwargs: Any) -> Any:
            nonlocal refused
            result = claim(**kwargs)
            if result.row is None and result.lease is not None:
                refused += 1
            return result

        ledger.claim = counted_claim  # type: ignore[method-assign]
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        report = await submitter.run(prompts)
        seconds = time.perf_counter() - started
    return report, profile, posts, seconds, refused


# -- 1. one lane ----------------------------------------------------------------------------------


def profile_lane(
    emulator: EmulatorHandle, ledger_url: str, posts: int, latency_ms: float
) -> dict[str, Any]:
    """One submitter, ``posts`` POSTs at ``latency_ms``: where each POST's time goes."""
    emulator.reset(config=True, accounts=True)
    emulator.configure(latency_ms=latency_ms, render_seconds=600)
    ledger = Ledger(ledger_url)
    try:
        report, profile, timed, seconds, _ = asyncio.run(
            run_submitter(
                _handle(emulator),
                ledger,
                planned_prompts(MODEL, posts, f"lane {latency_ms:g}"),
                model=MODEL,
                scope=f"lane{int(latency_ms)}",
                timeouts=(DEFAULT_CONNECT_TIMEOUT, DEFAULT_WRITE_TIMEOUT, DEFAULT_READ_TIMEOUT),
            )
        )
    finally:
        ledger.dispose()
    done = report.submitted
    if done != posts:
        raise RuntimeError(f"{done} of {posts} POSTs were answered: {report.stopped_by}")
    calls = profile.record(done)
    ledger_ms = sum(call["ms_total_per_post"] for call in calls.values())
    post_ms = sum(timed.seconds) * 1000 / done
    per_post_ms = seconds * 1000 / done
    return {
        "latency_ms": latency_ms,
        "posts": done,
        "seconds": seconds,
        "posts_per_second": done / seconds,
        "ms_per_post": per_post_ms,
        "ledger_ms_per_post": ledger_ms,
        "ledger_transactions_per_post": sum(c["transactions_per_post"] for c in calls.values()),
        "ledger_statements_per_post": sum(c["statements_per_post"] for c in calls.values()),
        "post_call_ms_per_post": post_ms,
        "other_ms_per_post": per_post_ms - ledger_ms - post_ms,
        "ledger_calls": calls,
    }


# -- 2. several workers on one account ------------------------------------------------------------


def profile_workers(
    emulator: EmulatorHandle, ledger_url: str, workers: int, posts: int, latency_ms: float
) -> dict[str, Any]:
    """``workers`` processes, ``posts`` POSTs each, one account, one ledger, started together."""
    emulator.reset(config=True, accounts=True)
    emulator.configure(latency_ms=latency_ms, render_seconds=600)
    Ledger(ledger_url).engine.dispose()  # the schema, before the workers race to create it
    start_at = time.time() + 4.0  # after every worker has imported and connected
    processes = []
    for index in range(workers):
        spec = {
            "emulator": _handle(emulator),
            "ledger_url": ledger_url,
            "posts": posts,
            "scope": f"worker{index}-{int(latency_ms)}",
            "start_at": start_at,
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.submit_profile", "--worker", json.dumps(spec)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"a profile worker failed ({process.returncode}): {err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    created = sorted(created for created, _ in job_times(emulator.base_url, emulator.token))
    span = created[-1] - created[0]
    return {
        "workers": workers,
        "latency_ms": latency_ms,
        "posts": len(created),
        "posts_per_second": (len(created) - 1) / span if span > 0 else float("inf"),
        "per_worker": reports,
        "claims_refused_per_post": sum(r["claims_refused"] for r in reports) / len(created),
    }


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    ledger = Ledger(spec["ledger_url"])
    report, profile, _timed, seconds, refused = asyncio.run(
        run_submitter(
            spec["emulator"],
            ledger,
            planned_prompts(MODEL, spec["posts"], spec["scope"]),
            model=MODEL,
            scope=spec["scope"],
            timeouts=(DEFAULT_CONNECT_TIMEOUT, DEFAULT_WRITE_TIMEOUT, DEFAULT_READ_TIMEOUT),
            start_at=spec["start_at"],
        )
    )
    ledger.dispose()
    return {
        "posts": report.submitted,
        "seconds": seconds,
        "posts_per_second": report.submitted / seconds,
        "claims_refused": refused,
        "ledger_ms_per_post": sum(
            c["ms_total_per_post"] for c in profile.record(max(report.submitted, 1)).values()
        ),
    }


# -- 3. one lost answer ---------------------------------------------------------------------------


def _fault_knobs(fault: str, read_timeout: float) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The emulator knobs that make one POST meet ``fault`` (on, off) and the model it uses."""
    if fault in ("dropped", "node_app_dropped"):
        model = NODE_APP if fault == "node_app_dropped" else MODEL
        return {"accept_then_drop_rate": 1.0}, {"accept_then_drop_rate": 0.0}, model
    if fault == "error_5xx":
        on = {"error_5xx_rate": 1.0, "error_5xx_routes": ["POST /generate"]}
        return on, {"error_5xx_rate": 0.0, "error_5xx_routes": []}, MODEL
    if fault == "hung":
        # No answer before the client gives up (its read timeout); the emulator abandons the
        # request when the client closes the connection, so no job is created.
        delay = (read_timeout + 2.0) * 1000
        on = {"latency_ms": delay, "latency_routes": ["POST /generate"]}
        return on, {"latency_ms": 0.0, "latency_routes": []}, MODEL
    raise ValueError(f"unknown fault {fault!r}")


FAULT_TEXT = {
    "dropped": "POST /generate: the job is created, the answer is lost (connection dropped)",
    "hung": "POST /generate: no answer before the read timeout (the server drops the request "
    "with the connection: no job)",
    "error_5xx": "POST /generate: a 5xx before any job exists",
    "node_app_dropped": "POST /node-apps/{id}/execute: the jobs are created, the answer is lost",
}


def profile_lost_answer(
    emulator: EmulatorHandle,
    ledger_url: str,
    fault: str,
    posts: int,
    lost_at: int,
    timeouts: tuple[float, float, float],
) -> dict[str, Any]:
    """``posts`` POSTs in one lane; the ``lost_at``-th meets ``fault``: how long the next waits."""
    emulator.reset(config=True, accounts=True)
    emulator.configure(render_seconds=600)
    on, off, model = _fault_knobs(fault, timeouts[2])
    ledger = Ledger(ledger_url)
    scope = f"lost-{fault}".replace("_", "-")
    try:
        report, _profile, _timed, seconds, _ = asyncio.run(
            run_submitter(
                _handle(emulator),
                ledger,
                planned_prompts(model, posts, scope),
                model=model,
                scope=scope,
                timeouts=timeouts,
                fault=(
                    lost_at,
                    lambda: emulator.configure(**on),
                    lambda: emulator.configure(**off),
                ),
            )
        )
        rows = [row for row in ledger.rows(scope) if row.parent_id is None]
    finally:
        ledger.dispose()
    sent = [row.sent_at for row in rows]
    if any(when is None for when in sent) or len(rows) != posts:
        raise RuntimeError(f"{fault}: expected {posts} sent rows, got {[r.state for r in rows]}")
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sent)]  # type: ignore[operator]
    held = gaps[lost_at - 1]
    others = gaps[: lost_at - 1] + gaps[lost_at:]
    faulty = rows[lost_at - 1]
    return {
        "fault": fault,
        "what": FAULT_TEXT[fault],
        "model": model,
        "timeouts": list(timeouts),
        "request_window_seconds": sum(timeouts),
        "posts": posts,
        "lost_at": lost_at,
        "held_seconds": held,
        "typical_gap_seconds": statistics.median(others) if others else 0.0,
        "faulty_row_state": faulty.state,
        "faulty_row_error": faulty.error_code,
        "reconciled": [str(outcome) for outcome in report.reconciled],
        "seconds": seconds,
        "jobs_billed_or_live": emulator.stats()["jobs_created"],
    }


# -- the command ----------------------------------------------------------------------------------


def _handle(emulator: EmulatorHandle) -> dict[str, str]:
    return {"base_url": emulator.base_url, "token": emulator.token}


@contextlib.contextmanager
def ledgers(scratch: Path, pg: bool) -> Iterator[list[tuple[str, str]]]:
    """(name, URL) of the ledgers to profile: SQLite in ``scratch``, and a fresh PostgreSQL
    database when ``pg`` (dropped afterwards)."""
    found = [("sqlite", f"sqlite:///{scratch / 'ledger.db'}")]
    name = None
    pg_url = os.environ.get("KREA_TEST_PG_URL")
    if pg:
        if not pg_url:
            raise SystemExit("--pg needs KREA_TEST_PG_URL (source the services' env.sh)")
        from bench.day import _database

        name = f"krea_profile_{uuid.uuid4().hex[:8]}"
        found.append(("postgresql", _database(pg_url, name)))
    try:
        yield found
    finally:
        if name is not None and pg_url:
            from bench.day import _drop

            _drop(pg_url, name)


def profile(params: ProfileParams, scratch: Path, pg: bool, parts: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {"lane": {}, "workers": {}, "lost_answers": {}}
    with spawn_emulator("--seed", str(SEED), "--concurrency", "1000", "--backlog", "100000",
                        "--balance-usd", "1000000") as emulator, ledgers(scratch, pg) as urls:  # fmt: skip
        for name, url in urls:
            for latency in params.latencies_ms:
                if "lane" in parts:
                    _say(f"one lane, {name}, {latency:g} ms, {params.lane_posts} POSTs")
                    result = profile_lane(
                        emulator, _fresh(url, name, scratch, "lane"), params.lane_posts, latency
                    )
                    results["lane"][f"{name}_{latency:g}ms"] = result
                if "workers" in parts:
                    _say(f"{params.workers} workers, {name}, {latency:g} ms")
                    result = profile_workers(
                        emulator, _fresh(url, name, scratch, "workers"), params.workers,
                        params.worker_posts, latency,
                    )  # fmt: skip
                    results["workers"][f"{name}_{latency:g}ms"] = result
        if "lost" in parts:
            for fault in params.faults:
                _say(f"one lost answer: {FAULT_TEXT[fault]}")
                results["lost_answers"][fault] = profile_lost_answer(
                    emulator, _fresh(urls[0][1], "sqlite", scratch, f"lost-{fault}"), fault,
                    params.lost_posts, params.lost_at, params.timeouts,
                )  # fmt: skip
    return results


def _fresh(url: str, name: str, scratch: Path, tag: str) -> str:
    """A SQLite file per measurement; PostgreSQL keeps one database (scopes keep runs apart)."""
    return f"sqlite:///{scratch / f'{tag}-{uuid.uuid4().hex[:6]}.db'}" if name == "sqlite" else url


def markdown(record: dict[str, Any]) -> str:
    results = record["results"]
    lines = [
        f"# Submit path profile ({record['params']['mode']})",
        "",
        "One lane: one `BatchSubmitter`, default client timeouts; ms per POST.",
        "",
        "| ledger, latency | POSTs/s | ms per POST | ledger ms | ledger transactions | SQL "
        "statements | POST call ms | other ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, lane in results["lane"].items():
        lines.append(
            f"| {key} | {lane['posts_per_second']:.1f} | {lane['ms_per_post']:.1f} "
            f"| {lane['ledger_ms_per_post']:.1f} | {lane['ledger_transactions_per_post']:.2f} "
            f"| {lane['ledger_statements_per_post']:.1f} | {lane['post_call_ms_per_post']:.1f} "
            f"| {lane['other_ms_per_post']:.1f} |"
        )
    lines += [
        "",
        "Ledger calls per POST (outermost calls; transactions include reads):",
        "",
        "| ledger, latency | call | calls/POST | transactions/POST | statements/POST | "
        "ms mean | ms median | ms p95 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, lane in results["lane"].items():
        for name, call in lane["ledger_calls"].items():
            lines.append(
                f"| {key} | `{name}` | {call['calls_per_post']:.2f} "
                f"| {call['transactions_per_post']:.2f} | {call['statements_per_post']:.2f} "
                f"| {call['ms_mean']:.2f} | {call['ms_median']:.2f} | {call['ms_p95']:.2f} |"
            )
    if results["workers"]:
        lines += [
            "",
            "Several workers on one account (the submit lease serializes them):",
            "",
            "| ledger, latency | workers | POSTs | account POSTs/s | claims refused per POST |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, run in results["workers"].items():
            lines.append(
                f"| {key} | {run['workers']} | {run['posts']} | {run['posts_per_second']:.1f} "
                f"| {run['claims_refused_per_post']:.2f} |"
            )
    if results["lost_answers"]:
        lines += [
            "",
            "One lost answer (client timeouts connect / write / read "
            f"{' / '.join(f'{t:g}' for t in record['params']['timeouts'])} s): how long the "
            "account's next POST waited after the faulty one was sent.",
            "",
            "| fault | held (s) | usual gap (s) | the faulty row ended |",
            "|---|---:|---:|---|",
        ]
        for run in results["lost_answers"].values():
            lines.append(
                f"| {run['what']} | {run['held_seconds']:.2f} | {run['typical_gap_seconds']:.3f} "
                f"| {run['faulty_row_state']} ({', '.join(run['reconciled']) or 'answered'}) |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, short timeouts")
    parser.add_argument("--pg", action="store_true", help="also on PostgreSQL (KREA_TEST_PG_URL)")
    parser.add_argument("--parts", default="lane,workers,lost", help="lane, workers, lost")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    unknown = parts - {"lane", "workers", "lost"}
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from lane, workers, lost")
    params = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="krea-profile-", dir=args.scratch) as scratch:
        results = profile(params, Path(scratch), args.pg, parts)
    record = {
        "params": {
            **dataclasses.asdict(params),
            "pg": args.pg,
            "parts": sorted(parts),
        },
        # Other work on the machine skews the ledger's milliseconds most.
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "submit_profile.json").write_text(
        json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    table = markdown(record)
    (args.out / "submit_profile.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
