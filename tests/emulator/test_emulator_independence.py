"""Structure checks: the emulator never imports the client, and its modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import krea_dagster.emulator

PACKAGE = Path(krea_dagster.emulator.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
MAX_MODULE_LINES = 560


def imported_modules(path: Path) -> set[str]:
    """Every module name an import statement of the file names (relative ones resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "krea_dagster.emulator" if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_emulator_imports_nothing_from_the_client(path: Path) -> None:
    """No module of the emulator imports krea_dagster.api (the two check each other)."""
    forbidden = {
        n
        for n in imported_modules(path)
        if n == "krea_dagster.api" or n.startswith("krea_dagster.api.")
    }
    assert not forbidden
    assert "from krea_dagster import api" not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_stay_small(path: Path) -> None:
    """Each module stays about one screenful of concepts (well under starlette's routing.py)."""
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_LINES


def test_emulator_runs_without_the_client_or_dagster_loaded() -> None:
    """Importing every emulator module under a bare krea_dagster package loads no client code."""
    modules = " ".join(
        f"krea_dagster.emulator.{path.stem}" for path in MODULES if path.stem != "__main__"
    )
    code = f"""
import importlib, importlib.util, sys, types
spec = importlib.util.find_spec("krea_dagster")
package = types.ModuleType("krea_dagster")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["krea_dagster"] = package
for name in "{modules}".split():
    importlib.import_module(name)
print(sorted(m for m in sys.modules if m.startswith(("krea_dagster.api", "dagster"))))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
