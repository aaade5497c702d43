#!/usr/bin/env python3
"""The mutation check: every guard of the pay-once and validation code fails a fast test.

A guard is the piece of code that keeps a promise: the ``WHERE`` that keeps a status from
moving backwards, the check that stops a send on a lost lease, the second request window of a
reconciliation. A refactor can delete one while the tests a developer runs stay green, unless
some test fails without it. ``scripts/mutations.toml`` lists the guards, each as one exact
source edit that removes it (file, original text, replacement) with the fast tests that pin it.
This script applies each edit in turn to a copy of the project (the working tree is never
touched, so nothing is left behind by Ctrl-C or a crash), runs only that mutation's tests
there, and reports it *killed* (a test failed) or *survived* (every test passed: the guard is
not pinned).

Usage::

    .venv/bin/python scripts/mutation_check.py [--only NAME ...] [--list] [--jobs N]

Before the mutants, the selected mutations' tests run once on an unmutated copy (the
*baseline*): a test that fails anyway would make every mutant look killed.

Exit status 0 when every selected mutation is killed. 1 when one survived, when its original
text is not in its file exactly once (the list must follow the code: re-target the mutation
when the guard moves), when its tests could not run, or when the baseline fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS_FILE = ROOT / "scripts" / "mutations.toml"
#: The longest one mutant's tests may take; a mutant that hangs them counts as killed.
DEFAULT_TIMEOUT_SECONDS = 300.0
#: Never copied into a mutant's project: environments, caches, build output.
SKIPPED_PARTS = frozenset(
    {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".services"}
)
#: Only fast tests: a mutation pinned by a system test alone is not pinned for a developer.
FAST_TESTS = "not system and not soak"
_FIELDS = {"name", "guard", "file", "original", "replacement", "tests"}


class MutationListError(ValueError):
    """``mutations.toml`` is malformed (a field missing or of the wrong type, a name twice)."""


@dataclass(frozen=True)
class Mutation:
    """One guard-removing edit and the fast tests that must fail once it is made."""

    name: str
    #: The behaviour the original text guards, in one sentence.
    guard: str
    #: Relative to the project root.
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]

    def problem(self, root: Path) -> str | None:
        """Why this edit cannot be made in the project at ``root``, or None."""
        path = root / self.file
        if not path.is_file():
            return f"{self.file} does not exist"
        text = path.read_text(encoding="utf-8")
        count = text.count(self.original)
        if count == 0:
            return (
                f"its original text is no longer in {self.file}: the guard moved or changed; "
                "re-target the mutation at the code that guards this now"
            )
        if count > 1:
            return (
                f"its original text is in {self.file} {count} times: quote more of the line "
                "so it names one place"
            )
        if path.suffix == ".py":
            try:
                compile(self.mutated(text), self.file, "exec")
            except SyntaxError as error:
                return (
                    f"the mutated {self.file} does not compile ({error.msg}, line {error.lineno})"
                )
        return None

    def mutated(self, text: str) -> str:
        return text.replace(self.original, self.replacement, 1)

    def apply(self, root: Path) -> None:
        """Make the edit in the project copy at ``root`` (never the working tree)."""
        path = root / self.file
        path.write_text(self.mutated(path.read_text(encoding="utf-8")), encoding="utf-8")


def load_mutations(path: Path = MUTATIONS_FILE) -> list[Mutation]:
    """The mutations of a list file, checked for shape (not yet against the code)."""
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("mutation", [])
    except tomllib.TOMLDecodeError as error:
        raise MutationListError(f"{path}: not valid TOML ({error})") from None
    mutations: list[Mutation] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries, start=1):
        where = f"{path.name}, mutation {index} ({entry.get('name', 'no name')})"
        missing = _FIELDS - entry.keys()
        unknown = entry.keys() - _FIELDS
        if missing or unknown:
            raise MutationListError(
                f"{where}: missing {sorted(missing)}, unknown {sorted(unknown)}; each mutation "
                f"has exactly {sorted(_FIELDS)}"
            )
        strings = ("name", "guard", "file", "original")
        if not all(isinstance(entry[key], str) and entry[key] for key in strings):
            raise MutationListError(f"{where}: {', '.join(strings)} must be non-empty strings")
        if not isinstance(entry["replacement"], str):
            raise MutationListError(f"{where}: replacement must be a string ('' deletes)")
        tests = entry["tests"]
        if not tests or not all(isinstance(test, str) and "::" in test for test in tests):
            raise MutationListError(
                f"{where}: tests must list pytest node ids (tests/...py::test_name)"
            )
        if entry["original"] == entry["replacement"]:
            raise MutationListError(f"{where}: the replacement is the original text")
        if entry["name"] in seen:
            raise MutationListError(f"{where}: the name {entry['name']!r} is used twice")
        seen.add(entry["name"])
        mutations.append(
            Mutation(
                name=entry["name"],
                guard=entry["guard"],
                file=entry["file"],
                original=entry["original"],
                replacement=entry["replacement"],
                tests=tuple(tests),
            )
        )
    return mutations


# -- the project copies ----------------------------------------------------------------------


def project_files(root: Path) -> list[Path]:
    """The project's files relative to ``root``: git's view when there is one (tracked and
    untracked but not ignored), else every file outside environments and caches."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        listed = ""
    if listed:
        files = [Path(name) for name in listed.split("\0") if name]
        return [name for name in files if (root / name).is_file()]
    return [
        path.relative_to(root)
        for path in root.rglob("*")
        if path.is_file() and not SKIPPED_PARTS & set(path.relative_to(root).parts)
    ]


def copy_project(root: Path, files: Sequence[Path], target: Path) -> None:
    for name in files:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, destination)


# -- running tests ---------------------------------------------------------------------------


Status = Literal["killed", "survived", "error"]


@dataclass(frozen=True)
class Run:
    """What one pytest run in a project copy did."""

    status: Status
    seconds: float
    #: The failed test (killed), or the end of pytest's output (error).
    detail: str = ""


class Processes:
    """The pytest processes running now, so an interrupted check stops every one of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[str]] = set()
        self.stopping = False

    @contextmanager
    def started(self, command: list[str], **options: object) -> Iterator[subprocess.Popen[str]]:
        with self._lock:
            if self.stopping:
                raise KeyboardInterrupt
            process = subprocess.Popen(command, **options)  # type: ignore[call-overload]
            self._running.add(process)
        try:
            yield process
        finally:
            with self._lock:
                self._running.discard(process)
            if process.poll() is None:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        with self._lock:
            self.stopping = True
            running = list(self._running)
        for process in running:
            if process.poll() is None:
                process.kill()


def run_tests(
    project: Path,
    tests: Sequence[str],
    processes: Processes,
    *,
    timeout: float,
    workers: int = 1,
) -> Run:
    """Run ``tests`` in the project copy (its own code imported, first failure stops them)."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider"]
    command += ["-m", FAST_TESTS]
    if workers > 1 and len(tests) > 1:
        command += ["-n", str(min(workers, len(tests)))]
    command += list(tests)
    # The copy's package shadows the installed (editable) one, in the tests and in every
    # process they start.
    pythonpath = os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    with processes.started(
        command,
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return Run("killed", time.monotonic() - started, f"its tests hung ({timeout:.0f} s)")
    seconds = time.monotonic() - started
    if process.returncode == 0:
        return Run("survived", seconds)
    if process.returncode == 1:
        failed = re.findall(r"^FAILED (\S+)", output, re.M)
        return Run("killed", seconds, failed[0] if failed else "a test failed")
    if process.returncode < 0 and processes.stopping:
        raise KeyboardInterrupt
    reasons = {
        2: "pytest was interrupted (a collection error: does the mutant import?)",
        4: "pytest refused the arguments (a listed test does not exist?)",
        5: "no test ran (a listed test is missing, or marked system/soak: fast tests only)",
    }
    reason = reasons.get(process.returncode, f"pytest exited with {process.returncode}")
    tail = "\n".join(output.strip().splitlines()[-15:])
    return Run("error", seconds, f"{reason}\n{tail}")


def run_mutant(
    mutation: Mutation,
    root: Path,
    files: Sequence[Path],
    processes: Processes,
    *,
    timeout: float,
) -> Run:
    """Apply ``mutation`` to a fresh copy of the project and run its tests there."""
    with tempfile.TemporaryDirectory(prefix="krea-mutant-") as scratch:
        project = Path(scratch) / "project"
        copy_project(root, files, project)
        mutation.apply(project)
        return run_tests(project, mutation.tests, processes, timeout=timeout)


def run_baseline(
    mutations: Sequence[Mutation],
    root: Path,
    files: Sequence[Path],
    processes: Processes,
    *,
    timeout: float,
    workers: int,
) -> tuple[Run, int]:
    """Every selected mutation's tests on an unmutated copy: they must pass."""
    tests = list(dict.fromkeys(test for mutation in mutations for test in mutation.tests))
    with tempfile.TemporaryDirectory(prefix="krea-mutant-baseline-") as scratch:
        project = Path(scratch) / "project"
        copy_project(root, files, project)
        return run_tests(project, tests, processes, timeout=timeout, workers=workers), len(tests)


# -- the command -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Remove each listed guard in a copy of the project and check a fast test "
        "fails (see the module docstring)."
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="check only this mutation (repeat, or separate names with commas)",
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="mutants run at once (default: 2, or 1 on one core)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"seconds one mutant's tests may take (default {DEFAULT_TIMEOUT_SECONDS:.0f})",
    )
    parser.add_argument(
        "--mutations", type=Path, default=MUTATIONS_FILE, help=argparse.SUPPRESS
    )  # another list (the checker's own tests)
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def select(mutations: list[Mutation], only: Sequence[str]) -> list[Mutation]:
    wanted = [name.strip() for names in only for name in names.split(",") if name.strip()]
    if not wanted:
        return mutations
    known = {mutation.name for mutation in mutations}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise MutationListError(
            f"no mutation named {', '.join(unknown)}; --list shows the {len(known)} names"
        )
    return [mutation for mutation in mutations if mutation.name in wanted]


def print_list(mutations: Sequence[Mutation]) -> None:
    for mutation in mutations:
        print(f"{mutation.name}  ({mutation.file})")
        print(f"    guards: {mutation.guard}")
        for test in mutation.tests:
            print(f"    pinned by: {test}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.root.resolve()
    try:
        mutations = select(load_mutations(args.mutations), args.only)
    except MutationListError as error:
        print(f"mutation check: {error}", file=sys.stderr)
        return 1
    if args.list:
        print_list(mutations)
        return 0
    started = time.monotonic()
    stale = {m.name: problem for m in mutations if (problem := m.problem(root)) is not None}
    runnable = [mutation for mutation in mutations if mutation.name not in stale]
    print(
        f"mutation check: {len(mutations)} mutation(s), {len(runnable)} to run, "
        f"{args.jobs} at a time",
        flush=True,
    )
    for name, problem in stale.items():
        print(f"  STALE     {name}: {problem}", flush=True)
    files = project_files(root)
    processes = Processes()
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    results: dict[str, Run] = {}
    try:
        if runnable:
            baseline, count = run_baseline(
                runnable, root, files, processes, timeout=args.timeout, workers=args.jobs
            )
            if baseline.status != "survived":
                why = (
                    "do not pass without any mutation"
                    if baseline.status == "killed"
                    else "could not run"
                )
                print(
                    f"  BASELINE FAILED: the {count} listed test(s) {why}, so no mutant can be "
                    f"judged; fix that first: {baseline.detail}",
                    flush=True,
                )
                return 1
            print(f"  baseline: {count} test(s) pass unmutated ({baseline.seconds:.1f} s)")
            futures = {
                mutation.name: pool.submit(
                    run_mutant, mutation, root, files, processes, timeout=args.timeout
                )
                for mutation in runnable
            }
            for mutation in runnable:
                result = results[mutation.name] = futures[mutation.name].result()
                _report(mutation, result)
    except KeyboardInterrupt:
        # Stop the running tests first: the pool's threads wait for them.
        processes.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        print("mutation check: interrupted; the working tree was never changed", file=sys.stderr)
        return 130
    finally:
        pool.shutdown(wait=True)
        signal.signal(signal.SIGTERM, previous_sigterm)
    killed = sum(result.status == "killed" for result in results.values())
    survived = sum(result.status == "survived" for result in results.values())
    errors = sum(result.status == "error" for result in results.values())
    rate = 100.0 * killed / len(mutations) if mutations else 100.0
    print(
        f"killed {killed} of {len(mutations)} ({rate:.1f} %), survived {survived}, "
        f"stale {len(stale)}, errors {errors}, in {time.monotonic() - started:.0f} s"
    )
    return 0 if killed == len(mutations) else 1


def _report(mutation: Mutation, result: Run) -> None:
    if result.status == "killed":
        print(
            f"  killed    {mutation.name} ({result.seconds:.1f} s) by {result.detail}", flush=True
        )
    elif result.status == "survived":
        print(
            f"  SURVIVED  {mutation.name}: every listed test passes without this guard "
            f"({mutation.guard}) in {mutation.file}",
            flush=True,
        )
    else:
        print(f"  ERROR     {mutation.name}: {result.detail}", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
