"""The day bench's bookkeeping: start/end tick medians and merging into latest.json."""

import json

from bench.day import GOALS, _edges, merge_into


def _day(**overrides):
    day = {
        "prompts": 400,
        "batches": 2,
        "wall_seconds": 100.0,
        "duplicates": 0,
        "images_over_prompts": 1.0,
        "discovery_tick_start_seconds": 0.2,
        "discovery_tick_end_seconds": 0.3,
        "completion_tick_start_seconds": 1.0,
        "completion_tick_end_seconds": 1.2,
        "completion_tick_end_over_start": 1.2,
        "completion_tick_busy_start_seconds": 1.0,
        "completion_tick_busy_end_seconds": 1.5,
        "ledger_rows_per_batch": 200.0,
        "ledger_bytes_per_batch": 1000.0,
        "event_log_bytes_per_batch": 5000.0,
        "projection_100k": {"event_log_bytes": 2.5e9, "ledger_rows": 1e5},
    }
    day.update(overrides)
    return day


def test_day_results_merge_into_latest_keeping_every_existing_key(tmp_path):
    """Merging the day adds its keys and goals and keeps every key and goal already there."""
    path = tmp_path / "latest.json"
    before = {
        "wall_over_ideal": 1.05,
        "goals": {"wall_over_ideal": {"goal": "<= 1.15", "met": True}},
        "scenarios": {"inline": {"200": {"seconds": 26.0}}},
    }
    path.write_text(json.dumps(before))
    merge_into(path, _day(duplicates=1), {"batches": 2})
    after = json.loads(path.read_text())
    assert after["wall_over_ideal"] == 1.05
    assert after["goals"]["wall_over_ideal"] == before["goals"]["wall_over_ideal"]
    assert after["scenarios"]["inline"] == before["scenarios"]["inline"]
    assert after["day_duplicates"] == 1 and after["goals"]["day_duplicates"]["met"] is False
    assert after["goals"]["completion_tick_end_over_start"]["met"] is True
    assert set(GOALS) <= set(after["goals"])
    assert after["scenarios"]["day"]["params"] == {"batches": 2}


def test_edges_compare_the_first_and_last_part_of_the_day():
    """The start and end figures are the medians of the ticks in the day's first and last 15%."""
    ticks = [(float(t), 1.0 if t < 50 else 3.0) for t in range(100)]
    assert _edges(ticks, 0.0, 99.0) == (1.0, 3.0)
