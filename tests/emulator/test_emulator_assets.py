"""Assets: multipart upload by content type, 75 MB cap, list, get and delete."""

from __future__ import annotations

import io
import uuid

import httpx
import pytest
from PIL import Image

from krea_dagster.emulator.assets import MAX_ASSET_BYTES, check_upload
from krea_dagster.emulator.errors import BadRequest
from krea_dagster.emulator.testing import EmulatorHandle


def image_bytes(width: int = 32, height: int = 16, image_format: str = "PNG") -> bytes:
    """A small image file."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, image_format)
    return buffer.getvalue()


def png_bytes(width: int = 32, height: int = 16) -> bytes:
    """A small PNG."""
    return image_bytes(width, height)


SAMPLE_FILES = {
    "png": (png_bytes(), "image/png"),
    "jpeg": (image_bytes(image_format="JPEG"), "image/jpeg"),
    "webp": (image_bytes(image_format="WEBP"), "image/webp"),
    "heic": (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32, "image/heic"),
    "mp4": (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 32, "video/mp4"),
    "mov": (b"\x00\x00\x00\x14ftypqt  " + b"\x00" * 32, "video/quicktime"),
    "webm": (b"\x1a\x45\xdf\xa3" + b"\x00" * 32, "video/webm"),
    "glb": (b"glTF\x02\x00\x00\x00" + b"\x00" * 32, "model/gltf-binary"),
    "wav": (b"RIFF\x00\x00\x00\x00WAVEfmt " + b"\x00" * 32, "audio/wav"),
    "mp3": (b"ID3\x04\x00" + b"\x00" * 32, "audio/mpeg"),
}


def upload(
    api: httpx.Client, data: bytes, content_type: str = "application/octet-stream", **form: str
) -> httpx.Response:
    """POST /assets with one file."""
    return api.post("/assets", files={"file": ("upload.bin", data, content_type)}, data=form)


@pytest.mark.parametrize("kind", sorted(SAMPLE_FILES))
def test_allowed_types_are_recognised_by_content(api: httpx.Client, kind: str) -> None:
    """Each allowed type is accepted and typed by its magic bytes, whatever was declared."""
    data, mime_type = SAMPLE_FILES[kind]
    response = upload(api, data)
    assert response.status_code == 200, response.text
    asset = response.json()
    assert (asset["mime_type"], asset["size_bytes"]) == (mime_type, len(data))


def test_png_upload_has_dimensions_description_and_a_cdn_url(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """An image asset reports its size; image_url downloads the bytes from the CDN."""
    data = png_bytes(40, 20)
    asset = upload(api, data, "image/png", description="red").json()
    assert (asset["width"], asset["height"], asset["description"]) == (40, 20, "red")
    assert asset["image_url"].startswith(krea_emulator.cdn_url)
    assert httpx.get(asset["image_url"]).content == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"%PDF-1.7 not allowed", "unsupported file type"),
        (b"", "empty"),
        (b"\xff\xd8\xff\xe0 truncated", "cannot be decoded"),
    ],
    ids=["pdf", "empty", "broken-jpeg"],
)
def test_other_types_are_400(api: httpx.Client, data: bytes, message: str) -> None:
    """Files of other types are refused with the list of allowed ones."""
    response = upload(api, data, "application/pdf")
    assert response.status_code == 400 and message in response.json()["error"]


def test_missing_file_field_is_400(api: httpx.Client) -> None:
    """A multipart body without 'file' is a 400 naming the field."""
    response = api.post("/assets", files={"other": ("a", b"x")})
    assert response.status_code == 400 and "file" in response.json()["error"]


def test_files_over_75_megabytes_are_refused() -> None:
    """The 75 MB cap is enforced on the bytes."""
    with pytest.raises(BadRequest, match="maximum size is 75MB"):
        check_upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_ASSET_BYTES)


def test_list_get_and_delete(krea_emulator: EmulatorHandle, api: httpx.Client) -> None:
    """Assets list newest first with a cursor, read back, delete, and stay private."""
    ids = [upload(api, png_bytes()).json()["id"] for _ in range(3)]
    page = api.get("/assets", params={"limit": 2}).json()
    assert [a["id"] for a in page["items"]] == ids[::-1][:2]
    rest = api.get("/assets", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert ([a["id"] for a in rest["items"]], rest["next_cursor"]) == ([ids[0]], None)
    assert api.get(f"/assets/{ids[0]}").json()["id"] == ids[0]
    other = krea_emulator.add_account()
    with krea_emulator.client(other["token"]) as intruder:
        assert intruder.get(f"/assets/{ids[0]}").status_code == 404
        assert intruder.delete(f"/assets/{ids[0]}").status_code == 404
    deleted = api.delete(f"/assets/{ids[0]}")
    assert deleted.json() == {"success": True, "message": "Asset deleted"}
    assert api.get(f"/assets/{ids[0]}").status_code == 404
    assert api.get(f"/assets/{uuid.uuid4()}").status_code == 404
