"""The emulator serves another OpenAPI document (``openapi`` knob) and the models it describes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from catalog_documents import GONE_MODEL_PATH, NEW_MODEL_PATH, extended_document

from krea_dagster.emulator.catalog import load_document
from krea_dagster.emulator.errors import BadRequest
from krea_dagster.emulator.testing import EmulatorHandle

NEW_BODY = {"prompt": "a lighthouse", "aspect_ratio": "1:1", "resolution": "1K"}


@pytest.fixture
def extended(krea_emulator: EmulatorHandle, tmp_path: Path) -> EmulatorHandle:
    """The session emulator serving the bundled document plus krea/krea-3, minus imagen-3."""
    krea_emulator.configure(openapi=str(extended_document(tmp_path, drop_gone=True)))
    return krea_emulator


def test_the_document_is_served_with_an_etag_and_answers_304_to_it(
    extended: EmulatorHandle,
) -> None:
    """GET /openapi.json serves the knob's document with an ETag; If-None-Match gets a 304."""
    first = httpx.get(f"{extended.base_url}/openapi.json")
    assert NEW_MODEL_PATH in first.json()["paths"]
    etag = first.headers["etag"]
    again = httpx.get(f"{extended.base_url}/openapi.json", headers={"If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == etag


def test_a_model_the_document_adds_is_served_and_validated(
    extended: EmulatorHandle, api: httpx.Client
) -> None:
    """The added model accepts a body valid for its schema and refuses a bad field (400)."""
    created = api.post(NEW_MODEL_PATH, json=NEW_BODY)
    assert created.status_code == 200, created.text
    done = extended.wait_for_job(created.json()["job_id"])
    assert done["status"] == "completed"
    refused = api.post(NEW_MODEL_PATH, json={**NEW_BODY, "aspect_ratio": "2:1"})
    assert refused.status_code == 400
    assert "aspect_ratio" in refused.json()["error"]


def test_a_model_the_document_drops_is_not_served(
    extended: EmulatorHandle, api: httpx.Client
) -> None:
    """A model of the bundled catalog missing from the served document answers 404."""
    response = api.post(GONE_MODEL_PATH, json={"prompt": "a lighthouse"})
    assert response.status_code == 404


def test_a_file_that_is_not_a_document_is_refused_when_set(tmp_path: Path) -> None:
    """Setting the knob to a file with no paths fails at once, naming the file."""
    path = tmp_path / "nope.json"
    path.write_text(json.dumps({"openapi": "3.1.0"}))
    with pytest.raises(BadRequest, match=r"nope\.json"):
        load_document(path)
