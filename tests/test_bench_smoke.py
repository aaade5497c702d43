"""The benchmark's smoke mode: every scenario runs with tiny counts, so the bench code cannot rot.

No timing is asserted here (the machine running the suite is not a benchmark machine); only
that ``python -m bench --smoke`` finishes and writes complete, well-formed results.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

REQUIRED_FIGURES = [
    "wall_over_ideal",
    "naive_sequential_over_ours",
    "naive_parallel_over_ours",
    "requests_per_image",
    "sensor_tick_10k_seconds",
    "sensor_tick_10k_requests",
    "rss_ratio_5000_over_100",
    "cpu_ms_per_image",
    "emulator_requests_per_second",
    "crash_extra_billed_jobs",
    "deferred_wall_over_ideal",
    "deferred_requests_per_image",
    "naive_parallel_requests_per_image",
    "naive_sequential_requests_per_image",
]


def test_smoke_run_writes_every_figure_table_and_plot(tmp_path: Path) -> None:
    """``python -m bench --smoke`` writes latest.json with every figure finite, the table and the PNG."""
    out = tmp_path / "results"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--out",
            str(out),
            "--scratch",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    record = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    not_finite = [
        key
        for key in REQUIRED_FIGURES
        if not isinstance(record.get(key), int | float) or not math.isfinite(record[key])
    ]
    assert not_finite == []
    assert record["params"]["mode"] == "smoke"
    assert record["params"]["seed"] == 1234
    assert set(record["goals"]) <= set(record)
    assert record["crash_extra_billed_jobs"] == 0
    table = (out / "latest.md").read_text(encoding="utf-8")
    assert "| figure | measured | goal | met |" in table
    assert table in run.stdout
    png = (out / "latest.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
