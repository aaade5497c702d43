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

# The figures of the groups ``--only`` can run alone (discovery, end_to_end).
SCALE_FIGURES = [
    "discovery_tick_unchanged_1m_rows_seconds",
    "discovery_tick_first_1m_rows_seconds",
    "end_to_end_inline_over_ideal",
    "end_to_end_inline_100_over_ideal",
    "end_to_end_in_process_over_ideal",
    "end_to_end_multiprocess_over_ideal",
    "end_to_end_startup_seconds",
    "end_to_end_dagster_overhead_seconds",
    "dagster_import_seconds",
]

# The big-account group (issue 21): the headline case, the worst case, the kill -9.
ACCOUNT_FIGURES = [
    "big_account_wall_over_ideal",
    "big_account_naive_wall_over_ideal",
    "big_account_over_naive",
    "big_account_requests_per_image",
    "big_account_naive_requests_per_image",
    "big_account_posts_per_second",
    "big_account_posts_per_second_needed",
    "big_account_worst_wall_over_ideal",
    "big_account_worst_over_naive",
    "big_account_worst_requests_per_image",
    "big_account_kill9_in_flight",
    "big_account_kill9_reported",
    "big_account_kill9_billed_twice",
    # The same figures of the documented big-account setting (submit_lanes).
    "big_account_lanes_wall_over_ideal",
    "big_account_lanes_over_naive",
    "big_account_lanes_requests_per_image",
    "big_account_lanes_posts_per_second",
    "big_account_lanes_worst_wall_over_ideal",
    "big_account_lanes_worst_over_naive",
    "big_account_lanes_worst_requests_per_image",
    "big_account_lanes_kill9_in_flight",
    "big_account_lanes_kill9_reported",
    "big_account_lanes_kill9_billed_twice",
]

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
    *SCALE_FIGURES,
    *ACCOUNT_FIGURES,
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
    assert_big_account_scenario(record)
    table = (out / "latest.md").read_text(encoding="utf-8")
    assert "| figure | measured | goal | met |" in table
    assert table in run.stdout
    png = (out / "latest.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def assert_big_account_scenario(record: dict) -> None:
    """The big-account group ran every contender (krea-dagster's default configuration, its
    big-account setting, the naive asset) on every case, each storing every image, and each
    krea-dagster configuration's kill -9 re-run paid nothing twice."""
    fields = ("concurrency", "latency_ms", "render_seconds", "size")
    asked = sorted(tuple(case[f] for f in fields) for case in record["params"]["account_cases"])
    account = record["scenarios"]["big_account"]
    for contender in ("krea_dagster", "krea_dagster_lanes", "naive"):
        runs = [runs[contender] for runs in account["cases"].values()]
        assert sorted(tuple(run[f] for f in fields) for run in runs) == asked, contender
        assert all(run["images"] == run["size"] for run in runs), contender
        # Launch to exit for both: the command outlives the last image it stores.
        assert all(
            run["seconds"] == run["command_seconds"] >= run["to_last_image_seconds"] > 0
            for run in runs
        ), contender
    assert (
        "ceil(N / concurrency) x render" in record["goals"]["big_account_wall_over_ideal"]["goal"]
    )
    lanes = {"submit_lanes": 4}
    assert [runs["krea_dagster"]["resource"] for runs in account["cases"].values()] == [{}] * len(
        asked
    )
    assert [runs["krea_dagster_lanes"]["resource"] for runs in account["cases"].values()] == [
        lanes
    ] * len(asked)
    kills = account["kill"]
    assert sorted(kills) == ["krea_dagster", "krea_dagster_lanes"]
    assert kills["krea_dagster_lanes"]["resource"] == lanes
    for contender, kill in kills.items():
        assert kill["images"] + kill["reported"] == kill["size"], contender
        assert kill["size"] == record["params"]["account_kill_case"]["size"], contender
        assert kill["duplicate_submissions"] == 0, contender
    assert record["big_account_kill9_billed_twice"] == 0
    assert record["big_account_lanes_kill9_billed_twice"] == 0
    # With one lane at most one submission is ever in flight, and it is always decided.
    assert record["big_account_kill9_in_flight"] <= 1
    assert kills["krea_dagster"]["images"] == kills["krea_dagster"]["size"]


def test_only_runs_the_scale_groups_and_keeps_the_previous_figures(tmp_path: Path) -> None:
    """``--only discovery,end_to_end`` adds its figures to the latest.json in --out and keeps every other key."""
    out = tmp_path / "results"
    out.mkdir()
    previous = {
        "wall_over_ideal": 1.07,
        "requests_per_image": 1.17,
        "goals": {},
        "params": {"mode": "smoke", "seed": 1234},
        "machine": {"cpus": 2},
        "scenarios": {"kept": {"seconds": 1.0}},
    }
    (out / "latest.json").write_text(json.dumps(previous), encoding="utf-8")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--only",
            "discovery,end_to_end",
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
    assert (record["wall_over_ideal"], record["requests_per_image"]) == (1.07, 1.17)
    assert record["scenarios"]["kept"] == {"seconds": 1.0}
    not_finite = [
        key
        for key in SCALE_FIGURES
        if not isinstance(record.get(key), int | float) or not math.isfinite(record[key])
    ]
    assert not_finite == []
    assert {"discovery_tick_unchanged_1m_rows_seconds", "end_to_end_inline_over_ideal"} <= set(
        record["goals"]
    )
    assert record["partial_runs"][-1]["only"] == ["discovery", "end_to_end"]
    e2e = record["scenarios"]["end_to_end"]
    stored = {
        (executor, size): result["images"]
        for executor in ("in_process", "multiprocess")
        for size, result in e2e[executor].items()
    }
    assert stored and all(images == int(size) for (_, size), images in stored.items())
    assert record["scenarios"]["discovery"]["touched_tick_runs"] == 0
    table = (out / "latest.md").read_text(encoding="utf-8")
    assert "launch-to-manifest / ideal" in table and table in run.stdout


def test_only_refuses_an_unknown_group(tmp_path: Path) -> None:
    """``--only`` with a group it cannot run alone fails at once with the groups it can."""
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "everything", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "discovery, end_to_end" in run.stderr


def test_submit_profile_smoke_measures_each_part(tmp_path: Path) -> None:
    """``python -m bench.submit_profile --smoke`` profiles the lane's ledger calls, several workers and lost answers, each settled the way the fault allows."""
    out = tmp_path / "results"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.submit_profile",
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
    record = json.loads((out / "submit_profile.json").read_text(encoding="utf-8"))
    params, results = record["params"], record["results"]
    assert sorted(results["lane"]) == [f"sqlite_{ms:g}ms" for ms in params["latencies_ms"]]
    for lane in results["lane"].values():
        assert lane["posts"] == params["lane_posts"]
        # The submitter's own writes: the claim (intent, lease, first send time) and the
        # answer, one transaction each per POST.
        calls = lane["ledger_calls"]
        assert {"claim", "mark_submitted"} <= set(calls)
        assert all(
            calls[name]["transactions_per_post"] >= 1 for name in ("claim", "mark_submitted")
        )
    (workers,) = results["workers"].values()
    assert workers["posts"] == params["workers"] * params["worker_posts"]
    lost = results["lost_answers"]
    assert set(lost) == set(params["faults"])
    # A job that exists is attributed (a node app's jobs too); a 5xx made none, so not created.
    assert lost["dropped"]["faulty_row_state"] not in ("not_created", "reported")
    assert lost["node_app_dropped"]["faulty_row_state"] not in ("not_created", "reported")
    assert lost["error_5xx"]["faulty_row_state"] == "not_created"
    table = (out / "submit_profile.md").read_text(encoding="utf-8")
    assert "One lost answer" in table and table in run.stdout
