"""Clocks are measured, not assumed: a lost answer under a skewed Krea clock is matched, not re-sent.

The emulator's ``clock_offset_seconds`` moves Krea's clock like a real server's that is off:
every ``created_at`` and every ``Date`` header alike. The only POST of a batch has its answer
dropped, so no answered row bounds the offset: only Krea's ``Date`` headers do.
"""

from datetime import UTC, datetime, timedelta

import pytest

from krea_dagster.api.clock_offset import ClockOffset

from .conftest import materialize, prompt_rows, write_batch


@pytest.mark.parametrize(
    "offset",
    [-20.0, -90.0, 90.0],
    ids=["krea-20s-behind", "krea-90s-behind", "krea-90s-ahead"],
)
def test_a_lost_answer_under_a_skewed_krea_clock_is_matched_not_resent(
    offset, tmp_path, build, emulator, krea, instance, prompts_dir
):
    """With Krea's clock 20 s or 90 s behind the worker's (or ahead) and the POST's answer lost,
    reconciliation places the window by the offset measured from Krea's Date headers and finds
    the job: one job for one prompt, none re-sent."""
    emulator.configure(clock_offset_seconds=offset, accept_then_drop_rate=1.0)
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build("skew", store=tmp_path / "store", ledger=f"sqlite:///{tmp_path / 'l.db'}")
    result = materialize(assets, "b1", instance=instance, krea=krea, roles=("prompts", "jobs"))
    assert result.success
    stats = emulator.stats()
    assert stats["jobs_created"] == 1, stats
    (row,) = assets.pipeline.ledger.rows("skew", "b1")
    assert row.job_id is not None and row.state != "not_created"
    assert row.krea_offset_low is not None and row.krea_offset_high is not None
    assert row.krea_offset_low - 0.5 <= offset <= row.krea_offset_high + 0.5
    assert row.krea_offset_high - row.krea_offset_low < 2.0


def test_the_offset_is_bounded_by_date_headers_and_restarts_after_a_step():
    """Each answer's Date bounds Krea's clock minus ours to [date - received, date + 1 s - sent];
    answers narrow the bounds, and one that contradicts them (a stepped clock) starts again."""
    offset = ClockOffset()
    ours = datetime(2026, 6, 12, 12, 0, 0, 300_000, tzinfo=UTC)
    offset.observe("Fri, 12 Jun 2026 11:59:40 GMT", ours, ours + timedelta(milliseconds=100))
    bounds = offset.bounds(now=ours, max_age=60)
    assert bounds is not None
    assert bounds.low == timedelta(seconds=-20, milliseconds=-400)
    assert bounds.high == timedelta(seconds=-19, milliseconds=-300)
    later = ours + timedelta(seconds=5)
    offset.observe("Fri, 12 Jun 2026 11:59:45 GMT", later, later + timedelta(milliseconds=50))
    narrowed = offset.bounds(now=later, max_age=60)
    assert narrowed is not None
    assert narrowed.low == timedelta(seconds=-20, milliseconds=-350)
    assert narrowed.high == bounds.high
    offset.observe("Fri, 12 Jun 2026 12:01:30 GMT", later, later)
    stepped = offset.bounds(now=later, max_age=60)
    assert stepped is not None and stepped.low > timedelta(seconds=80)
    assert offset.bounds(now=later + timedelta(seconds=61), max_age=60) is None
