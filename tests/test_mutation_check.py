"""The mutation check (``scripts/mutation_check.py``): its list follows the code, and it tells a
killed guard from a survivor without ever touching the working tree.

The check itself runs in ``scripts/test``; these tests read its list and run it on a project of
three files, so they take about a second.
"""

import ast
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mutation_check", REPO / "scripts" / "mutation_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_check", module)
    spec.loader.exec_module(module)
    return module


checker = load_checker()


def test_every_mutation_names_one_place_in_the_code_and_fast_tests_that_exist():
    """Each listed guard's original text is in its file exactly once (the list follows the code:
    a moved guard fails here and in the check), and each listed test is defined."""
    mutations = checker.load_mutations()
    assert len(mutations) >= 20
    problems = {m.name: p for m in mutations if (p := m.problem(REPO)) is not None}
    assert problems == {}, "re-target these mutations at the code that guards this now"
    for mutation in mutations:
        for test in mutation.tests:
            path, _, name = test.partition("::")
            module = ast.parse((REPO / path).read_text(encoding="utf-8"))
            defined = {node.name for node in module.body if isinstance(node, ast.FunctionDef)}
            assert name.split("[")[0] in defined, f"{mutation.name}: no test {test}"
            assert "system" not in path and "soak" not in path, f"{test} is not a fast test"


GUARDED = """\
def pay(amount):
    if amount <= 0:
        raise ValueError("nothing to pay")
    return amount
"""

TESTS = """\
import pytest

from guarded import pay


def test_a_zero_amount_is_refused():
    with pytest.raises(ValueError):
        pay(0)
"""

MUTATIONS = """\
[[mutation]]
name = "pinned"
guard = "A zero amount is refused."
file = "guarded.py"
original = "    if amount <= 0:"
replacement = "    if False:"
tests = ["tests/test_guarded.py::test_a_zero_amount_is_refused"]

[[mutation]]
name = "unpinned"
guard = "The refusal says why."
file = "guarded.py"
original = '"nothing to pay"'
replacement = '"no"'
tests = ["tests/test_guarded.py::test_a_zero_amount_is_refused"]

[[mutation]]
name = "moved"
guard = "A negative amount is refused."
file = "guarded.py"
original = "    if amount < 0:"
replacement = "    if False:"
tests = ["tests/test_guarded.py::test_a_zero_amount_is_refused"]
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three files: a guard, the test that pins it, and a list of three mutations."""
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    (root / "guarded.py").write_text(GUARDED)
    (root / "tests" / "test_guarded.py").write_text(TESTS)
    (root / "mutations.toml").write_text(MUTATIONS)
    # The little project needs none of the installed pytest plugins (they import Dagster).
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return root


def test_a_survivor_or_a_stale_mutation_fails_the_check_and_the_code_is_never_touched(
    project: Path, capsys: pytest.CaptureFixture[str]
):
    """A kill is reported with its test, a survivor and a mutation whose text is gone fail the
    check (exit 1), and the project's files are as they were."""
    args = ["--root", str(project), "--mutations", str(project / "mutations.toml"), "--jobs", "1"]
    assert checker.main(args) == 1
    out = capsys.readouterr().out
    assert "killed    pinned" in out and "test_a_zero_amount_is_refused" in out
    assert "SURVIVED  unpinned" in out
    assert "STALE     moved: its original text is no longer in guarded.py" in out
    assert "killed 1 of 3 (33.3 %), survived 1, stale 1, errors 0" in out
    assert (project / "guarded.py").read_text() == GUARDED
    assert sorted(p.name for p in project.rglob("*") if p.is_file()) == [
        "guarded.py",
        "mutations.toml",
        "test_guarded.py",
    ]

    assert checker.main([*args, "--only", "pinned"]) == 0
    assert "killed 1 of 1 (100.0 %)" in capsys.readouterr().out


def test_a_listed_test_that_does_not_exist_is_an_error_not_a_kill(
    project: Path, capsys: pytest.CaptureFixture[str]
):
    """A mutation whose test is missing cannot be judged: the check says so and fails."""
    listed = project / "mutations.toml"
    listed.write_text(MUTATIONS.replace("::test_a_zero_amount_is_refused", "::test_renamed", 1))
    args = ["--root", str(project), "--mutations", str(listed), "--only", "pinned"]
    assert checker.main(args) == 1
    out = capsys.readouterr().out
    assert "BASELINE FAILED: the 1 listed test(s) could not run" in out
    assert "a listed test does not exist?" in out and "test_renamed" in out


HANGING_TESTS = """\
import os
import time
from pathlib import Path

from guarded import pay


def test_a_zero_amount_is_refused():
    try:
        pay(0)
    except ValueError:
        return
    Path(os.environ["MUTANT_RUNNING"]).touch()  # the mutant's tests are running now
    time.sleep(600)
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_check_stops_its_tests_and_leaves_nothing_behind(
    project: Path, tmp_path: Path, stop: signal.Signals
):
    """Ctrl-C or SIGTERM while a mutant's tests run: the check stops them, exits 130, and
    leaves the project as it was and no copy in the temporary folder."""
    (project / "tests" / "test_guarded.py").write_text(HANGING_TESTS)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    running = tmp_path / "mutant-running"
    command = [sys.executable, str(REPO / "scripts" / "mutation_check.py")]
    command += ["--root", str(project), "--mutations", str(project / "mutations.toml")]
    command += ["--only", "pinned", "--jobs", "1"]
    env = {**os.environ, "TMPDIR": str(scratch), "MUTANT_RUNNING": str(running)}
    check = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not running.exists():
            assert check.poll() is None, check.communicate()
            assert time.monotonic() < deadline, "the mutant's tests never started"
            time.sleep(0.05)
        check.send_signal(stop)
        _, err = check.communicate(timeout=60)
    finally:
        if check.poll() is None:
            check.kill()
    assert check.returncode == 130, err.decode()
    assert b"interrupted; the working tree was never changed" in err
    assert (project / "guarded.py").read_text() == GUARDED
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name = "a"\nguard = "g"\nfile = "f.py"\noriginal = "x"\ntests = ["t.py::t"]', "missing"),
        (
            'name = "a"\nguard = "g"\nfile = "f.py"\noriginal = "x"\nreplacement = "x"\n'
            'tests = ["t.py::t"]',
            "the replacement is the original text",
        ),
        (
            'name = "a"\nguard = "g"\nfile = "f.py"\noriginal = "x"\nreplacement = "y"\n'
            'tests = ["tests/t.py"]',
            "pytest node ids",
        ),
    ],
    ids=["no-replacement", "no-change", "a-file-not-a-test"],
)
def test_a_malformed_list_is_refused_naming_the_entry(tmp_path: Path, entry: str, message: str):
    """A list entry missing a field, changing nothing or naming no test is refused by name."""
    listed = tmp_path / "mutations.toml"
    listed.write_text("[[mutation]]\n" + textwrap.dedent(entry) + "\n")
    with pytest.raises(checker.MutationListError, match=message) as caught:
        checker.load_mutations(listed)
    assert "mutation 1 (a)" in str(caught.value)


def test_an_unknown_name_for_only_is_refused(capsys: pytest.CaptureFixture[str]):
    """--only with a name the list does not have fails at once, pointing at --list."""
    assert checker.main(["--only", "no-such-guard"]) == 1
    assert "no mutation named no-such-guard; --list shows" in capsys.readouterr().err
