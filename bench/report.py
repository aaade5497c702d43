"""Figures from the scenario results, checked against their goals; JSON, Markdown and the plot."""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.params import BenchParams

MB = 1024 * 1024


@dataclass(frozen=True)
class Goal:
    """A figure's target, as shown in the table, and the test of a measured value."""

    text: str
    met: Callable[[float], bool]


def goals(params: BenchParams) -> dict[str, Goal]:
    large = params.sensor_pending[-1]
    return {
        "wall_over_ideal": Goal("<= 1.15", lambda v: v <= 1.15),
        "requests_per_image": Goal("<= 1.2", lambda v: v <= 1.2),
        "sensor_tick_10k_seconds": Goal("< 5 s", lambda v: v < 5.0),
        "sensor_tick_10k_requests": Goal(
            f"about {large}/1000", lambda v: v <= math.ceil(large / 1000) + 1
        ),
        "rss_ratio_5000_over_100": Goal("<= 1.3", lambda v: v <= 1.3),
        "cpu_ms_per_image": Goal("< 20 ms", lambda v: v < 20.0),
        "crash_extra_billed_jobs": Goal("0", lambda v: v == 0),
    }


def figures(params: BenchParams, results: dict[str, Any]) -> dict[str, float]:
    """The flat numeric figures of ``latest.json`` (ratios measured in this run)."""
    n = params.headline_size
    inline = results["inline"][str(n)]
    parallel = results["naive_parallel"][str(n)]
    sequential = results["naive_sequential_at_headline"]
    deferred = results["deferred"]
    small, large = (results["sensor"][str(p)] for p in params.sensor_pending)
    few, many = (results["images_step"][str(s)] for s in params.memory_sizes)
    capacity = results["emulator_capacity"]
    crashes = results["crash"]["points"]
    marginal_cpu = (many["cpu_seconds"] - few["cpu_seconds"]) / max(
        many["images"] - few["images"], 1
    )
    return {
        "batch_size": n,
        "ideal_seconds": params.ideal_seconds(n),
        "ours_seconds": inline["seconds"],
        "wall_over_ideal": inline["over_ideal"],
        "deferred_seconds": deferred["seconds"],
        "deferred_wall_over_ideal": deferred["over_ideal"],
        "naive_parallel_seconds": parallel["seconds"],
        "naive_parallel_wall_over_ideal": parallel["over_ideal"],
        "naive_sequential_seconds": sequential["seconds"],
        "naive_sequential_extrapolated": 1.0 if sequential["extrapolated"] else 0.0,
        "naive_sequential_over_ours": sequential["seconds"] / inline["seconds"],
        "naive_parallel_over_ours": parallel["seconds"] / inline["seconds"],
        "requests_per_image": inline["requests_per_image"],
        "deferred_requests_per_image": deferred["requests_per_image"],
        "naive_parallel_requests_per_image": parallel["requests_per_image"],
        "naive_sequential_requests_per_image": results["naive_sequential"][
            str(max(params.sequential_sizes))
        ]["requests_per_image"],
        "sensor_tick_1k_pending": small["pending"],
        "sensor_tick_1k_seconds": small["seconds"],
        "sensor_tick_1k_requests": small["requests"],
        "sensor_tick_10k_pending": large["pending"],
        "sensor_tick_10k_seconds": large["seconds"],
        "sensor_tick_10k_requests": large["requests"],
        "rss_peak_100_mb": few["rss_peak_bytes"] / MB,
        "rss_peak_5000_mb": many["rss_peak_bytes"] / MB,
        "rss_growth_100_mb": few["rss_growth_bytes"] / MB,
        "rss_growth_5000_mb": many["rss_growth_bytes"] / MB,
        "rss_ratio_5000_over_100": many["rss_peak_bytes"] / few["rss_peak_bytes"],
        "cpu_ms_per_image": many["cpu_ms_per_image"],
        "cpu_ms_per_image_marginal": marginal_cpu * 1000,
        "images_step_seconds_5000": many["step_seconds"],
        "emulator_requests_per_second": capacity["get_job_rps_at_10"],
        "emulator_requests_per_second_at_10k": capacity["get_job_rps_at_10k"],
        "emulator_ms_per_request_at_10": capacity["ms_per_get_at_10"],
        "emulator_ms_per_request_at_10k": capacity["ms_per_get_at_10k"],
        "emulator_post_per_second": capacity["post_generate_rps"],
        "emulator_cdn_png_per_second": capacity["cdn_png_per_second"],
        "crash_extra_billed_jobs": sum(c["extra_billed_jobs"] for c in crashes),
        "crash_duplicate_submissions": sum(c["duplicate_submissions"] for c in crashes),
        "crash_extra_posts": sum(c["extra_posts"] for c in crashes),
        "crash_extra_requests": sum(c["extra_requests"] for c in crashes),
    }


def goal_table(params: BenchParams, values: dict[str, float]) -> dict[str, dict[str, Any]]:
    return {
        key: {"goal": goal.text, "met": bool(goal.met(values[key]))}
        for key, goal in goals(params).items()
    }


def _fmt(value: float, digits: int = 2) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def markdown(params: BenchParams, values: dict[str, float], results: dict[str, Any]) -> str:
    """The figures table, then the per-client comparison at the headline batch size."""
    n = params.headline_size
    checked = goal_table(params, values)
    seq_sizes = ", ".join(str(s) for s in params.sequential_sizes)
    seq_label = (
        f"extrapolated from N = {seq_sizes}"
        if values["naive_sequential_extrapolated"]
        else "measured"
    )
    rows = [
        ("1", "wall / ideal, inline (`wall_over_ideal`)", values["wall_over_ideal"], "wall_over_ideal"),
        ("1", "wall / ideal, deferred (sensor)", values["deferred_wall_over_ideal"], None),
        ("1", f"naive sequential / ours ({seq_label})", values["naive_sequential_over_ours"], None),
        ("1", "naive parallel (8 threads) / ours", values["naive_parallel_over_ours"], None),
        ("2", "API requests per image, inline", values["requests_per_image"], "requests_per_image"),
        ("2", "API requests per image, deferred", values["deferred_requests_per_image"], None),
        ("2", "API requests per image, naive sequential", values["naive_sequential_requests_per_image"], None),
        ("2", "API requests per image, naive parallel", values["naive_parallel_requests_per_image"], None),
        ("3", f"sensor tick, {_fmt(values['sensor_tick_1k_pending'])} pending: s", values["sensor_tick_1k_seconds"], None),
        ("3", f"sensor tick, {_fmt(values['sensor_tick_1k_pending'])} pending: requests", values["sensor_tick_1k_requests"], None),
        ("3", f"sensor tick, {_fmt(values['sensor_tick_10k_pending'])} pending: s", values["sensor_tick_10k_seconds"], "sensor_tick_10k_seconds"),
        ("3", f"sensor tick, {_fmt(values['sensor_tick_10k_pending'])} pending: requests", values["sensor_tick_10k_requests"], "sensor_tick_10k_requests"),
        ("4", f"images step peak RSS, N = {params.memory_sizes[0]} (MB)", values["rss_peak_100_mb"], None),
        ("4", f"images step peak RSS, N = {params.memory_sizes[1]} (MB)", values["rss_peak_5000_mb"], None),
        ("4", "peak RSS ratio, large / small", values["rss_ratio_5000_over_100"], "rss_ratio_5000_over_100"),
        ("5", f"CPU per image, images step, N = {params.memory_sizes[1]} (ms)", values["cpu_ms_per_image"], "cpu_ms_per_image"),
        ("5", "CPU per image, marginal (large - small) (ms)", values["cpu_ms_per_image_marginal"], None),
        ("6", "emulator GET /jobs/{id} per second, 10 live jobs", values["emulator_requests_per_second"], None),
        ("6", "emulator ms per request, 10 / 10k live jobs", values["emulator_ms_per_request_at_10"], None),
        ("6", "", values["emulator_ms_per_request_at_10k"], None),
        ("7", "crash: extra billed jobs (all crash points)", values["crash_extra_billed_jobs"], "crash_extra_billed_jobs"),
        ("7", "crash: extra API requests (all crash points)", values["crash_extra_requests"], None),
    ]  # fmt: skip
    lines = [
        f"# krea-dagster bench ({params.mode})",
        "",
        f"Emulator: concurrency {params.concurrency}, render {params.render_seconds:g} s, "
        f"seed {params.seed}; every client polls every {params.poll_interval:.3f} s, "
        f"the completion sensor ticks every {params.sensor_interval:.3f} s "
        f"(3 s and 10 s of a 55 s render, scaled). Batch N = {n}, ideal "
        f"ceil(N / {params.concurrency}) x {params.render_seconds:g} s = "
        f"{params.ideal_seconds(n):g} s.",
        "",
        "| # | figure | measured | goal | met |",
        "|---|---|---:|---|---|",
    ]
    for number, label, value, key in rows:
        goal = checked[key]["goal"] if key else ""
        met = ("yes" if checked[key]["met"] else "**no**") if key else ""
        if not label:
            label = "&nbsp;&nbsp;(at 10k live jobs)"
        lines.append(f"| {number} | {label} | {_fmt(value, 3)} | {goal} | {met} |")
    lines += [
        "",
        f"Per client at N = {n} (wall = submit to last image stored):",
        "",
        "| client | wall (s) | wall / ideal | API requests per image |",
        "|---|---:|---:|---:|",
    ]
    clients = [
        ("ideal", params.ideal_seconds(n), 1.0, math.nan),
        ("krea-dagster, inline", values["ours_seconds"], values["wall_over_ideal"], values["requests_per_image"]),
        ("krea-dagster, deferred", values["deferred_seconds"], values["deferred_wall_over_ideal"], values["deferred_requests_per_image"]),
        ("naive parallel (8 threads)", values["naive_parallel_seconds"], values["naive_parallel_wall_over_ideal"], values["naive_parallel_requests_per_image"]),
        (f"naive sequential ({seq_label})", values["naive_sequential_seconds"], values["naive_sequential_seconds"] / params.ideal_seconds(n), values["naive_sequential_requests_per_image"]),
    ]  # fmt: skip
    for name, wall, ratio, per_image in clients:
        shown = "" if math.isnan(per_image) else _fmt(per_image, 2)
        lines.append(f"| {name} | {wall:,.2f} | {ratio:.3f} | {shown} |")
    return "\n".join(lines) + "\n"


def plot(
    params: BenchParams, values: dict[str, float], results: dict[str, Any], path: Path
) -> None:
    """Time vs batch size (ours, baselines, ideal) and API requests per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=[3, 2])
    sizes = sorted(int(s) for s in results["inline"])
    span = list(range(1, max(sizes) + 1))
    left.step(
        span,
        [params.ideal_seconds(s) for s in span],
        where="post",
        color="black",
        label="ideal: ceil(N / concurrency) x render",
    )

    def series(name: str) -> tuple[list[int], list[float]]:
        points = sorted((int(s), r["seconds"]) for s, r in results[name].items())
        return [p[0] for p in points], [p[1] for p in points]

    left.plot(*series("inline"), "o-", color="tab:blue", label="krea-dagster, inline")
    left.plot(
        [params.deferred_size],
        [values["deferred_seconds"]],
        "s",
        color="tab:cyan",
        label="krea-dagster, deferred (sensor)",
    )
    left.plot(
        *series("naive_parallel"), "^-", color="tab:orange", label="naive parallel (8 threads)"
    )
    seq_x, seq_y = series("naive_sequential")
    left.plot(seq_x, seq_y, "v", color="tab:red", label="naive sequential (measured)")
    line = results["naive_sequential_fit"]
    left.plot(
        [0, max(sizes)],
        [line["intercept"], line["intercept"] + line["slope"] * max(sizes)],
        "--",
        color="tab:red",
        label="naive sequential (extrapolated)",
    )
    left.set_yscale("log")
    left.set_xlabel("batch size N (prompts)")
    left.set_ylabel("seconds, submit to last image stored (log)")
    left.set_title(
        f"Time vs batch size (concurrency {params.concurrency}, render {params.render_seconds:g} s)"
    )
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)

    names = [
        "krea-dagster\ninline",
        "krea-dagster\ndeferred",
        "naive\nparallel",
        "naive\nsequential",
    ]
    per_image = [
        values["requests_per_image"],
        values["deferred_requests_per_image"],
        values["naive_parallel_requests_per_image"],
        values["naive_sequential_requests_per_image"],
    ]
    bars = right.bar(names, per_image, color=["tab:blue", "tab:cyan", "tab:orange", "tab:red"])
    right.bar_label(bars, fmt="%.2f")
    right.axhline(1.2, color="black", linestyle=":", label="goal 1.2")
    right.set_ylabel("Krea API requests per image (CDN excluded)")
    right.set_title(f"API requests per image, N = {params.headline_size}")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(
    out: Path, record: dict[str, Any], table: str, params: BenchParams, results: dict[str, Any]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(
        json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / "latest.md").write_text(table, encoding="utf-8")
    plot(params, record, results, out / "latest.png")
