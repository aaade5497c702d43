"""Video results: structure verified on download, poster frame for Motion-JPEG, emulator MP4."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from krea_dagster.api import DownloadError, KreaClient
from krea_dagster.api.video import VideoError, inspect_video, poster_frame
from krea_dagster.emulator.testing import run_emulator

from .support import TEST_CDN_URL, FakeClock, FakeKrea, make_client

# One second of ffmpeg's test pattern, 64x36, H.264, moov before mdat (made with ffmpeg).
H264 = (Path(__file__).parent / "data" / "h264-64x36.mp4").read_bytes()
VIDEO_PATH = "/results/clip.mp4"


def test_a_real_h264_file_is_read_from_its_boxes(tmp_path: Path) -> None:
    """Size, length, codec and frames come from the boxes; no poster without a decoder."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(H264)
    info = inspect_video(path)
    assert (info.width, info.height, info.frames, info.codec) == (64, 36, 5, "avc1")
    assert info.duration_seconds == pytest.approx(1.0)
    assert poster_frame(path, info) is None


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (H264[:-300], "truncated"),
        (H264[:32], "no moov box"),
        (b"\x00\x00\x00\x08free" * 4, "not an MP4/MOV file"),
    ],
    ids=["cut-short", "header-only", "not-mp4"],
)
def test_malformed_videos_are_refused(tmp_path: Path, content: bytes, needle: str) -> None:
    """A cut-off or index-less file is a VideoError naming what is wrong."""
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=needle):
        inspect_video(path)


def test_download_verifies_a_video_and_names_it_mp4(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """download() with verification accepts a well-formed MP4 and reports its dimensions."""
    fake.on(
        "GET", VIDEO_PATH, httpx.Response(200, content=H264, headers={"Content-Type": "video/mp4"})
    )
    with make_client(fake, clock) as krea:
        result = krea.download(f"{TEST_CDN_URL}{VIDEO_PATH}", tmp_path)
    assert result.path.name == f"{hashlib.sha256(H264).hexdigest()}.mp4"
    assert (result.content_type, result.width, result.height) == ("video/mp4", 64, 36)


def test_download_refuses_a_truncated_video_and_writes_nothing(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """A video whose boxes run past the end is a DownloadError; no file is left behind."""
    fake.on(
        "GET",
        VIDEO_PATH,
        httpx.Response(200, content=H264[:-300], headers={"Content-Type": "video/mp4"}),
    )
    with make_client(fake, clock) as krea, pytest.raises(DownloadError, match="well-formed video"):
        krea.download(f"{TEST_CDN_URL}{VIDEO_PATH}", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_emulator_video_downloads_verified_with_its_poster_frame(tmp_path: Path) -> None:
    """The emulator's MP4 passes verification and its first frame is the served poster."""
    with (
        run_emulator(time_scale=0.0005, seed=1) as emulator,
        KreaClient(emulator.token, base_url=emulator.base_url, timeout=5.0) as krea,
    ):
        job = krea.submit("google/veo-3", {"prompt": "waves", "duration": 4}, kind="video")
        done = krea.wait(job.job_id, timeout=10, poll_interval=0.02)
        video = krea.download(done.result_urls[0], tmp_path)
        poster_url = emulator.job(job.job_id)["poster_url"]
        served_poster = httpx.get(poster_url, timeout=5).content
    info = inspect_video(video.path)
    assert info.codec == "mp4v/jpeg" and info.frames == 8 and info.duration_seconds == 2.0
    assert (video.width, video.height) == (info.width, info.height)
    poster = poster_frame(video.path, info)
    assert poster == served_poster
    with Image.open(io.BytesIO(poster)) as frame:
        assert frame.size == (info.width, info.height)
