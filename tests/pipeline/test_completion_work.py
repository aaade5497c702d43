"""The completion sensor's cost follows the work in flight, and a deferred batch is collected
while it renders (issue 15)."""

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pytest
import sqlalchemy as sa

from krea_dagster import build_krea_sensors
from krea_dagster.emulator.clock import ManualClock
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.state import DEMO_TOKEN, EmulatorState
from krea_dagster.emulator.testing import run_emulator
from krea_dagster.engine.ledger import Ledger, utcnow
from krea_dagster.engine.ledger.schema import generations_table, submissions_table
from krea_dagster.sensors import CompletionCursor

from .conftest import make_resource, materialize, prompt_rows, write_batch


def tick(sensor, instance, defs, cursor=None):
    """One sensor evaluation the way the daemon does it."""
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, cursor=cursor, resources=defs.resources
    ) as context:
        return sensor.evaluate_tick(context)


@pytest.fixture
def persistent_instance():
    with dg.instance_for_test() as instance:
        yield instance


def _row(scope: str, batch: str, key: str, *, generation: int = 1, **values):
    now = utcnow()
    row = {
        "submission_id": str(uuid.uuid4()),
        "scope": scope,
        "batch": batch,
        "generation": generation,
        "prompt_key": key,
        "attempt": 1,
        "model": "bfl/flux-1-dev",
        "request_hash": "h",
        "request_json": "{}",
        "state": "completed",
        "job_id": None,
        "image_uri": None,
        "error_code": None,
        "krea_created_at": None,
        "intent_at": now,
        "updated_at": now,
    }
    row.update(values)
    return row


def _insert(ledger: Ledger, rows: list[dict], generations: set[tuple[str, str, int]]) -> None:
    now = utcnow()
    with ledger.transaction() as conn:
        if generations:
            conn.execute(
                generations_table.insert(),
                [
                    {"scope": s, "batch": b, "generation": g, "reason": "first", "started_at": now}
                    for s, b, g in sorted(generations)
                ],
            )
        if rows:
            conn.execute(submissions_table.insert(), rows)


def _finished_history(ledger: Ledger, scope: str, batches: int, per_batch: int) -> list[str]:
    """``batches`` batches whose every job completed and whose every image is stored."""
    names = [f"done-{index:04d}" for index in range(batches)]
    rows = [
        _row(scope, name, f"k{key}", job_id=f"job-{name}-{key}", image_uri=f"file:///{name}/{key}")
        for name in names
        for key in range(per_batch)
    ]
    _insert(ledger, rows, {(scope, name, 1) for name in names})
    return names


def test_open_batches_lists_only_current_generations_with_work_left(tmp_path):
    """open_batches names a batch's current generation only while a row is live, unresolved or
    completed with neither an image nor an image error."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    scope = "p"
    rows = [
        _row(scope, "stored", "a", image_uri="file:///a"),
        _row(scope, "stored", "b", state="failed", error_code="x"),
        _row(scope, "rendering", "a", state="processing", job_id="j1"),
        _row(scope, "rendering", "b", image_uri="file:///b"),
        _row(scope, "unstored", "a"),
        _row(scope, "image-error", "a", error_code="download_failed"),
        _row(scope, "sending", "a", state="intent"),
        _row(scope, "future-status", "a", state="a_status_krea_adds_later", job_id="j2"),
        _row(scope, "regenerated", "a", state="queued", job_id="j3"),
        _row(scope, "regenerated", "a", generation=2, image_uri="file:///c"),
        _row("other", "rendering", "a", state="queued", job_id="j4"),
    ]
    batches = {(row["scope"], row["batch"], row["generation"]) for row in rows}
    _insert(ledger, rows, batches)
    assert ledger.open_batches(scope) == [
        ("future-status", 1),
        ("rendering", 1),
        ("sending", 1),
        ("unstored", 1),
    ]
    assert ledger.current_generations(scope, ["regenerated", "stored", "never"]) == {
        "regenerated": 2,
        "stored": 1,
    }


def test_open_batches_reads_the_partial_index(tmp_path):
    """The query is answered from ix_krea_submissions_open, which holds only rows with work left."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    _finished_history(ledger, "p", batches=50, per_batch=40)
    _insert(ledger, [_row("p", "live", "a", state="queued", job_id="j")], {("p", "live", 1)})
    statements: list[str] = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(ledger.engine, "before_cursor_execute", remember)
    assert ledger.open_batches("p") == [("live", 1)]
    sa.event.remove(ledger.engine, "before_cursor_execute", remember)
    query = next(s for s in statements if "krea_submissions" in s)
    with ledger.engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query, ("p",)).all()
        in_index = conn.exec_driver_sql(
            "SELECT count(*) FROM krea_submissions INDEXED BY ix_krea_submissions_open "
            "WHERE scope = 'p' AND " + query.split("AND ", 1)[1]
        ).scalar_one()
    assert "USING INDEX ix_krea_submissions_open" in str(plan)
    assert in_index == 1  # the index holds the one live row, none of the 2,000 finished ones


def test_an_existing_ledger_without_the_open_index_gets_it(tmp_path):
    """Opening a version 2 ledger made before the index existed creates it in place."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    _insert(ledger, [_row("p", "b", "a", state="queued", job_id="j")], {("p", "b", 1)})
    with ledger.transaction() as conn:
        conn.exec_driver_sql("DROP INDEX ix_krea_submissions_open")
    ledger.dispose()
    reopened = Ledger(url)
    indexes = {
        index["name"] for index in sa.inspect(reopened.engine).get_indexes("krea_submissions")
    }
    assert "ix_krea_submissions_open" in indexes
    assert reopened.open_batches("p") == [("b", 1)]


@contextmanager
def _counting(ledger: Ledger) -> Iterator[list[tuple[str, str]]]:
    """Every SQL statement (with its parameters) run on the ledger inside the block."""
    seen: list[tuple[str, str]] = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, repr(parameters)))

    sa.event.listen(ledger.engine, "before_cursor_execute", remember)
    try:
        yield seen
    finally:
        sa.event.remove(ledger.engine, "before_cursor_execute", remember)


def test_completion_tick_reads_none_of_the_finished_batches(build, persistent_instance):
    """With 400 finished batches added to the ledger a tick runs the same statements as
    without them, reads none of them, and drops their entries from the cursor."""
    clock = ManualClock(start=time.time())
    config = EmulatorConfig(render_seconds=600.0, concurrency=100, backlog=100, balance_usd=100.0)
    state = EmulatorState(config, clock=clock, tokens=(DEMO_TOKEN,))
    account, spec = state.by_token[DEMO_TOKEN], state.models["image/bfl/flux-1-dev"]
    jobs = [state.submit(account, spec, {"prompt": f"p{index}"}) for index in range(30)]
    assets = build()
    ledger, scope = assets.pipeline.ledger, assets.prefix
    created = utcnow()
    live = [
        _row(scope, "live", f"k{i}", state="queued", job_id=job.id, krea_created_at=created)
        for i, job in enumerate(jobs)
    ]
    _insert(ledger, live, {(scope, "live", 1)})
    with run_emulator(state=state, clock=clock) as emulator:
        krea = make_resource(emulator)
        (sensor,) = build_krea_sensors(assets, discovery=False)
        defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
        first = tick(sensor, persistent_instance, defs)
        with _counting(ledger) as before:
            steady = tick(sensor, persistent_instance, defs, first.cursor)
        history = _finished_history(ledger, scope, batches=400, per_batch=25)
        old = json.loads(steady.cursor)
        old["requested"] = {name: f"{name}:g1:20261201T000000000000" for name in history}
        with _counting(ledger) as after:
            later = tick(sensor, persistent_instance, defs, json.dumps(old))
    assert len(after) / len(before) == 1.0
    assert not [s for s, params in after if "done-" in params or "done-" in s]
    assert CompletionCursor.parse(later.cursor).requested == {}
    assert later.run_requests == []


def test_old_completion_cursors_still_parse_and_round_trip():
    """A cursor written before this change parses to the same record and serializes back."""
    text = '{"offset": 3, "requested": {"b1": "b1:g1:20261124T101010000000"}, "version": 1}'
    cursor = CompletionCursor.parse(text)
    assert cursor == CompletionCursor(requested={"b1": "b1:g1:20261124T101010000000"}, offset=3)
    assert json.loads(cursor.serialize()) == {**json.loads(text), "waiting": []}


def _images_downloaded(result: dg.ExecuteInProcessResult, assets) -> int:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == assets.images.key
    ]
    return int(event.materialization.metadata["krea/this_run"].value["downloaded"])


def test_deferred_ticks_store_images_while_the_batch_renders(
    build, emulator, persistent_instance, prompts_dir
):
    """Completion ticks store each job's image as it completes, before the batch is terminal;
    the images run then downloads nothing and every image was fetched once."""
    emulator.configure(render_seconds=1.5, time_scale=1.0)
    emulator.set_concurrency(2)
    write_batch(prompts_dir, "waves", prompt_rows(6))
    assets = build()
    krea = make_resource(emulator)
    (sensor,) = build_krea_sensors(assets, discovery=False)
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    assert materialize(
        assets, "waves", instance=persistent_instance, krea=krea, roles=("prompts", "jobs")
    ).success
    ledger, scope = assets.pipeline.ledger, assets.prefix
    stored_while_rendering = False
    cursor, result = None, None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = tick(sensor, persistent_instance, defs, cursor)
        cursor = result.cursor
        rows = ledger.rows(scope, "waves")
        if any(r.image_uri for r in rows) and any(not r.is_terminal for r in rows):
            stored_while_rendering = True
        if result.run_requests:
            break
        time.sleep(0.1)
    assert stored_while_rendering
    assert result is not None and [r.partition_key for r in result.run_requests] == ["waves"]
    assert all(row.image_uri for row in ledger.rows(scope, "waves"))
    images = materialize(
        assets, "waves", instance=persistent_instance, krea=krea, roles=("images",)
    )
    assert images.success
    assert _images_downloaded(images, assets) == 0
    stats = emulator.stats()
    assert (stats["jobs_created"], stats["cdn_downloads"]) == (6, 6)


def test_inline_sensors_leave_downloads_to_the_images_run(
    build, emulator, persistent_instance, prompts_dir
):
    """With deferred=False the completion tick stores nothing: the inline images run does."""
    write_batch(prompts_dir, "inline", prompt_rows(3))
    assets = build()
    krea = make_resource(emulator)
    (sensor,) = build_krea_sensors(assets, discovery=False, deferred=False)
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    assert materialize(
        assets, "inline", instance=persistent_instance, krea=krea, roles=("prompts", "jobs")
    ).success
    cursor = None
    for _ in range(100):
        result = tick(sensor, persistent_instance, defs, cursor)
        cursor = result.cursor
        if result.run_requests:
            break
        time.sleep(0.05)
    rows = assets.pipeline.ledger.rows(assets.prefix, "inline")
    assert {row.state for row in rows} == {"completed"}
    assert not any(row.image_uri for row in rows)
    assert emulator.stats()["cdn_downloads"] == 0
