"""The committed model catalog and OpenAPI copy are what scripts/build_catalog.py derives."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = REPO / "krea_dagster" / "data"


@pytest.mark.skipif(
    not (SHARED / "krea-openapi.json").exists(),
    reason="the shared Krea documents are not next to this checkout",
)
def test_committed_catalog_is_fresh():
    """Regenerating from the shared OpenAPI document and facts gives exactly the committed files."""
    check = subprocess.run(
        [sys.executable, "scripts/build_catalog.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_catalog_is_derived_from_the_bundled_openapi_copy():
    """Every POST /generate path of the bundled document is in the catalog with its verbatim schema."""
    openapi = json.loads((DATA / "krea-openapi.json").read_text())
    catalog = json.loads((DATA / "krea_models.json").read_text())["models"]
    paths = {path for path in openapi["paths"] if path.startswith("/generate/")}
    assert {entry["path"] for entry in catalog.values()} == paths
    for entry in catalog.values():
        schema = openapi["paths"][entry["path"]]["post"]["requestBody"]["content"][
            "application/json"
        ]["schema"]
        assert entry["request_schema"] == schema
        assert entry["required"] == schema.get("required", [])
    images = [entry for entry in catalog.values() if entry["kind"] == "image"]
    assert len(images) == 22
    assert all(entry["price"] for entry in images if entry["model"] != "bytedance/seededit")


def test_the_client_and_the_emulator_import_without_dagster():
    """A script using only the client, and the krea-emulator command, do not import Dagster."""
    probe = "import sys, krea_dagster, krea_dagster.api, krea_dagster.emulator.cli; print('dagster' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_top_level_exports_resolve_and_register_the_library():
    """Every name in krea_dagster.__all__ resolves, and using the Dagster layer registers the library."""
    import dagster as dg

    import krea_dagster

    for name in krea_dagster.__all__:
        assert getattr(krea_dagster, name) is not None
    assert dg.DagsterLibraryRegistry.get()["krea-dagster"] == krea_dagster.__version__
