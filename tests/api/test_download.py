"""download(): streamed, hashed, verified, atomic; no token off the API's origin."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from krea_dagster.api import DownloadError, DownloadSettings
from krea_dagster.api.config import DEFAULT_DOWNLOAD_READ_TIMEOUT

from .support import TEST_BASE_URL, TEST_CDN_URL, FakeClock, FakeKrea, make_client, png_bytes

RESULT_PATH = "/results/abc.png"
RESULT_URL = f"{TEST_CDN_URL}{RESULT_PATH}?X-Signature=cdn-signed-secret"
PNG = png_bytes(64, 48)


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_png_download_is_verified_hashed_and_renamed(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """A real PNG is written whole with its sha256, size, type and dimensions."""
    fake.on(
        "GET", RESULT_PATH, httpx.Response(200, content=PNG, headers={"Content-Type": "image/png"})
    )
    dest = tmp_path / "out" / "image.png"
    with make_client(fake, clock) as krea:
        result = krea.download(RESULT_URL, dest)
    assert result.path == dest
    assert dest.read_bytes() == PNG
    assert result.size == len(PNG)
    assert result.sha256 == hashlib.sha256(PNG).hexdigest()
    assert (result.content_type, result.width, result.height) == ("image/png", 64, 48)
    assert leftovers(dest.parent) == ["image.png"]


def test_directory_destination_names_the_file_by_content(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """Into an existing directory the file is named <sha256>.<ext>."""
    fake.on("GET", RESULT_PATH, httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        result = krea.download(RESULT_URL, tmp_path)
    assert result.path == tmp_path / f"{hashlib.sha256(PNG).hexdigest()}.png"
    assert leftovers(tmp_path) == [result.path.name]


@pytest.mark.parametrize(
    ("fmt", "ext", "mime"), [("JPEG", "jpg", "image/jpeg"), ("WEBP", "webp", "image/webp")]
)
def test_jpeg_and_webp_are_accepted(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path, fmt: str, ext: str, mime: str
) -> None:
    """JPEG and WebP results verify and get their own extension and media type."""
    body = png_bytes(32, 32, fmt=fmt)
    fake.on("GET", RESULT_PATH, httpx.Response(200, content=body, headers={"Content-Type": mime}))
    with make_client(fake, clock) as krea:
        result = krea.download(RESULT_URL, tmp_path)
    assert result.path.suffix == f".{ext}"
    assert (result.content_type, result.width) == (mime, 32)


def test_cdn_download_carries_no_token(fake: FakeKrea, clock: FakeClock, tmp_path: Path) -> None:
    """A result on another origin (the CDN) is fetched without the Authorization header."""
    fake.on("GET", RESULT_PATH, httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        krea.download(RESULT_URL, tmp_path)
    assert "Authorization" not in fake.requests[0].headers


def test_same_origin_download_may_carry_the_token(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """A result served by the API's own origin gets the bearer token."""
    fake.on("GET", "/assets/file.png", httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        krea.download(f"{TEST_BASE_URL}/assets/file.png", tmp_path)
    assert fake.requests[0].headers["Authorization"].startswith("Bearer ")


def test_redirect_off_origin_drops_the_token(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """A same-origin URL redirecting to a CDN sends the token to the API only, never the CDN."""
    fake.on("GET", "/assets/file.png", httpx.Response(302, headers={"Location": RESULT_URL}))
    fake.on("GET", RESULT_PATH, httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        result = krea.download(f"{TEST_BASE_URL}/assets/file.png", tmp_path)
    assert [r.url.host for r in fake.requests] == ["api.krea.test", "cdn.krea-results.test"]
    assert "Authorization" in fake.requests[0].headers
    assert "Authorization" not in fake.requests[1].headers
    assert result.path.read_bytes() == PNG


def test_cdn_redirect_to_a_lookalike_host_gets_no_token(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """A redirect to a host that merely resembles the API (other port, subdomain) gets no token."""
    fake.on(
        "GET",
        RESULT_PATH,
        httpx.Response(301, headers={"Location": "https://api.krea.test:8443/x.png"}),
    )
    fake.on(
        "GET",
        "/x.png",
        httpx.Response(302, headers={"Location": "https://evil.api.krea.test/y.png"}),
    )
    fake.on("GET", "/y.png", httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        krea.download(RESULT_URL, tmp_path)
    assert len(fake.requests) == 3
    assert all("Authorization" not in r.headers for r in fake.requests)


def test_too_many_redirects(fake: FakeKrea, clock: FakeClock, tmp_path: Path) -> None:
    """A redirect loop ends in DownloadError."""
    fake.on("GET", RESULT_PATH, httpx.Response(302, headers={"Location": RESULT_URL}))
    with make_client(fake, clock) as krea, pytest.raises(DownloadError, match="redirects"):
        krea.download(RESULT_URL, tmp_path)
    assert leftovers(tmp_path) == []


def test_truncated_body_is_retried_then_rejected(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """A body shorter than Content-Length is retried as a dropped connection, then refused."""
    short = httpx.Response(200, content=PNG[:100], headers={"Content-Length": str(len(PNG))})
    fake.on("GET", RESULT_PATH, short)
    with (
        make_client(fake, clock, max_retries=2) as krea,
        pytest.raises(DownloadError, match="truncated"),
    ):
        krea.download(RESULT_URL, tmp_path / "x.png")
    assert fake.count("GET", RESULT_PATH) == 3
    assert leftovers(tmp_path) == []


def test_truncation_then_success(fake: FakeKrea, clock: FakeClock, tmp_path: Path) -> None:
    """A truncated first attempt is retried and the second, complete one is kept."""
    short = httpx.Response(200, content=PNG[:100], headers={"Content-Length": str(len(PNG))})
    fake.on("GET", RESULT_PATH, short, httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        result = krea.download(RESULT_URL, tmp_path / "x.png")
    assert result.size == len(PNG)
    assert leftovers(tmp_path) == ["x.png"]


def test_declared_oversize_is_refused_before_streaming(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """A Content-Length above the cap is refused without writing anything."""
    fake.on("GET", RESULT_PATH, httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea, pytest.raises(DownloadError, match="cap"):
        krea.download(RESULT_URL, tmp_path, max_bytes=100)
    assert fake.count("GET", RESULT_PATH) == 1
    assert leftovers(tmp_path) == []


def test_undeclared_oversize_is_cut_off_while_streaming(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """Without Content-Length, the cap is enforced on the bytes as they arrive."""

    def chunks():  # type: ignore[no-untyped-def]
        yield PNG
        yield b"\0" * 5000

    fake.on("GET", RESULT_PATH, lambda request: httpx.Response(200, content=chunks()))
    settings = DownloadSettings(max_bytes=len(PNG) + 100, chunk_size=1024)
    with (
        make_client(fake, clock, download_settings=settings) as krea,
        pytest.raises(DownloadError, match="cap"),
    ):
        krea.download(RESULT_URL, tmp_path)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<html>Access denied</html>", "not a PNG, JPEG or WebP"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "Pillow cannot read"),
        (b"", "not a PNG, JPEG or WebP"),
    ],
    ids=["html", "corrupt-png", "empty"],
)
def test_not_an_image_is_refused(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path, body: bytes, match: str
) -> None:
    """Bodies that are not a readable PNG/JPEG/WebP never land at the destination."""
    fake.on(
        "GET", RESULT_PATH, httpx.Response(200, content=body, headers={"Content-Type": "image/png"})
    )
    with make_client(fake, clock) as krea, pytest.raises(DownloadError, match=match):
        krea.download(RESULT_URL, tmp_path / "x.png")
    assert fake.count("GET", RESULT_PATH) == 1
    assert leftovers(tmp_path) == []


def test_verify_image_false_keeps_other_media(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """verify_image=False downloads non-image results (video), named from Content-Type."""
    fake.on(
        "GET",
        RESULT_PATH,
        httpx.Response(200, content=b"\0\0\0\x18ftypmp42", headers={"Content-Type": "video/mp4"}),
    )
    with make_client(fake, clock) as krea:
        result = krea.download(RESULT_URL, tmp_path, verify_image=False)
    assert result.path.suffix == ".mp4"
    assert (result.width, result.height) == (None, None)


def test_transient_status_is_retried(fake: FakeKrea, clock: FakeClock, tmp_path: Path) -> None:
    """A 503 from the CDN is retried and the download completes."""
    fake.on("GET", RESULT_PATH, httpx.Response(503), httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        krea.download(RESULT_URL, tmp_path)
    assert fake.count("GET", RESULT_PATH) == 2


def test_transport_error_is_retried(fake: FakeKrea, clock: FakeClock, tmp_path: Path) -> None:
    """A read timeout while downloading is retried."""
    fake.on("GET", RESULT_PATH, httpx.ReadTimeout, httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        krea.download(RESULT_URL, tmp_path)
    assert fake.count("GET", RESULT_PATH) == 2


def test_missing_result_is_a_download_error(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """A 404 (expired or wrong URL) is final and names the status, not the signed query."""
    fake.on("GET", RESULT_PATH, httpx.Response(404))
    with make_client(fake, clock) as krea, pytest.raises(DownloadError) as caught:
        krea.download(RESULT_URL, tmp_path)
    assert caught.value.status_code == 404
    assert "cdn-signed-secret" not in str(caught.value)
    assert caught.value.url == f"{TEST_CDN_URL}{RESULT_PATH}"


def test_downloads_use_the_longer_per_chunk_read_timeout(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """Download requests carry the download read timeout and ask for an unencoded body."""
    fake.on("GET", RESULT_PATH, httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        krea.download(RESULT_URL, tmp_path)
    request = fake.requests[0]
    assert request.extensions["timeout"]["read"] == DEFAULT_DOWNLOAD_READ_TIMEOUT
    assert request.extensions["timeout"]["connect"] == 5.0
    assert request.headers["Accept-Encoding"] == "identity"


def test_download_stats_are_counted(fake: FakeKrea, clock: FakeClock, tmp_path: Path) -> None:
    """Downloads count under their own template in client.stats."""
    fake.on("GET", RESULT_PATH, httpx.Response(200, content=PNG))
    with make_client(fake, clock) as krea:
        krea.download(RESULT_URL, tmp_path)
        assert krea.stats.requests == {"GET (result download)": 1}
