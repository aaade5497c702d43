"""The public surface of krea_dagster.api: the export list, and no Dagster import."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import krea_dagster.api as api

API_DIR = Path(api.__file__).parent
PUBLIC_MODULES = [
    "catalog",
    "catalog_source",
    "clock_offset",
    "client",
    "config",
    "errors",
    "json_values",
    "media",
    "models",
    "reconcile",
    "redaction",
    "retries",
    "uploads",
    "video",
    "webhooks",
]
ALL_MODULES = sorted(path.stem for path in API_DIR.glob("*.py"))


def isort_order(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[0].isupper() else (2, name)


#: What a script using only the client needs: the clients, the job and asset models, their
#: settings, the error tree, the catalog's types and the webhook helpers. Everything else is
#: reached through its module (``krea_dagster.api.retries``, ``.reconcile``, ...).
PUBLIC_SURFACE = {
    "clients": {"AsyncKreaClient", "KreaClient", "SendAttempt"},
    "models": {"Asset", "Job", "JobError", "JobStatus", "NodeApp", "TERMINAL_STATUSES"},
    "settings": {
        "API_KEY_ENV",
        "BASE_URL_ENV",
        "DEFAULT_BASE_URL",
        "DownloadSettings",
        "RetryPolicy",
        "SubmitRateLimitPolicy",
        "Timeouts",
    },
    "catalog and webhooks": {
        "ModelCatalog",
        "ModelSpec",
        "aconfirm_webhook",
        "confirm_webhook",
        "parse_webhook",
    },
}


def test_package_all_is_the_small_public_surface_sorted() -> None:
    """The package exports the client's public surface (the groups above and every error class)
    and nothing else, sorted; every name comes from one public module."""
    from krea_dagster.api import errors

    error_classes = {
        name
        for name in errors.__all__
        if inspect.isclass(getattr(errors, name))
        and issubclass(getattr(errors, name), errors.KreaError)
    }
    expected = set().union(*PUBLIC_SURFACE.values()) | error_classes
    assert set(api.__all__) == expected
    assert api.__all__ == sorted(api.__all__, key=isort_order)
    homes = {
        name
        for module in PUBLIC_MODULES
        for name in importlib.import_module(f"{api.__name__}.{module}").__all__
    }
    assert set(api.__all__) <= homes
    assert len(api.__all__) < 60


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_module_all_is_sorted(module_name: str) -> None:
    """Each module's ``__all__`` is sorted, so additions show up as one-line diffs."""
    names = importlib.import_module(f"{api.__name__}.{module_name}").__all__
    assert names == sorted(names, key=isort_order)


def test_every_exported_name_resolves() -> None:
    """Every name in ``__all__`` is an attribute of the package."""
    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert missing == []


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_module_all_lists_its_public_definitions(module_name: str) -> None:
    """Each public module's ``__all__`` names every public class and function it defines."""
    module = importlib.import_module(f"{api.__name__}.{module_name}")
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }
    assert defined - set(module.__all__) == set()
    assert set(module.__all__) - set(vars(module)) == set()


@pytest.mark.parametrize("module_name", ALL_MODULES)
def test_api_modules_never_import_dagster(module_name: str) -> None:
    """No module of krea_dagster.api imports dagster (the client is usable without it)."""
    tree = ast.parse((API_DIR / f"{module_name}.py").read_text(encoding="utf-8"))
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
    assert [name for name in imported if name.split(".")[0].startswith("dagster")] == []


def test_no_machine_paths_in_client_sources() -> None:
    """Committed client and test files carry no absolute paths of the machine they were written on."""
    files = [*API_DIR.glob("*.py"), *Path(__file__).parent.glob("*.py")]
    marker = "/" + "work" + "/"
    offenders = [path.name for path in files if marker in path.read_text(encoding="utf-8")]
    assert offenders == []
