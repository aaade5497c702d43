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
