"""Results depend on the job's inputs, the job records them, and uploads are counted."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from krea_dagster.emulator.catalog import load_models
from krea_dagster.emulator.images import INPUTS_TEXT_KEY
from krea_dagster.emulator.inputs import media_values
from krea_dagster.emulator.testing import EmulatorHandle

EDIT_PATH = "/generate/image/openai/gpt-image-2"


def photo(colour: tuple[int, int, int]) -> bytes:
    """A small PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, "PNG")
    return buffer.getvalue()


RED, BLUE = photo((220, 20, 20)), photo((20, 20, 220))


def upload(api: httpx.Client, data: bytes) -> dict[str, Any]:
    response = api.post("/assets", files={"file": ("ref.png", data, "image/png")})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def run_job(emulator: EmulatorHandle, api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Submit, force completion, and return the admin view of the finished job."""
    response = api.post(EDIT_PATH, json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]
    emulator.complete_job(job_id)
    return emulator.job(job_id)


def result_png(job: dict[str, Any]) -> bytes:
    response = httpx.get(job["result"]["urls"][0], timeout=10)
    assert response.status_code == 200
    return response.content


def test_the_reference_image_changes_the_result(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """Same prompt, another reference file: other pixels; the same file: same pixels."""
    red, blue = upload(api, RED), upload(api, BLUE)
    again = upload(api, RED)  # the same bytes under another asset id
    body = {"prompt": "the product on a table", "width": 64, "height": 64}
    with_red = result_png(run_job(krea_emulator, api, {**body, "image_urls": [red["image_url"]]}))
    with_blue = result_png(run_job(krea_emulator, api, {**body, "image_urls": [blue["image_url"]]}))
    with_again = result_png(
        run_job(krea_emulator, api, {**body, "image_urls": [again["image_url"]]})
    )
    without = result_png(run_job(krea_emulator, api, body))
    assert len({with_red, with_blue, without}) == 3
    assert with_again == with_red  # identified by content, not by asset id


def test_the_job_records_each_input_by_content(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """The admin job view and the PNG's text chunk name each media field and its sha256."""
    red = upload(api, RED)
    inline = "data:image/png;base64," + base64.b64encode(BLUE).decode()
    body = {
        "prompt": "p",
        "width": 64,
        "height": 64,
        "image_urls": [red["image_url"], inline],
        "style_images": [{"url": "https://example.test/style.png", "strength": 0.5}],
    }
    job = run_job(krea_emulator, api, body)
    red_sha, blue_sha = hashlib.sha256(RED).hexdigest(), hashlib.sha256(BLUE).hexdigest()
    url_sha = hashlib.sha256(b"https://example.test/style.png").hexdigest()
    assert job["inputs"] == [
        {
            "field": "image_urls[0]",
            "kind": "asset",
            "sha256": red_sha,
            "asset_id": red["id"],
            "size_bytes": len(RED),
        },
        {"field": "image_urls[1]", "kind": "data", "sha256": blue_sha, "size_bytes": len(BLUE)},
        {
            "field": "style_images[0].url",
            "kind": "url",
            "sha256": url_sha,
            "url": "https://example.test/style.png",
        },
    ]
    with Image.open(io.BytesIO(result_png(job))) as image:
        text = image.text[INPUTS_TEXT_KEY]  # type: ignore[attr-defined]
    assert f"image_urls[0]={red_sha}" in text and f"image_urls[1]={blue_sha}" in text


def test_a_deleted_asset_is_an_input_file_rejected(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """An asset URL of the emulator that names no asset is refused with 422, and not billed."""
    red = upload(api, RED)
    assert api.delete(f"/assets/{red['id']}").status_code == 200
    response = api.post(EDIT_PATH, json={"prompt": "p", "image_urls": [red["image_url"]]})
    assert response.status_code == 422
    assert "Input file rejected" in response.json()["error"]
    assert krea_emulator.stats()["jobs_created"] == 0


def test_uploads_are_counted_by_content_hash(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """Stats count uploads, per sha256, and the uploads of bytes already uploaded."""
    upload(api, RED)
    upload(api, BLUE)
    upload(api, RED)
    rejected = api.post("/assets", files={"file": ("x.txt", b"not an image", "text/plain")})
    assert rejected.status_code == 400
    stats = krea_emulator.stats()
    assert stats["uploads"] == 3
    assert stats["uploads_by_sha256"] == {
        hashlib.sha256(RED).hexdigest(): 2,
        hashlib.sha256(BLUE).hexdigest(): 1,
    }
    assert stats["duplicate_uploads"] == 1
    krea_emulator.reset()
    assert krea_emulator.stats()["uploads"] == 0


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("image/openai/gpt-image-2", {"image_urls[0]", "style_images[0].url"}),
        ("enhance/topaz/standard-enhance", {"image_url"}),
    ],
)
def test_media_inputs_are_found_from_the_schema(model: str, expected: set[str]) -> None:
    """The media fields come from the model's request schema (uri format or media names)."""
    body = {
        "prompt": "p",
        "image_url": "https://x.test/a.png",
        "image_urls": ["https://x.test/a.png"],
        "style_images": [{"url": "https://x.test/s.png", "strength": 1}],
        "output_format": "png",
    }
    schema = load_models()[model].request_schema
    known = {key: value for key, value in body.items() if key in schema["properties"]}
    assert {path for path, _ in media_values(schema, known)} == expected


def test_zero_data_retention_needs_data_uris(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """With X-Api-Zero-Data-Retention: 1 an asset URL is a 422; data: URIs are accepted."""
    red = upload(api, RED)
    zdr = {"X-Api-Zero-Data-Retention": "1"}
    refused = api.post(
        EDIT_PATH, json={"prompt": "p", "image_urls": [red["image_url"]]}, headers=zdr
    )
    assert refused.status_code == 422
    assert "data: URIs" in refused.json()["error"] and "image_urls[0]" in refused.json()["error"]
    inline = "data:image/png;base64," + base64.b64encode(RED).decode()
    accepted = api.post(EDIT_PATH, json={"prompt": "p", "image_urls": [inline]}, headers=zdr)
    assert accepted.status_code == 200, accepted.text
    inputs = krea_emulator.job(accepted.json()["job_id"])["inputs"]
    assert [(i["kind"], i["sha256"]) for i in inputs] == [("data", hashlib.sha256(RED).hexdigest())]


def test_an_upload_can_be_stored_and_its_answer_lost(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """upload_accept_then_drop_rate stores the asset, then drops the connection unanswered."""
    krea_emulator.configure(upload_accept_then_drop_rate=1.0)
    with pytest.raises(httpx.TransportError):
        api.post("/assets", files={"file": ("ref.png", RED, "image/png")})
    krea_emulator.configure(upload_accept_then_drop_rate=0.0)
    listed = api.get("/assets").json()["items"]
    assert len(listed) == 1 and listed[0]["size_bytes"] == len(RED)
    stats = krea_emulator.stats()
    assert stats["uploads"] == 1 and stats["faults_injected"]["upload_accept_then_drop"] == 1


def test_an_earlier_result_as_input_names_its_job(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """A chained step's input that is an earlier job's result is recorded with that job's id."""
    first = run_job(krea_emulator, api, {"prompt": "step one", "width": 64, "height": 64})
    url = first["result"]["urls"][0]
    second = run_job(krea_emulator, api, {"prompt": "step two", "image_urls": [url]})
    assert second["inputs"] == [
        {
            "field": "image_urls[0]",
            "kind": "result",
            "sha256": hashlib.sha256(url.encode()).hexdigest(),
            "job_id": first["job_id"],
        }
    ]
    forged = url.rsplit("/", 1)[0] + "/0000000000000000.png"
    response = api.post(EDIT_PATH, json={"prompt": "p", "image_urls": [forged]})
    assert response.status_code == 422 and "no such result" in response.json()["error"]


def test_another_account_may_use_a_cdn_url_as_input(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """CDN URLs need no token, so another account's job may take one as its input."""
    red = upload(api, RED)
    other = krea_emulator.add_account()
    with krea_emulator.client(other["token"]) as other_api:
        response = other_api.post(EDIT_PATH, json={"prompt": "p", "image_urls": [red["image_url"]]})
    assert response.status_code == 200, response.text
    inputs = krea_emulator.job(response.json()["job_id"])["inputs"]
    assert [(i["kind"], i["asset_id"]) for i in inputs] == [("asset", red["id"])]
