"""`krea-dagster catalog`: the backend's models against this release, and instances that would fail."""

import os
import subprocess
import sys
from pathlib import Path

from catalog_documents import GONE_MODEL, extended_document

from krea_dagster.emulator.testing import EmulatorHandle

from .conftest import write_batch

OPENAPI_ROUTE = "GET /openapi.json"
DEFINITIONS = """
import dagster as dg
from krea_dagster import KreaResource, build_krea_image_assets

old = build_krea_image_assets(
    "old", prompts="prompts", model={model!r}, store="store", ledger="sqlite:///ledger.db"
)
defs = dg.Definitions(assets=old.assets, resources={{"krea": KreaResource()}})
"""


def run_catalog(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KREA_")}
    env["KREA_DAGSTER_ROOT"] = str(project)
    command = [sys.executable, "-m", "krea_dagster", "catalog", "-f", "definitions.py", *args]
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=120
    )


def test_catalog_lists_new_and_gone_models_and_the_batches_a_gone_model_stops(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """New and gone models with prices, each instance of a gone model with its batches; the copy
    cached in the instance's ledger answers the next run, --refresh asks the backend again."""
    emulator.configure(openapi=str(extended_document(tmp_path, drop_gone=True)))
    project = tmp_path / "project"
    (project / "prompts").mkdir(parents=True)
    write_batch(project / "prompts", "spring", [{"prompt": "a lighthouse"}])
    (project / "definitions.py").write_text(DEFINITIONS.format(model=GONE_MODEL))

    first = run_catalog(project, "--base-url", emulator.base_url)
    assert first.returncode == 1, first.stderr
    out = first.stdout
    assert f"live catalog of {emulator.base_url}" in out
    assert "new since this release (1):\n  image/krea/krea-3" in out
    assert "$0.04 (openapi)" in out
    assert f"gone from Krea's document (1):\n  image/{GONE_MODEL}" in out
    assert f"old ({GONE_MODEL}): batches spring" in out
    assert emulator.stats()["requests_by_route"][OPENAPI_ROUTE] == 1

    assert run_catalog(project, "--base-url", emulator.base_url).returncode == 1
    assert emulator.stats()["requests_by_route"][OPENAPI_ROUTE] == 1  # the ledger's copy
    refreshed = run_catalog(project, "--base-url", emulator.base_url, "--refresh")
    assert refreshed.returncode == 1 and "image/krea/krea-3" in refreshed.stdout
    assert emulator.stats()["requests_by_route"][OPENAPI_ROUTE] == 2


def test_catalog_says_when_the_live_catalog_cannot_be_read(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """A failing /openapi.json: a warning naming the cause, the bundled catalog listed, status 1."""
    emulator.configure(error_5xx_rate=1.0, error_5xx_routes=[OPENAPI_ROUTE])
    done = run_catalog(tmp_path, "--base-url", emulator.base_url, "--no-code-location")
    assert done.returncode == 1
    assert "could not be read (GET" in done.stderr and "answered 5" in done.stderr
    assert done.stdout.startswith("bundled catalog (document ")
