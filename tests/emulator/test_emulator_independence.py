"""Structure checks: the emulator never imports the client, and its modules stay small."""

from __future__ import annotations

import ast
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
