"""The bench command: start the emulator, run every scenario, write and print the results.

``python -m bench`` (full, about 13 minutes on 2 cores) or ``python -m bench --smoke`` (tiny
counts, seconds). Results go to ``bench/results/`` unless ``--out`` says otherwise.
``--only discovery,end_to_end`` runs just those groups and merges their figures into the
``latest.json`` already in ``--out``. ``--big-account issue`` (or a list of
``CONCURRENCY:LATENCY_MS:RENDER_SECONDS:N`` cases) sets the cases of the big-account group.
"""

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report, scenarios, scenarios_account, scenarios_scale
from bench.params import FULL, ISSUE_ACCOUNT_CASES, SMOKE, AccountCase, BenchParams
from krea_dagster.emulator.testing import spawn_emulator

RESULTS = Path(__file__).resolve().parent / "results"
# Scenario groups ``--only`` can run on their own (their figures are merged into latest.json).
ONLY_GROUPS = ("discovery", "end_to_end", "deferred", "day", "big_account", "crash")


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_all(params: BenchParams, scratch: Path) -> dict[str, Any]:
    """Every scenario against one emulator subprocess; the raw results."""
    results: dict[str, Any] = {}
    with spawn_emulator(*params.emulator_args()) as emulator:
        bench = scenarios.Bench(params, emulator, scratch)
        results["inline"] = {}
        results["naive_parallel"] = {}
        for size in params.throughput_sizes:
            _say(f"1. throughput, N = {size}: krea-dagster inline")
            results["inline"][str(size)] = scenarios.time_inline_batch(bench, size)
            _say(f"1. throughput, N = {size}: naive parallel")
            results["naive_parallel"][str(size)] = scenarios.time_naive_parallel(bench, size)
        _say(f"1. throughput, N = {params.deferred_size}: krea-dagster deferred")
        results["deferred"] = scenarios.time_deferred_batch(bench, params.deferred_size)
        results["naive_sequential"] = {}
        for size in params.sequential_sizes:
            _say(f"1. throughput, N = {size}: naive sequential")
            results["naive_sequential"][str(size)] = scenarios.time_naive_sequential(bench, size)
        points = [(int(s), r["seconds"]) for s, r in results["naive_sequential"].items()]
        n = params.headline_size
        measured = str(n) in results["naive_sequential"]
        at_n = scenarios.extrapolate(points, n)
        slope = scenarios.extrapolate(points, 1) - scenarios.extrapolate(points, 0)
        results["naive_sequential_fit"] = {
            "intercept": scenarios.extrapolate(points, 0),
            "slope": slope,
        }
        results["naive_sequential_at_headline"] = {
            "size": n,
            "seconds": results["naive_sequential"][str(n)]["seconds"] if measured else at_n,
            "extrapolated": not measured,
            "from_sizes": list(params.sequential_sizes),
        }
        results["sensor"] = {}
        for pending in params.sensor_pending:
            _say(f"3. completion-sensor tick, {pending} pending jobs")
            results["sensor"][str(pending)] = scenarios.time_completion_tick(bench, pending)
        results["images_step"] = {}
        for size in params.memory_sizes:
            _say(f"4./5. images step alone, N = {size} (subprocess)")
            results["images_step"][str(size)] = scenarios.measure_images_step(bench, size)
        # (deferred ran with the throughput scenarios above)
        results.update(run_groups(bench, [g for g in ONLY_GROUPS if g != "deferred"]))
    _say("6. emulator capacity (its own emulators)")
    results["emulator_capacity"] = scenarios.measure_emulator_capacity(bench)
    return results


def run_groups(bench: scenarios.Bench, groups: Sequence[str]) -> dict[str, Any]:
    """The scenario groups of ``ONLY_GROUPS`` named in ``groups``, in that order."""
    params = bench.params
    results: dict[str, Any] = {}
    if "deferred" in groups:
        _say(f"1. throughput, N = {params.deferred_size}: krea-dagster deferred")
        results["deferred"] = scenarios.time_deferred_batch(bench, params.deferred_size)
    if "day" in groups and params.day_batches > 0:
        from bench import day

        _say(f"10. a day: {params.day_batches} batches x {params.day_per_batch} prompts")
        results["day"] = day.run_day(
            batches=params.day_batches,
            per_batch=params.day_per_batch,
            in_flight=params.day_in_flight,
            time_scale=params.day_time_scale,
            concurrency=params.day_concurrency,
            scratch=bench.scratch,
            timeout=3600.0 + 60.0 * params.day_batches,
        )
    if "crash" in groups:
        results["crash"] = []
        for point in params.crash_points:
            _say(f"7. crash cost: kill -9 at {point} #{params.crash_after}, then re-run")
            results["crash"].append(scenarios.count_crash_cost(bench, point))
    if "discovery" in groups:
        _say(f"8. discovery tick, one unchanged file of {params.discovery_rows:,} rows")
        results["discovery"] = scenarios_scale.time_discovery_tick(bench, params.discovery_rows)
    if "end_to_end" in groups:
        by_executor: dict[str, Any] = {}
        for size in params.end_to_end_sizes:
            for executor in scenarios_scale.EXECUTORS:
                _say(f"9. launch to manifest, dagster asset materialize, {executor}, N = {size}")
                result = scenarios_scale.time_end_to_end(bench, size, executor)
                by_executor.setdefault(executor, {})[str(size)] = result
        results["end_to_end"] = {
            **by_executor,
            "import_dagster_seconds": scenarios_scale.time_python_import_dagster(),
        }
    if "big_account" in groups:
        results["big_account"] = run_big_account(bench)
    return results


def run_big_account(bench: scenarios.Bench) -> dict[str, Any]:
    """11. Every account case with every contender, then the kill -9 mid-submission of each
    krea-dagster configuration."""
    params = bench.params
    cases: dict[str, Any] = {}
    for case in params.account_cases:
        for contender in scenarios_account.CONTENDERS:
            _say(
                f"11. big account {case.label} (concurrency {case.concurrency}, "
                f"{case.latency_ms:g} ms, {case.render_seconds:g} s renders, N = {case.size}, "
                f"ideal {case.ideal_seconds:g} s): {contender}"
            )
            result = scenarios_account.time_account_case(bench, case, contender)
            cases.setdefault(case.label, {})[contender] = result
    kill = params.account_kill_case
    kills: dict[str, Any] = {}
    for contender in scenarios_account.KREA_CONFIGS:
        _say(
            f"11. big account: kill -9 after {params.account_kill_after_jobs} jobs of "
            f"{kill.size} ({kill.label}), then re-run: {contender}"
        )
        kills[contender] = scenarios_account.count_kill_mid_submission(
            bench,
            kill,
            kill_after_jobs=params.account_kill_after_jobs,
            timeouts=params.account_kill_timeouts,
            contender=contender,
        )
    return {"cases": cases, "headline": params.account_cases[0].label, "kill": kills}


def run_only(params: BenchParams, scratch: Path, groups: Sequence[str]) -> dict[str, Any]:
    """Only ``groups`` (of ``ONLY_GROUPS``) against one emulator subprocess."""
    with spawn_emulator(*params.emulator_args()) as emulator:
        return run_groups(scenarios.Bench(params, emulator, scratch), groups)


def _parse_only(text: str | None) -> list[str] | None:
    if text is None:
        return None
    groups = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in groups if name not in ONLY_GROUPS]
    if unknown or not groups:
        raise SystemExit(
            f"--only: unknown scenario group(s) {unknown or [text]}; choose from "
            f"{', '.join(ONLY_GROUPS)} (comma-separated)"
        )
    return groups


def _parse_account_cases(text: str | None) -> tuple[AccountCase, ...] | None:
    if text is None:
        return None
    if text.strip() == "issue":
        return ISSUE_ACCOUNT_CASES
    try:
        cases = tuple(AccountCase.parse(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise SystemExit(f"--big-account: {error}") from None
    if not cases:
        raise SystemExit(
            "--big-account: give 'issue' or CONCURRENCY:LATENCY_MS:RENDER_SECONDS:N,..."
        )
    return cases


def _machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other work on the machine skews the absolute times (the ratios less so).
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def _merge_only(
    args: argparse.Namespace,
    params: BenchParams,
    groups: list[str],
    results: dict[str, Any],
    started: float,
    load_before: tuple[float, float, float],
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """``--only``: these groups' figures over the previous latest.json in ``--out`` (kept)."""
    path = args.out / "latest.json"
    previous: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    mode = previous.get("params", {}).get("mode", params.mode)
    if mode != params.mode:
        raise SystemExit(
            f"--only: {path} holds a {mode} run and this is a {params.mode} run; pass --out "
            "to another directory, or run the same mode"
        )
    values = {
        key: value
        for key, value in previous.items()
        if key not in report.RECORD_SECTIONS and isinstance(value, int | float)
    }
    values.update(report.scale_figures(params, results))
    bad = [key for key, value in values.items() if not math.isfinite(value)]
    if bad:
        raise RuntimeError(f"non-finite figures: {bad}")
    merged = {**previous.get("scenarios", {}), **results}
    partial = {
        "only": groups,
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "machine": _machine(load_before),
    }
    record: dict[str, Any] = {
        **previous,
        **values,
        "goals": report.goal_table(params, values),
        "params": params.to_record(),
        "machine": previous.get("machine", partial["machine"]),
        "scenarios": merged,
        # The figures of these groups come from a later run than the rest: said here.
        "partial_runs": [*previous.get("partial_runs", []), partial],
    }
    table = report.markdown(params, values, merged)
    table += (
        f"\nFigures of {', '.join(groups)} from a later `--only` run "
        f"({partial['generated_at']}, load average {partial['machine']['load_average_before']}"
        f" before); the others from {previous.get('generated_at', 'no earlier run')}.\n"
    )
    return record, table, merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: seconds, not minutes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.*")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="where work directories (ledgers, stores, Dagster instances) go; default: the "
        "system temporary directory",
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"run only these scenario groups ({', '.join(ONLY_GROUPS)}; comma-separated) and "
        "merge their figures into the latest.json already in --out, keeping every other key",
    )
    parser.add_argument(
        "--day-batches",
        type=int,
        default=None,
        help="batches of the time-scaled day (default 100 of 200 prompts; 0 skips it)",
    )
    parser.add_argument(
        "--big-account",
        default=None,
        help="cases of the big-account group: 'issue' (issue 21's scenario and 8, 16, 32 "
        "concurrency at 50 and 200 ms, ten waves of 5 s renders each) or "
        "CONCURRENCY:LATENCY_MS:RENDER_SECONDS:N,... (the first is the headline); default: "
        "the issue's headline case and 8, 16, 32 concurrency at 200 ms over five waves",
    )
    args = parser.parse_args(argv)
    params = SMOKE if args.smoke else FULL
    account_cases = _parse_account_cases(args.big_account)
    if account_cases is not None:
        params = dataclasses.replace(params, account_cases=account_cases)
    if args.day_batches is not None:
        if args.day_batches < 0:
            raise SystemExit(f"--day-batches must be 0 or more, got {args.day_batches}")
        params = dataclasses.replace(params, day_batches=args.day_batches)
    only = _parse_only(args.only)
    # Dagster's per-event DEBUG lines and experimental warnings would drown the progress lines.
    logging.getLogger("dagster").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    load_before = os.getloadavg()
    if only is not None:
        with tempfile.TemporaryDirectory(prefix="krea-bench-", dir=args.scratch) as scratch:
            partial_results = run_only(params, Path(scratch), only)
        record, table, merged = _merge_only(
            args, params, only, partial_results, started, load_before
        )
        report.write(args.out, record, table, params, merged)
        print(table)
        _say(f"done in {time.perf_counter() - started:.0f} s; results merged in {args.out}")
        return 0
    with tempfile.TemporaryDirectory(prefix="krea-bench-", dir=args.scratch) as scratch:
        results = run_all(params, Path(scratch))
    values = report.figures(params, results)
    bad = [key for key, value in values.items() if not math.isfinite(value)]
    if bad:
        raise RuntimeError(f"non-finite figures: {bad}")
    record: dict[str, Any] = {
        **values,
        "goals": report.goal_table(params, values),
        "params": params.to_record(),
        "machine": _machine(load_before),
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "bench_seconds": time.perf_counter() - started,
        "scenarios": results,
    }
    table = report.markdown(params, values, results)
    report.write(args.out, record, table, params, results)
    print(table)
    _say(f"done in {record['bench_seconds']:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
