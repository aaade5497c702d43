"""Reference images from anywhere, against the emulator: uploaded once, reused by content hash."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from krea_dagster.api import AsyncKreaClient, KreaClient
from krea_dagster.api.uploads import MAX_UPLOAD_BYTES
from krea_dagster.emulator.testing import EmulatorHandle, run_emulator
from krea_dagster.engine.references import (
    AsyncReferenceResolver,
    ImageReferenceError,
    MemoryUploadCache,
    ReferenceResolver,
    UploadCache,
    forget_gone_uploads,
    image_fields,
    load_reference,
    reference_kind,
)
from krea_dagster.engine.run import run_coroutine

MODEL = "openai/gpt-image-2"


def photo(colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buffer, fmt)
    return buffer.getvalue()


RED, GREEN = photo((200, 10, 10)), photo((10, 200, 10), "JPEG")


@pytest.fixture(scope="module")
def emulator_module() -> Iterator[EmulatorHandle]:
    with run_emulator(time_scale=0.001, seed=3) as emulator:
        yield emulator


@pytest.fixture
def emulator(emulator_module: EmulatorHandle) -> EmulatorHandle:
    emulator_module.reset(config=True, accounts=True)
    return emulator_module


@pytest.fixture
def client(emulator: EmulatorHandle) -> Iterator[KreaClient]:
    with KreaClient(emulator.token, base_url=emulator.base_url, timeout=5.0) as krea:
        yield krea


@pytest.fixture
def refs(tmp_path: Path) -> Path:
    directory = tmp_path / "refs"
    directory.mkdir()
    (directory / "red.png").write_bytes(RED)
    (directory / "red-copy.png").write_bytes(RED)
    (directory / "green.jpg").write_bytes(GREEN)
    return directory


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_local_file_is_uploaded_once_and_then_served_from_the_cache(
    emulator: EmulatorHandle, client: KreaClient, refs: Path
) -> None:
    """The second resolve of the same bytes (same path or a copy) uploads nothing."""
    resolver = ReferenceResolver(client)
    first = resolver.resolve(str(refs / "red.png"))
    again = resolver.resolve(str(refs / "red.png"))
    copy = resolver.resolve(str(refs / "red-copy.png"))
    assert first.how == "uploaded" and first.sha256 == sha(RED) and first.asset_id
    assert (again.how, copy.how) == ("cached", "cached")
    assert first.value == again.value == copy.value
    assert first.value.startswith(emulator.cdn_url)
    assert (resolver.uploads, resolver.cache_hits) == (1, 2)
    stats = emulator.stats()
    assert stats["uploads"] == 1 and stats["uploads_by_sha256"] == {sha(RED): 1}


def test_a_shared_cache_means_another_worker_uploads_nothing(
    emulator: EmulatorHandle, client: KreaClient, refs: Path
) -> None:
    """Two resolvers over one UploadCache (the ledger's role) upload each file once in all."""
    cache = MemoryUploadCache()
    assert isinstance(cache, UploadCache)
    ReferenceResolver(client, cache).resolve(str(refs / "red.png"))
    other = ReferenceResolver(client, cache).resolve(str(refs / "red-copy.png"))
    assert other.how == "cached"
    assert cache.entries[sha(RED)][0] == other.value
    assert emulator.stats()["uploads"] == 1


def test_a_request_carries_asset_urls_and_the_job_sees_the_reference_bytes(
    emulator: EmulatorHandle, client: KreaClient, refs: Path
) -> None:
    """Every image field is resolved; the emulator's job records the files' own sha256."""
    resolver = ReferenceResolver(client, base_dir=refs)
    data_uri = "data:image/png;base64," + base64.b64encode(RED).decode()
    params = {
        "prompt": "the product on marble",
        "image_urls": ["red.png", data_uri, "https://example.test/public.png"],
        "style_images": [{"url": str(refs / "green.jpg"), "strength": 0.4}],
    }
    body, resolved = resolver.resolve_request(MODEL, params)
    assert [r.how for r in resolved] == ["uploaded", "cached", "kept", "uploaded"]
    assert body["image_urls"][2] == "https://example.test/public.png"
    assert body["image_urls"][0] == body["image_urls"][1]  # the data URI is the same bytes
    assert params["image_urls"][0] == "red.png"  # the caller's request is not changed
    job = client.submit(MODEL, body)
    inputs = emulator.job(job.job_id)["inputs"]
    assert [(i["field"], i["kind"], i["sha256"]) for i in inputs] == [
        ("image_urls[0]", "asset", sha(RED)),
        ("image_urls[1]", "asset", sha(RED)),
        ("image_urls[2]", "url", sha(b"https://example.test/public.png")),
        ("style_images[0].url", "asset", sha(GREEN)),
    ]
    assert emulator.stats()["uploads"] == 2 and emulator.stats()["duplicate_uploads"] == 0


def test_zero_data_retention_inlines_files_and_uploads_nothing(
    emulator: EmulatorHandle, client: KreaClient, refs: Path
) -> None:
    """With ZDR, files become data: URIs, nothing is uploaded, and URLs are refused."""
    resolver = ReferenceResolver(client, zero_data_retention=True)
    inlined = resolver.resolve(str(refs / "green.jpg"))
    assert inlined.how == "inlined"
    assert inlined.value == "data:image/jpeg;base64," + base64.b64encode(GREEN).decode()
    with pytest.raises(ImageReferenceError, match="only data: URIs"):
        resolver.resolve("https://example.test/a.png")
    assert emulator.stats()["uploads"] == 0


def test_bad_references_are_clear_errors_before_any_upload(
    emulator: EmulatorHandle, client: KreaClient, refs: Path
) -> None:
    """Missing files, wrong types, corrupt images and oversize files name the problem."""
    (refs / "notes.txt").write_text("not an image")
    (refs / "broken.png").write_bytes(RED[:40])  # a PNG signature, then a truncated file
    with (refs / "huge.png").open("wb") as handle:
        handle.write(RED[:16])
        handle.truncate(MAX_UPLOAD_BYTES + 1)
    resolver = ReferenceResolver(client, base_dir=refs)
    cases = {
        "missing.png": "no such file",
        "notes.txt": "allowed types: JPEG, PNG, WebP",
        "broken.png": "Pillow cannot read it",
        "huge.png": "75 MB",
        "data:image/png;base64,@@@": "base64",
    }
    for reference, needle in cases.items():
        with pytest.raises(ImageReferenceError) as caught:
            resolver.resolve(reference)
        assert needle in str(caught.value), reference
    with pytest.raises(ImageReferenceError, match=r"image_urls\[0\]: no such file"):
        resolver.resolve_request(MODEL, {"prompt": "p", "image_urls": ["missing.png"]})
    assert emulator.stats()["uploads"] == 0


def test_reference_kinds_and_image_fields() -> None:
    """References are classified by scheme; image fields come from the catalog."""
    kinds = {
        "https://x.test/a.png": "url",
        "http://127.0.0.1:9/a.png": "url",
        "data:image/png;base64,AAAA": "data",
        "refs/a.png": "local",
        "file:///tmp/a.png": "local",
        "C:\\refs\\a.png": "local",
        "s3://bucket/a.png": "remote",
    }
    assert {ref: reference_kind(ref) for ref in kinds} == kinds
    assert image_fields(MODEL) == ("image_urls[]", "style_images[].url")
    with pytest.raises(ImageReferenceError, match="non-empty"):
        reference_kind("  ")


def test_an_s3_reference_is_read_through_upath(
    s3_path: Any, s3_storage_options: dict[str, Any], emulator: EmulatorHandle, client: KreaClient
) -> None:
    """An s3:// reference (moto server) is read through universal-pathlib and uploaded once."""
    (s3_path / "refs" / "red.png").write_bytes(RED)
    uri = str(s3_path / "refs" / "red.png")
    loaded = load_reference(uri, storage_options=s3_storage_options)
    assert (loaded.sha256, loaded.mime_type, loaded.filename) == (sha(RED), "image/png", "red.png")
    resolver = ReferenceResolver(client, storage_options=s3_storage_options)
    assert resolver.resolve(uri).how == "uploaded"
    assert resolver.resolve(uri).how == "cached"
    with pytest.raises(ImageReferenceError, match="no such file"):
        resolver.resolve(str(s3_path / "refs" / "missing.png"))
    assert emulator.stats()["uploads"] == 1


def test_an_upload_whose_answer_is_lost_is_found_not_resent(
    emulator: EmulatorHandle, client: KreaClient, refs: Path
) -> None:
    """The emulator stores the file and drops the answer: the client finds it in GET /assets."""
    emulator.configure(upload_accept_then_drop_rate=1.0)
    resolved = ReferenceResolver(client).resolve(str(refs / "red.png"))
    assert resolved.how == "uploaded"
    assert client.stats.ambiguous_uploads == 1 and client.stats.uploads_reconciled == 1
    listed = client.list_assets().items
    assert [asset.image_url for asset in listed] == [resolved.value]
    assert emulator.stats()["uploads"] == 1


def test_zero_data_retention_end_to_end(
    emulator: EmulatorHandle, client: KreaClient, refs: Path
) -> None:
    """A ZDR request built by the resolver is accepted by the emulator with data: inputs."""
    resolver = ReferenceResolver(client, zero_data_retention=True, base_dir=refs)
    body, _ = resolver.resolve_request(MODEL, {"prompt": "p", "image_urls": ["green.jpg"]})
    job = client.submit(MODEL, body, zero_data_retention=True)
    inputs = emulator.job(job.job_id)["inputs"]
    assert [(i["kind"], i["sha256"]) for i in inputs] == [("data", sha(GREEN))]
    assert emulator.stats()["uploads"] == 0


def test_search_assets_reuses_an_upload_the_cache_does_not_know(
    emulator: EmulatorHandle, client: KreaClient, refs: Path
) -> None:
    """With an empty cache, search_assets finds the earlier upload by its hash: no new upload."""
    first = ReferenceResolver(client).resolve(str(refs / "red.png"))
    cold = ReferenceResolver(client, MemoryUploadCache(), search_assets=True)
    found = cold.resolve(str(refs / "red-copy.png"))
    assert (found.how, found.value, found.asset_id) == ("found", first.value, first.asset_id)
    assert cold.cache.get(sha(RED)) == first.value
    assert emulator.stats()["uploads"] == 1


def test_async_resolver_uploads_concurrent_copies_once(
    emulator: EmulatorHandle, refs: Path
) -> None:
    """Concurrent async resolves of the same bytes wait for one another: one upload."""

    async def scenario() -> list[str]:
        async with AsyncKreaClient(emulator.token, base_url=emulator.base_url, timeout=5) as krea:
            resolver = AsyncReferenceResolver(krea, base_dir=refs)
            names = ["red.png", "red-copy.png"] * 3
            results = await asyncio.gather(*(resolver.resolve(name) for name in names))
            body, _ = await resolver.resolve_request(MODEL, {"prompt": "p", "image_urls": names})
            assert set(body["image_urls"]) == {results[0].value}
            return sorted(r.how for r in results)

    # run_coroutine, not asyncio.run: a Playwright test earlier in this worker may have left an
    # event loop running on this thread.
    assert run_coroutine(scenario()) == ["cached"] * 5 + ["uploaded"]
    assert emulator.stats()["uploads_by_sha256"] == {sha(RED): 1}


@pytest.fixture(params=["memory", "ledger"])
def upload_cache(request: pytest.FixtureRequest, tmp_path: Path) -> UploadCache:
    if request.param == "memory":
        return MemoryUploadCache()
    from krea_dagster.engine.ledger import Ledger

    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}").upload_cache("acct")


def test_only_a_gone_upload_is_forgotten_and_a_newer_upload_of_the_bytes_is_kept(
    emulator: EmulatorHandle, client: KreaClient, refs: Path, upload_cache: UploadCache
) -> None:
    """``forget_gone_uploads`` drops a cache entry only when Krea answers 404 for its asset, and
    an entry another worker already replaced (same bytes, new URL) is never dropped."""
    red = ReferenceResolver(client, upload_cache).resolve(str(refs / "red.png"))
    request = {"prompt": "p", "image_urls": [red.value]}

    async def gone() -> list[Any]:
        async with AsyncKreaClient(emulator.token, base_url=emulator.base_url) as aclient:
            return await forget_gone_uploads(aclient, upload_cache, request)

    assert run_coroutine(gone()) == []  # the asset is there: the refusal is not the cache's
    assert upload_cache.get(sha(RED)) == red.value
    assert red.asset_id is not None and client.delete_asset(red.asset_id)
    assert [upload.url for upload in run_coroutine(gone())] == [red.value]
    assert upload_cache.get(sha(RED)) is None
    again = ReferenceResolver(client, upload_cache).resolve(str(refs / "red-copy.png"))
    assert again.how == "uploaded" and again.value != red.value
    assert upload_cache.forget(sha(RED), red.value) is False  # a stale forget keeps the new one
    assert upload_cache.get(sha(RED)) == again.value
    assert emulator.stats()["uploads"] == 2
