"""The layers of the package: the engine and the client run without Dagster.

A folder answers "may this module import dagster?": ``krea_dagster/api`` and
``krea_dagster/engine`` may not, directly or through anything they import.
"""

import pkgutil
import subprocess
import sys

import pytest

import krea_dagster.engine


def _engine_modules() -> list[str]:
    return sorted(
        f"krea_dagster.engine.{info.name}"
        for info in pkgutil.iter_modules(krea_dagster.engine.__path__)
    )


def test_the_engine_has_its_modules() -> None:
    """The engine package lists the homes its docstring names (a rename updates both)."""
    names = {name.rsplit(".", 1)[1] for name in _engine_modules()}
    documented = {
        line.split("``")[1]
        for line in (krea_dagster.engine.__doc__ or "").splitlines()
        if line.startswith("- ``")
    }
    assert names == documented


@pytest.mark.parametrize("module", _engine_modules())
def test_engine_modules_import_no_dagster(module: str) -> None:
    """Importing an engine module loads no Dagster module, not even through its imports."""
    code = (
        "import sys, importlib; importlib.import_module(sys.argv[1]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, module], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"
