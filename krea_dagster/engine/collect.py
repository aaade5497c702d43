"""Collect a batch's results: poll what is pending, then download, verify and store each image.

Polling and downloading overlap: an image is fetched as soon as a poll sees its job completed,
so the last image lands moments after Krea finishes the last job. Polls go through the
client's ``poll_many`` (one ``GET /jobs`` page for up to 1000 pending jobs), never one request
per job per round, and no more rounds than the batch needs: while many jobs are pending the wait
between rounds grows with the time they still need (see ``REMAINING_FRACTION``), so a batch
costs about one request per image, POST included. Downloads stream to a local staging file
(hashed while streaming, never held in memory), are decoded and size-checked, and are then
moved into the content-addressed store in one step; the ledger records the URI, hash and size.
Memory stays flat however large the batch: at most ``max_downloads`` files are in flight and
only a few dozen thumbnails are kept.
"""

import asyncio
import base64
import io
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from krea_dagster.api import AsyncKreaClient, DownloadError, JobStatus, KreaError
from krea_dagster.api.video import VideoError, inspect_video, poster_frame
from krea_dagster.engine.cancel import cancel_jobs
from krea_dagster.engine.crashpoints import crash_point
from krea_dagster.engine.errors import ErrorCode
from krea_dagster.engine.ledger import JobUpdate, Ledger, Submission
from krea_dagster.engine.prompts import expected_aspect_ratio, expected_size
from krea_dagster.engine.store import ImageStore

__all__ = [
    "BatchCollector",
    "CollectReport",
    "ImageCheckError",
    "Thumbnail",
    "thumbnail_data_uri",
    "verify_image",
    "verify_result",
    "verify_video",
]

THUMBNAIL_PIXELS = 128
ASPECT_TOLERANCE = 0.02
PROGRESS_EVERY_SECONDS = 5.0
# A batch at the account's concurrency finishes at a steady rate, and between two polls only the
# jobs that finished matter: polling all of them every poll_interval while hundreds are still
# pending buys nothing but requests. So the wait before the next poll is this fraction of the
# time the pending jobs still need at the completion rate seen so far (before any completion,
# of the time already waited, while jobs are backlogged), never below poll_interval and never
# above MAX_WAIT_FACTOR poll intervals (the rate can change: concurrency raised, other work
# done). As the batch drains the wait shrinks back to poll_interval.
REMAINING_FRACTION = 0.5
MAX_WAIT_FACTOR = 30


@dataclass(frozen=True)
class Thumbnail:
    """A small JPEG of a stored image, for the gallery in the asset's metadata."""

    prompt_key: str
    caption: str
    data_uri: str


@dataclass
class CollectReport:
    polls: int = 0
    downloaded: int = 0
    already_stored: int = 0
    image_errors: int = 0
    timed_out: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    thumbnails: list[Thumbnail] = field(default_factory=list)
    elapsed: float = 0.0
    #: Jobs that failed transiently and were submitted again in this run.
    resubmitted: int = 0

    def merge(self, other: "CollectReport", max_thumbnails: int) -> None:
        """Add another collection pass of the same run to this report."""
        self.polls += other.polls
        self.downloaded += other.downloaded
        self.already_stored += other.already_stored
        self.image_errors += other.image_errors
        self.timed_out = other.timed_out
        self.cancelled.extend(other.cancelled)
        self.thumbnails.extend(other.thumbnails[: max_thumbnails - len(self.thumbnails)])
        self.elapsed += other.elapsed
        self.resubmitted += other.resubmitted


class ImageCheckError(ValueError):
    """A downloaded file is not the image that was asked for."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def verify_result(
    path: Path, request: dict[str, Any], *, thumbnail: bool
) -> tuple[int, int, str | None]:
    """Verify a downloaded result (an image, or a video of a video step); size and thumbnail."""
    with Path(path).open("rb") as handle:
        head = handle.read(12)
    if head[4:8] == b"ftyp":
        return verify_video(path, thumbnail=thumbnail)
    return verify_image(path, request, thumbnail=thumbnail)


def verify_video(path: Path, *, thumbnail: bool) -> tuple[int, int, str | None]:
    """Read the video's boxes (size, a video track); its first frame as the thumbnail.

    The frame size of a video is the model's to choose (requests give an aspect ratio or a
    resolution, not pixels), so it is recorded, not checked. A poster needs the first frame
    as a picture: Motion-JPEG frames are; other codecs get no thumbnail (no decoder here).
    """
    try:
        info = inspect_video(path)
    except VideoError as error:
        raise ImageCheckError(
            ErrorCode.INVALID_VIDEO, f"the result is not a usable video: {error}"
        ) from None
    preview = None
    if thumbnail:
        frame = poster_frame(path, info)
        if frame is not None:
            with Image.open(io.BytesIO(frame)) as image:
                preview = thumbnail_data_uri(image)
    return info.width, info.height, preview


def verify_image(
    path: Path, request: dict[str, Any], *, thumbnail: bool
) -> tuple[int, int, str | None]:
    """Decode the whole image, check its size against the request; optional thumbnail data URI."""
    try:
        with Image.open(path) as image:
            image.load()
            width, height = image.size
            preview = thumbnail_data_uri(image) if thumbnail else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageCheckError(
            ErrorCode.INVALID_IMAGE, f"the result does not decode as an image: {error}"
        ) from None
    wanted = expected_size(request)
    if wanted is not None and (width, height) != wanted:
        raise ImageCheckError(
            ErrorCode.WRONG_SIZE,
            f"the image is {width}x{height}, the request asked for {wanted[0]}x{wanted[1]}",
        )
    ratio = expected_aspect_ratio(request)
    if (
        wanted is None
        and ratio is not None
        and not math.isclose(width / height, ratio, rel_tol=ASPECT_TOLERANCE)
    ):
        raise ImageCheckError(
            ErrorCode.WRONG_ASPECT_RATIO,
            f"the image is {width}x{height} ({width / height:.3f}), the request asked for "
            f"{request.get('aspect_ratio')} ({ratio:.3f})",
        )
    return width, height, preview


def thumbnail_data_uri(image: Image.Image, size: int = THUMBNAIL_PIXELS) -> str:
    """A JPEG thumbnail of at most ``size`` pixels a side as a data URI (about 3-5 KB at 128)."""
    small = image.convert("RGB")
    small.thumbnail((size, size))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=60, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


class BatchCollector:
    """Waits for a batch generation's jobs and stores their images."""

    def __init__(
        self,
        client: AsyncKreaClient,
        ledger: Ledger,
        store: ImageStore,
        *,
        prefix: str,
        batch: str,
        poll_interval: float,
        poll_timeout: float,
        max_downloads: int = 8,
        thumbnails: int = 24,
        cancel_on_timeout: bool = False,
        log: logging.Logger | Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.store = store
        self.prefix = prefix
        self.batch = batch
        self.poll_interval = poll_interval
        self.poll_timeout = poll_timeout
        self.max_downloads = max(1, max_downloads)
        self.thumbnail_budget = thumbnails
        self.cancel_on_timeout = cancel_on_timeout
        self.log = log or logging.getLogger("krea_dagster")
        self.clock = clock
        self.report = CollectReport()
        self._captions: dict[str, str] = {}

    async def run(self, rows: Iterable[Submission], captions: dict[str, str]) -> CollectReport:
        """Poll pending rows and store every completed row's image; returns what happened."""
        started = self.clock()
        self._captions = captions
        await asyncio.to_thread(self.store.sweep_staging)
        rows = list(rows)
        self._downloads: asyncio.Queue[Submission | None] = asyncio.Queue()
        workers = [asyncio.create_task(self._download_worker()) for _ in range(self.max_downloads)]
        for row in rows:
            if row.state == JobStatus.COMPLETED:
                await self._downloads.put(row)
        try:
            await self._poll(row for row in rows if row.is_pending_at_krea)
        finally:
            for _ in workers:
                await self._downloads.put(None)
            await asyncio.gather(*workers, return_exceptions=False)
        self.report.elapsed = self.clock() - started
        return self.report

    async def _poll(self, rows: Iterable[Submission]) -> None:
        pending = {row.job_id: row for row in rows if row.job_id}
        deadline = self.clock() + self.poll_timeout
        last_progress = self.clock()
        first_poll: float | None = None
        finished = 0  # jobs seen turning terminal after the first poll
        while pending:
            created = [row.krea_created_at for row in pending.values() if row.krea_created_at]
            jobs = await self.client.poll_many(
                list(pending), created_after=min(created) if created else None
            )
            self.report.polls += 1
            before = len(pending)
            changed = await asyncio.to_thread(
                self.ledger.update_jobs, [JobUpdate.from_job(job) for job in jobs]
            )
            for row in changed:
                if row.is_terminal:
                    pending.pop(row.job_id or "", None)
                if row.state == JobStatus.COMPLETED:
                    await self._downloads.put(row)
            for job in jobs:
                if job.is_terminal:
                    pending.pop(job.job_id, None)
            if not pending:
                break
            now = self.clock()
            if first_poll is None:
                first_poll = now
            else:
                finished += before - len(pending)
            if now - last_progress >= PROGRESS_EVERY_SECONDS:
                self.log.info(
                    f"{self.batch}: {len(pending)} job(s) still rendering, "
                    f"{self.report.downloaded} image(s) stored"
                )
                last_progress = now
            if now >= deadline:
                await self._timed_out(list(pending))
                return
            backlogged = sum(1 for job in jobs if job.status == JobStatus.BACKLOGGED)
            wait = self._next_wait(len(pending), finished, now - first_poll, backlogged)
            await asyncio.sleep(min(wait, max(deadline - now, 0)))

    def _next_wait(self, pending: int, finished: int, elapsed: float, backlogged: int) -> float:
        """Seconds until the next poll (see ``REMAINING_FRACTION``)."""
        if finished:
            guess = REMAINING_FRACTION * elapsed * pending / finished
        elif backlogged:
            guess = REMAINING_FRACTION * elapsed
        else:
            guess = 0.0  # every job is running: the batch may end any moment
        return min(max(self.poll_interval, guess), MAX_WAIT_FACTOR * self.poll_interval)

    async def _timed_out(self, job_ids: list[str]) -> None:
        self.report.timed_out = job_ids
        if not self.cancel_on_timeout:
            self.log.warning(
                f"{self.batch}: {len(job_ids)} job(s) still pending after poll_timeout "
                f"({self.poll_timeout:.0f} s); they stay recorded and a later run collects them"
            )
            return
        cancelled = await cancel_jobs(self.client, self.ledger, job_ids, log=self.log)
        self.report.cancelled.extend(job.job_id for job in cancelled)
        self.log.warning(
            f"{self.batch}: cancelled {len(self.report.cancelled)} job(s) after poll_timeout"
        )

    async def store_rows(
        self, rows: Iterable[Submission], *, deadline: float | None = None
    ) -> CollectReport:
        """Download, verify and store the images of these completed rows; no polling.

        What the completion sensor calls for the jobs it just saw complete, so a deferred
        batch's images are stored while the rest of it renders. At most ``max_downloads`` at
        once; none is started once ``deadline`` (on ``clock``) has passed, and the rows left are
        stored by a later call or the images run.
        """
        started = self.clock()
        queue: asyncio.Queue[Submission] = asyncio.Queue()
        for row in rows:
            if row.state == JobStatus.COMPLETED:
                queue.put_nowait(row)

        async def worker() -> None:
            while not queue.empty() and (deadline is None or self.clock() < deadline):
                await self._store_guarded(queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(min(self.max_downloads, queue.qsize()))))
        self.report.elapsed = self.clock() - started
        return self.report

    async def _download_worker(self) -> None:
        while True:
            row = await self._downloads.get()
            if row is None:
                return
            await self._store_guarded(row)

    async def _store_guarded(self, row: Submission) -> None:
        try:
            await self._store_one(row)
        except (KreaError, OSError) as error:
            # One bad download or store write is recorded on its row; the batch goes on.
            await self._image_error(row, ErrorCode.STORE_FAILED, f"{type(error).__name__}: {error}")

    async def _store_one(self, row: Submission) -> None:
        if row.image_uri is not None:
            stored = await asyncio.to_thread(self.store.exists, row.image_uri)
            if stored:
                self.report.already_stored += 1
                return
        url = row.result_url
        if url is None:
            job = await self.client.get_job(row.job_id or "")
            url = job.result_urls[0] if job.result_urls else None
        if url is None:
            await self._image_error(
                row, ErrorCode.NO_RESULT, "Krea reported the job completed without a result URL"
            )
            return
        staging = await asyncio.to_thread(self.store.staging_dir)
        try:
            # One staging file per download: two prompts may render identical bytes, and two
            # workers of one batch may download the same submission into a shared staging dir.
            name = f"{row.submission_id}.{uuid.uuid4().hex[:12]}.part"
            downloaded = await self.client.download(url, staging / name)
        except DownloadError as error:
            await self._image_error(row, ErrorCode.DOWNLOAD_FAILED, str(error))
            return
        crash_point("collect.after_download")
        want_thumbnail = len(self.report.thumbnails) < self.thumbnail_budget
        try:
            width, height, preview = await asyncio.to_thread(
                verify_result, downloaded.path, row.request, thumbnail=want_thumbnail
            )
        except ImageCheckError as error:
            Path(downloaded.path).unlink(missing_ok=True)
            await self._image_error(row, error.code, str(error))
            return
        uri = await asyncio.to_thread(
            self.store.put,
            self.prefix,
            Path(downloaded.path),
            downloaded.sha256,
            downloaded.content_type or "image/png",
        )
        await asyncio.to_thread(
            self.ledger.record_image,
            row.submission_id,
            uri=uri,
            sha256=downloaded.sha256,
            width=width,
            height=height,
            size_bytes=downloaded.size,
        )
        self.report.downloaded += 1
        if preview is not None and len(self.report.thumbnails) < self.thumbnail_budget:
            caption = self._captions.get(row.prompt_key, row.prompt_key)
            self.report.thumbnails.append(Thumbnail(row.prompt_key, caption, preview))

    async def _image_error(self, row: Submission, code: str, message: str) -> None:
        recorded = await asyncio.to_thread(
            self.ledger.record_image_error,
            row.submission_id,
            seen_uri=row.image_uri,
            code=code,
            message=message,
        )
        if not recorded:
            # Another worker stored this image while ours failed; its record stands.
            self.report.already_stored += 1
            return
        self.report.image_errors += 1
        self.log.warning(f"job {row.job_id} (prompt {row.prompt_key}): {message}")
