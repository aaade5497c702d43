"""upload_asset / list_assets / delete_asset: checked before sending, never re-sent blindly."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from krea_dagster.api import (
    AmbiguousUploadError,
    BadRequestError,
    InvalidUploadError,
    NotFoundError,
    RequestValidationError,
)
from krea_dagster.api.config import ZDR_HEADER
from krea_dagster.api.media import find_media, media_paths, replace_media
from krea_dagster.api.uploads import (
    MAX_UPLOAD_BYTES,
    description_sha256,
    to_data_uri,
    upload_description,
)

from .support import (
    SAMPLE_JOB_CREATED,
    TEST_CDN_URL,
    TEST_MODEL,
    FakeClock,
    FakeKrea,
    make_async_client,
    make_client,
    png_bytes,
)

PNG = png_bytes(32, 24)
PNG_SHA = hashlib.sha256(PNG).hexdigest()


class AssetStore:
    """A fake ``/assets`` backend: stores uploads from multipart bodies, pages newest first."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.items: list[dict[str, Any]] = []
        self.posts = 0

    def store(self, request: httpx.Request) -> dict[str, Any]:
        body = request.read()
        description = re.search(rb'name="description"\r\n\r\n([^\r]*)\r\n', body)
        payload = re.search(rb'name="file"; filename="[^"]*"\r\nContent-Type: [^\r]*\r\n\r\n', body)
        assert payload is not None, "multipart body without a file part"
        file_bytes = body[payload.end() : body.rindex(b"\r\n--")]
        asset = {
            "id": str(uuid.uuid4()),
            "image_url": f"{TEST_CDN_URL}/assets/{len(self.items)}.png",
            "uploaded_at": (self.clock.now() + timedelta(microseconds=len(self.items))).isoformat(),
            "width": 32,
            "height": 24,
            "size_bytes": len(file_bytes),
            "mime_type": "image/png",
            "description": description.group(1).decode() if description else None,
            "sha256": hashlib.sha256(file_bytes).hexdigest(),
        }
        self.items.append(asset)
        return asset

    def post(self, request: httpx.Request) -> httpx.Response:
        self.posts += 1
        return httpx.Response(200, json=self.store(request))

    def post_then_drop(self, request: httpx.Request) -> httpx.Response:
        """Krea stores the file, then the answer is lost."""
        self.posts += 1
        self.store(request)
        raise httpx.ReadTimeout("simulated ReadTimeout", request=request)

    def list(self, request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params.get("limit", 100))
        cursor = request.url.params.get("cursor")
        ordered = sorted(self.items, key=lambda a: a["uploaded_at"], reverse=True)
        if cursor:
            ordered = [
                a
                for a in ordered
                if datetime.fromisoformat(a["uploaded_at"]) < datetime.fromisoformat(cursor)
            ]
        page = ordered[:limit]
        more = len(ordered) > limit
        return httpx.Response(
            200, json={"items": page, "next_cursor": page[-1]["uploaded_at"] if more else None}
        )


@pytest.fixture
def store(fake: FakeKrea, clock: FakeClock) -> AssetStore:
    assets = AssetStore(clock)
    fake.on("POST", "/assets", assets.post)
    fake.on("GET", "/assets", assets.list)
    return assets


def test_upload_sends_one_multipart_post_with_the_hash_in_the_description(
    fake: FakeKrea, clock: FakeClock, store: AssetStore
) -> None:
    """An upload is one multipart POST whose description starts with sha256:<hex of the bytes>."""
    with make_client(fake, clock) as krea:
        asset = krea.upload_asset(PNG, description="product shot")
        assert krea.stats.assets_uploaded == 1
    assert fake.paths() == ["POST /assets"]
    request = fake.requests[0]
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert store.items[0]["sha256"] == PNG_SHA
    assert asset.description == f"sha256:{PNG_SHA} product shot"
    assert description_sha256(asset.description) == PNG_SHA
    assert asset.size_bytes == len(PNG)
    assert asset.image_url.startswith(TEST_CDN_URL)


def test_upload_reads_a_local_path_and_names_the_file_after_it(
    fake: FakeKrea, clock: FakeClock, store: AssetStore, tmp_path: Path
) -> None:
    """A path is read and sent under its own file name."""
    path = tmp_path / "sku-42.png"
    path.write_bytes(PNG)
    with make_client(fake, clock) as krea:
        krea.upload_asset(path)
    assert b'filename="sku-42.png"' in fake.requests[0].content
    assert store.items[0]["sha256"] == PNG_SHA


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty"),
        (b"hello, not an image", "not a type Krea accepts"),
        (b"GIF89a" + b"\x00" * 32, "allowed types: JPEG, PNG, WebP"),
    ],
    ids=["empty", "text", "gif"],
)
def test_refused_types_never_reach_krea(
    fake: FakeKrea, clock: FakeClock, content: bytes, needle: str
) -> None:
    """Empty files and types Krea does not accept are refused before any request."""
    with make_client(fake, clock) as krea, pytest.raises(InvalidUploadError) as caught:
        krea.upload_asset(content, filename="input.bin")
    assert needle in str(caught.value)
    assert "nothing was uploaded" in str(caught.value)
    assert fake.requests == []


def test_a_file_over_75_mb_is_refused_from_its_size_alone(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """A path over 75 MB is refused by its size, before it is read or sent."""
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:
        handle.write(PNG[:16])
        handle.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: nothing that large is written
    with make_client(fake, clock) as krea, pytest.raises(InvalidUploadError) as caught:
        krea.upload_asset(path)
    assert "75 MB" in str(caught.value) and str(path) in str(caught.value)
    assert fake.requests == []


def test_a_missing_path_is_a_clear_error(fake: FakeKrea, clock: FakeClock, tmp_path: Path) -> None:
    """A path that does not exist names itself and sends nothing."""
    with make_client(fake, clock) as krea, pytest.raises(InvalidUploadError, match="no such file"):
        krea.upload_asset(tmp_path / "missing.png")
    assert fake.requests == []


def test_ambiguous_upload_is_found_in_the_asset_list_not_resent(
    fake: FakeKrea, clock: FakeClock, store: AssetStore
) -> None:
    """A timeout after Krea stored the file is reconciled through GET /assets: one POST."""
    fake.on("POST", "/assets", store.post_then_drop, store.post)
    with make_client(fake, clock) as krea:
        asset = krea.upload_asset(PNG)
        assert krea.stats.ambiguous_uploads == 1
        assert krea.stats.uploads_reconciled == 1
    assert store.posts == 1
    assert fake.paths() == ["POST /assets", "GET /assets"]
    assert asset.id == store.items[0]["id"]


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.Response(502), httpx.Response(500)],
    ids=["ReadTimeout", "RemoteProtocolError", "502", "500"],
)
def test_ambiguous_upload_not_found_raises_and_is_never_resent(
    fake: FakeKrea, clock: FakeClock, store: AssetStore, failure: Any
) -> None:
    """When GET /assets shows no asset with the hash, AmbiguousUploadError: still one POST."""
    fake.on("POST", "/assets", failure, store.post)
    with make_client(fake, clock) as krea, pytest.raises(AmbiguousUploadError) as caught:
        krea.upload_asset(PNG)
    assert fake.count("POST", "/assets") == 1
    assert caught.value.sha256 == PNG_SHA
    assert caught.value.size == len(PNG)
    assert "reconcile_upload" in str(caught.value)


def test_reconcile_upload_finds_an_asset_that_appears_later(
    fake: FakeKrea, clock: FakeClock, store: AssetStore
) -> None:
    """reconcile_upload looks again (no POST) and finds the asset once Krea lists it."""
    fake.on("POST", "/assets", httpx.ReadTimeout)
    with make_client(fake, clock) as krea:
        with pytest.raises(AmbiguousUploadError) as caught:
            krea.upload_asset(PNG)
        assert krea.reconcile_upload(caught.value) is None
        late_request = httpx.Request(
            "POST",
            "https://api.krea.test/assets",
            files={"file": ("x.png", PNG, "image/png")},
            data={"description": upload_description(PNG_SHA)},
        )
        store.store(late_request)  # the lost upload shows up in Krea's list
        found = krea.reconcile_upload(caught.value)
    assert found is not None and found.id == store.items[0]["id"]
    assert fake.count("POST", "/assets") == 1


def test_reconciliation_ignores_other_files_and_older_uploads(
    fake: FakeKrea, clock: FakeClock, store: AssetStore
) -> None:
    """Only an asset with the same hash and size, uploaded after the attempt, matches."""
    with make_client(fake, clock) as krea:
        krea.upload_asset(PNG)  # an old upload of the same bytes...
        clock.advance(3600)  # ...an hour before the ambiguous one
        krea.upload_asset(png_bytes(8, 8))  # and a recent upload of other bytes
        fake.on("POST", "/assets", httpx.ReadTimeout)
        with pytest.raises(AmbiguousUploadError):
            krea.upload_asset(PNG)
        assert krea.find_asset(PNG_SHA) is not None  # without a time bound the old one counts


def test_never_sent_upload_is_resent(fake: FakeKrea, clock: FakeClock, store: AssetStore) -> None:
    """A connect failure means Krea never saw the file: it is sent again, after a backoff."""
    fake.on("POST", "/assets", httpx.ConnectError, httpx.ConnectTimeout, store.post)
    with make_client(fake, clock) as krea:
        asset = krea.upload_asset(PNG)
        assert krea.stats.retries == 2
    assert fake.count("POST", "/assets") == 3
    assert len(store.items) == 1 and asset.id == store.items[0]["id"]
    assert len(clock.sleeps) == 2


def test_a_400_is_final_and_names_krea_message(fake: FakeKrea, clock: FakeClock) -> None:
    """Krea's refusal of the file is raised once, with its message, and not retried."""
    fake.on("POST", "/assets", httpx.Response(400, json={"error": "Unsupported file type"}))
    with make_client(fake, clock) as krea, pytest.raises(BadRequestError) as caught:
        krea.upload_asset(PNG)
    assert "Unsupported file type" in str(caught.value)
    assert fake.count("POST", "/assets") == 1


def test_list_assets_pages_with_the_time_cursor(
    fake: FakeKrea, clock: FakeClock, store: AssetStore
) -> None:
    """iter_assets walks every page newest first; uploaded_after stops at older assets."""
    with make_client(fake, clock) as krea:
        for index in range(5):
            krea.upload_asset(png_bytes(8 + index, 8))
            clock.advance(10)
        page = krea.list_assets(limit=2)
        assert len(page.items) == 2 and page.next_cursor is not None
        everything = list(krea.iter_assets(limit=2))
        recent = list(krea.iter_assets(limit=2, uploaded_after=clock.now() - timedelta(seconds=25)))
    assert [a.id for a in everything] == [a["id"] for a in reversed(store.items)]
    assert [a.id for a in recent] == [a["id"] for a in reversed(store.items[-2:])]
    assert fake.requests[5].url.params["limit"] == "2"


def test_list_assets_rejects_a_bad_limit(fake: FakeKrea, clock: FakeClock) -> None:
    """A limit outside 1..1000 is refused before any request."""
    with make_client(fake, clock) as krea, pytest.raises(ValueError, match="between 1 and 1000"):
        krea.list_assets(limit=0)
    assert fake.requests == []


def test_delete_asset_returns_krea_success(fake: FakeKrea, clock: FakeClock) -> None:
    """DELETE /assets/{id} answers Krea's success flag."""
    fake.on("DELETE", "/assets/a1", httpx.Response(200, json={"success": True, "message": "ok"}))
    with make_client(fake, clock) as krea:
        assert krea.delete_asset("a1") is True
    assert fake.paths() == ["DELETE /assets/a1"]


def test_delete_retried_into_a_404_counts_as_deleted(fake: FakeKrea, clock: FakeClock) -> None:
    """A 404 after a lost first answer means the first DELETE worked."""
    fake.on("DELETE", "/assets/a1", httpx.Response(503), httpx.Response(404, json={"error": "x"}))
    with make_client(fake, clock) as krea:
        assert krea.delete_asset("a1") is True
    assert fake.count("DELETE") == 2


def test_delete_of_an_unknown_asset_is_not_found(fake: FakeKrea, clock: FakeClock) -> None:
    """A 404 on the first DELETE is NotFoundError."""
    with make_client(fake, clock) as krea, pytest.raises(NotFoundError):
        krea.delete_asset("nope")


@pytest.mark.anyio
async def test_async_client_reconciles_an_ambiguous_upload(
    fake: FakeKrea, clock: FakeClock, store: AssetStore, tmp_path: Path
) -> None:
    """The async client reads the path off the loop and reconciles the same way: one POST."""
    path = tmp_path / "ref.png"
    path.write_bytes(PNG)
    fake.on("POST", "/assets", store.post_then_drop)
    async with make_async_client(fake, clock) as krea:
        asset = await krea.upload_asset(path)
        listed = [a.id async for a in krea.iter_assets()]
        fake.on("DELETE", f"/assets/{asset.id}", httpx.Response(200, json={"success": True}))
        assert await krea.delete_asset(asset.id) is True
    assert store.posts == 1 and listed == [asset.id]


def test_zero_data_retention_refuses_urls_before_sending(fake: FakeKrea, clock: FakeClock) -> None:
    """With ZDR on, an https media input is a validation error naming the field; nothing sent."""
    params = {"prompt": "p", "style_images": [{"url": "https://x.test/a.png", "strength": 1}]}
    with make_client(fake, clock) as krea, pytest.raises(RequestValidationError) as caught:
        krea.submit(TEST_MODEL, params, zero_data_retention=True)
    assert "style_images[0].url" in str(caught.value)
    assert "data: URIs" in str(caught.value)
    assert fake.requests == []


def test_zero_data_retention_sends_the_header_with_data_uris(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """With ZDR on and data: URI inputs the request carries X-Api-Zero-Data-Retention: 1."""
    fake.on("POST", f"/generate/image/{TEST_MODEL}", httpx.Response(200, json=SAMPLE_JOB_CREATED))
    params = {"prompt": "p", "image_urls": [to_data_uri(PNG)]}
    with make_client(fake, clock) as krea:
        krea.submit(TEST_MODEL, params, zero_data_retention=True)
        krea.submit(TEST_MODEL, {"prompt": "p"})
    assert fake.requests[0].headers[ZDR_HEADER] == "1"
    assert ZDR_HEADER not in fake.requests[1].headers
    assert json.loads(fake.requests[0].content)["image_urls"][0].startswith(
        "data:image/png;base64,"
    )


def test_media_paths_come_from_the_catalog() -> None:
    """gpt-image-2's media fields are found from its schema: image_urls and style_images.url."""
    assert media_paths(TEST_MODEL) == ("image_urls[]", "style_images[].url")
    assert "start_image" in media_paths("google/veo-3", kind="video")
    assert "prompt" not in media_paths("bfl/flux-1-dev")


def test_find_and_replace_media_in_a_request() -> None:
    """find_media lists each media value with its path; replace_media swaps them in a copy."""
    params = {
        "prompt": "p",
        "image_urls": ["a.png", "https://x.test/b.png"],
        "style_images": [{"url": "s3://bucket/c.png", "strength": 0.5}],
    }
    media = find_media(TEST_MODEL, params)
    assert [(m.path, m.value) for m in media] == [
        ("image_urls[0]", "a.png"),
        ("image_urls[1]", "https://x.test/b.png"),
        ("style_images[0].url", "s3://bucket/c.png"),
    ]
    replaced = replace_media(
        params, {("image_urls", 0): "https://cdn/a", media[2].location: "u"}, media
    )
    assert replaced["image_urls"] == ["https://cdn/a", "https://x.test/b.png"]
    assert replaced["style_images"] == [{"url": "u", "strength": 0.5}]
    assert params["image_urls"][0] == "a.png"  # the input is not changed


def test_find_media_without_a_catalog_entry_uses_field_names() -> None:
    """A model newer than the catalog still has its media inputs found by their names."""
    params = {"prompt": "p", "image_url": "x.png", "extra": {"reference_images": ["y.png"]}}
    assert [m.path for m in find_media("new/model-9", params)] == [
        "image_url",
        "extra.reference_images[0]",
    ]
