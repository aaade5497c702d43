"""Result images: the size rule, determinism, speed, and the CDN origin without auth."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from conftest import TEST_MODEL_PATH, make_body
from PIL import Image

from krea_dagster.emulator.catalog import load_models
from krea_dagster.emulator.images import MAX_PIXELS, RenderCache, output_size, render_png
from krea_dagster.emulator.testing import EmulatorHandle


@pytest.mark.parametrize(
    ("model", "body", "size"),
    [
        ("image/openai/gpt-image-2", {"width": 800.4, "height": 600.6}, (800, 601)),
        ("image/openai/gpt-image-2", {"aspect_ratio": "16:9", "resolution": "2K"}, (2048, 1152)),
        ("image/openai/gpt-image-2", {"aspect_ratio": "9:16"}, (576, 1024)),
        ("image/google/nano-banana-2", {"aspect_ratio": "1:8"}, (128, 1024)),
        ("image/google/nano-banana-pro", {"resolution": "4K"}, (4096, 4096)),
        ("image/bfl/flux-1-dev", {"width": 768}, (768, 1024)),
        ("image/bfl/flux-1-dev", {}, (1024, 1024)),
        ("image/openai/gpt-image-2", {}, (1024, 1024)),
        ("video/google/veo-3", {"aspect_ratio": "16:9", "resolution": "720p"}, (1280, 720)),
        ("enhance/topaz/generative-enhance", {"width": 32000, "height": 32000}, (8192, 8192)),
    ],
    ids=[
        "width-height-rounded",
        "ratio-2K",
        "ratio-default-1K",
        "tall-ratio",
        "resolution-only-square",
        "missing-height-uses-default",
        "model-defaults",
        "fallback-1024",
        "video-720p",
        "capped-to-max-pixels",
    ],
)
def test_output_size_rule(model: str, body: dict[str, Any], size: tuple[int, int]) -> None:
    """width/height, else aspect_ratio + resolution, else model defaults, else 1024x1024."""
    result = output_size(load_models()[model], body)
    assert result == size
    assert result[0] * result[1] <= MAX_PIXELS


def test_png_is_deterministic_and_differs_per_prompt() -> None:
    """Same (prompt, seed, size) gives the same bytes; another prompt another image."""
    first, again = render_png("a fox", 1, 256, 128), render_png("a fox", 1, 256, 128)
    other = render_png("a hen", 1, 256, 128)
    assert first == again != other
    with Image.open(io.BytesIO(first)) as image:
        assert image.format == "PNG" and image.size == (256, 128)


def test_a_1024_png_renders_in_a_few_milliseconds() -> None:
    """Rendering is fast enough for benchmarks that download thousands of images."""
    started = time.perf_counter()
    for index in range(20):
        render_png(f"prompt {index}", index, 1024, 1024)
    per_image_ms = (time.perf_counter() - started) / 20 * 1000
    assert per_image_ms < 50, per_image_ms


def test_render_cache_returns_the_same_bytes() -> None:
    """A cached render is served again without rendering."""
    cache = RenderCache()
    assert cache.png("x", 1, 64, 64) is cache.png("x", 1, 64, 64)


def test_cdn_serves_the_png_of_the_requested_size_without_auth(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """result.urls live on the CDN origin and download with no token, as image/png."""
    job_id = api.post(TEST_MODEL_PATH, json=make_body(width=640, height=512)).json()["job_id"]
    url = krea_emulator.wait_for_job(job_id)["result"]["urls"][0]
    assert url.startswith(krea_emulator.cdn_url) and url.endswith(".png")
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert int(response.headers["content-length"]) == len(response.content)
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.size == (640, 512)
    assert httpx.get(url).content == response.content
    assert krea_emulator.stats()["cdn_downloads"] == 2


def test_cdn_refuses_a_guessed_url(krea_emulator: EmulatorHandle, api: httpx.Client) -> None:
    """A result URL with the wrong random part is 404."""
    job_id = api.post(TEST_MODEL_PATH, json=make_body()).json()["job_id"]
    url = krea_emulator.wait_for_job(job_id)["result"]["urls"][0]
    assert httpx.get(url.rsplit("/", 1)[0] + "/0000000000000000.png").status_code == 404


def test_video_jobs_get_a_real_mp4_and_a_poster_frame(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """Video results are MP4 files (ftyp, mdat, moov) whose first frame is the .jpg poster."""
    response = api.post("/generate/video/google/veo-3", json={"prompt": "waves", "duration": 4})
    job = krea_emulator.wait_for_job(response.json()["job_id"])
    url = job["result"]["urls"][0]
    download = httpx.get(url)
    assert url.endswith(".mp4") and download.headers["content-type"] == "video/mp4"
    video = download.content
    assert video[4:8] == b"ftyp" and b"moov" in video and b"mp4v" in video
    poster = httpx.get(krea_emulator.job(job["job_id"])["poster_url"])
    assert poster.headers["content-type"] == "image/jpeg"
    assert poster.content in video  # byte for byte the first frame
    with Image.open(io.BytesIO(poster.content)) as frame:
        assert frame.format == "JPEG" and max(frame.size) <= 256
