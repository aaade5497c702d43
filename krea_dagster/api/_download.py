"""Safe, verifiable downloads of result files (shared by both clients).

A result is streamed into a temporary file next to its destination while it is hashed, its
length is checked against ``Content-Length``, its first bytes must be a PNG, JPEG or WebP
signature and Pillow must read its header and ``verify()`` it (a video result, MP4 or MOV, must
instead have a well-formed box structure with a video track: ``video.inspect_video``); only
then is it renamed into
place with ``os.replace``, so a destination holds a complete, verified file or nothing.
Redirects are followed by hand so each hop is judged on its own: the bearer token goes only to
the API's origin, never to a CDN or another host a redirect points at.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import httpx

from krea_dagster.api._core import Flow, Offload, RequestCore, Sleep, Stream, display_url
from krea_dagster.api.errors import APIConnectionError, APIStatusError, DownloadError, KreaError
from krea_dagster.api.models import DownloadedFile
from krea_dagster.api.retries import RequestKind, Verdict, decide

__all__: list[str] = []

logger = logging.getLogger("krea_dagster.api")

#: The path template downloads are counted under in ``client.stats``.
DOWNLOAD_TEMPLATE = "(result download)"

# Formats Krea returns for images, by signature; extension and media type of each.
_FORMATS = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
}
_EXTENSIONS_BY_TYPE = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
}


def sniff_format(head: bytes) -> str | None:
    """PNG, JPEG or WEBP from a file's first bytes, else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


class DownloadSink:
    """One attempt's bytes: a temp file next to the destination, hashed and counted as written."""

    def __init__(self, directory: Path, *, max_bytes: int, url: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.url = url
        self.temp_path: Path | None = None
        self.size = 0
        self.head = b""
        self.declared_length: int | None = None
        self.content_type = ""
        self.committed = False
        self._file: BinaryIO | None = None
        self._sha256 = hashlib.sha256()

    def accepts_body(self, response: httpx.Response) -> bool:
        """Open the temp file for a 2xx answer (checking a declared length against the cap)."""
        if not response.is_success:
            return False
        self.content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        declared = response.headers.get("content-length")
        # ASCII digits only: str.isdigit() also admits "²", which int() refuses.
        if declared is not None and declared.strip().isascii() and declared.strip().isdigit():
            self.declared_length = int(declared)
            if self.declared_length > self.max_bytes:
                raise DownloadError(
                    f"Content-Length {self.declared_length} bytes is over the "
                    f"{self.max_bytes}-byte cap",
                    url=self.url,
                )
        handle, name = tempfile.mkstemp(prefix=".krea-", suffix=".part", dir=self.directory)
        self.temp_path = Path(name)
        self._file = os.fdopen(handle, "wb")
        return True

    def write(self, chunk: bytes) -> None:
        """Append a chunk; the cap is enforced as bytes arrive, whatever the headers said."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise DownloadError(f"body is over the {self.max_bytes}-byte cap", url=self.url)
        if len(self.head) < 16:
            self.head += chunk[: 16 - len(self.head)]
        self._sha256.update(chunk)
        assert self._file is not None
        self._file.write(chunk)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def close(self) -> None:
        """Flush the temp file to disk (it is renamed next; a crash must not leave a torn file)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """Remove the temp file unless it was renamed into place."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.temp_path is not None and not self.committed:
            self.temp_path.unlink(missing_ok=True)


class _TruncatedError(DownloadError):
    """The body ended before Content-Length said it would (a dropped connection: transient)."""


def download(
    core: RequestCore,
    url: str,
    dest: str | os.PathLike[str],
    *,
    max_bytes: int | None,
    verify_image: bool,
    max_retries: int | None,
) -> Flow[DownloadedFile]:
    """Fetch ``url`` into ``dest`` (a file path, or an existing directory: ``<sha256>.<ext>``)."""
    cap = core.config.download.max_bytes if max_bytes is None else max_bytes
    target = Path(dest)
    into_directory = target.is_dir()
    directory = target if into_directory else target.parent
    directory.mkdir(parents=True, exist_ok=True)
    shown = display_url(url)
    allowed = core.max_retries_for(max_retries)
    retries = 0
    while True:
        sink = DownloadSink(directory, max_bytes=cap, url=shown)
        try:
            outcome: httpx.Response | Exception
            try:
                outcome = yield from _follow_redirects(core, url, sink, retries)
            except httpx.TransportError as exc:
                outcome = exc
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                yield Offload(sink.close)
                expected = sink.declared_length
                received = _bytes_on_the_wire(outcome, sink)
                if expected is None or received == expected:
                    result: DownloadedFile = yield Offload(
                        functools.partial(_commit, sink, target, into_directory, verify_image)
                    )
                    logger.info(
                        "downloaded %s (%d bytes, sha256 %s)", shown, result.size, result.sha256
                    )
                    return result
                truncated = _TruncatedError(
                    f"truncated: received {received} of {expected} bytes",
                    url=shown,
                )
                if retries >= allowed:
                    raise truncated
                # Same handling as a connection dropped mid-body: a transient read failure.
                outcome = httpx.ReadError(str(truncated))
            decision = decide(RequestKind.SAFE, outcome)
            try:
                if decision.verdict is Verdict.DONE:
                    raise core.final_error(
                        outcome, "GET", DOWNLOAD_TEMPLATE, retries + 1, decision.reason
                    )
                delay = core.retry_delay(
                    outcome, "GET", DOWNLOAD_TEMPLATE, retries, allowed, decision.reason
                )
            except (APIStatusError, APIConnectionError) as error:
                raise _as_download_error(error, shown) from error
        finally:
            sink.discard()
        yield Sleep(delay)
        retries += 1


def _bytes_on_the_wire(response: httpx.Response, sink: DownloadSink) -> int:
    """Body bytes as sent, to compare with Content-Length (which counts encoded bytes)."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return sink.size  # unencoded: what we wrote is what was sent
    return response.num_bytes_downloaded


def _follow_redirects(
    core: RequestCore, url: str, sink: DownloadSink, retries: int
) -> Flow[httpx.Response]:
    """Send the GET and follow redirects one hop at a time, deciding the token per origin."""
    current = url
    for _ in range(core.config.download.max_redirects + 1):
        request = core.build_request(
            "GET",
            current,
            timeout=core.config.timeouts.for_download(),
            retries_taken=retries,
            accept="image/*, */*;q=0.5",
            # Compressed transfer of already-compressed images only costs CPU, and an encoded
            # body's size says nothing about what it expands to.
            extra_headers={"Accept-Encoding": "identity"},
        )
        core.stats.record_request("GET", DOWNLOAD_TEMPLATE)
        response: httpx.Response = yield Stream(request, sink)
        location = response.headers.get("location")
        if not (response.is_redirect and location):
            return response
        following = str(httpx.URL(current).join(location))
        logger.info(
            "download of %s redirected to %s (%s)",
            display_url(current),
            display_url(following),
            "same origin as the API"
            if core.is_api_origin(following)
            else "another origin: no token",
        )
        current = following
    raise DownloadError(
        f"more than {core.config.download.max_redirects} redirects", url=display_url(url)
    )


def _commit(
    sink: DownloadSink, target: Path, into_directory: bool, verify_image: bool
) -> DownloadedFile:
    """Verify the temp file and rename it into place (blocking: run through ``Offload``)."""
    assert sink.temp_path is not None
    detected = sniff_format(sink.head)
    width = height = None
    if verify_image and detected is None and sink.head[4:8] == b"ftyp":
        return _commit_video(sink, target, into_directory)
    if verify_image:
        if detected is None:
            raise DownloadError(
                f"not a PNG, JPEG or WebP image nor an MP4/MOV video (Content-Type "
                f"{sink.content_type or 'missing'}, "
                f"first bytes {sink.head[:8]!r})",
                url=sink.url,
            )
        width, height = _verify_with_pillow(sink.temp_path, detected, sink.url)
    extension, content_type = _naming(sink, detected)
    final = target / f"{sink.sha256}.{extension}" if into_directory else target
    os.replace(sink.temp_path, final)
    sink.committed = True
    return DownloadedFile(
        path=final,
        size=sink.size,
        sha256=sink.sha256,
        content_type=content_type,
        width=width,
        height=height,
    )


def _commit_video(sink: DownloadSink, target: Path, into_directory: bool) -> DownloadedFile:
    """Verify an MP4/MOV result's structure and rename it into place."""
    from krea_dagster.api.video import VideoError, inspect_video

    assert sink.temp_path is not None
    try:
        info = inspect_video(sink.temp_path)
    except VideoError as exc:
        raise DownloadError(f"not a well-formed video: {exc}", url=sink.url) from exc
    extension, content_type = (
        ("mov", "video/quicktime") if info.brand == "qt" else ("mp4", "video/mp4")
    )
    final = target / f"{sink.sha256}.{extension}" if into_directory else target
    os.replace(sink.temp_path, final)
    sink.committed = True
    return DownloadedFile(
        path=final,
        size=sink.size,
        sha256=sink.sha256,
        content_type=content_type,
        width=info.width,
        height=info.height,
    )


def _verify_with_pillow(path: Path, detected: str, url: str) -> tuple[int, int]:
    """Width and height from the header, after ``Image.verify()`` (no full decode: cheap)."""
    from PIL import Image  # imported on first download: most client uses never need it

    try:
        with Image.open(path) as image:
            width, height = image.size
            pillow_format = image.format
            image.verify()
    except Exception as exc:  # Pillow raises many types (SyntaxError, OSError, ...)
        raise DownloadError(
            f"Pillow cannot read the {detected} file ({type(exc).__name__}: {exc})", url=url
        ) from exc
    if pillow_format != detected:
        raise DownloadError(
            f"the signature says {detected} but Pillow reads {pillow_format}", url=url
        )
    return int(width), int(height)


def _naming(sink: DownloadSink, detected: str | None) -> tuple[str, str]:
    """Extension and media type: the verified signature first, then Content-Type, then the URL."""
    if detected is not None:
        return _FORMATS[detected]
    if sink.content_type in _EXTENSIONS_BY_TYPE:
        return _EXTENSIONS_BY_TYPE[sink.content_type], sink.content_type
    suffix = Path(sink.url).suffix.lstrip(".").lower()
    return (suffix or "bin"), (sink.content_type or "application/octet-stream")


def _as_download_error(error: KreaError, url: str) -> DownloadError:
    if isinstance(error, APIStatusError):
        detail = f"the server answered {error.status_code}"
        if error.attempts > 1:
            detail += f" after {error.attempts} attempts"
        if error.retry_after is not None:
            detail += f" and asked to wait {error.retry_after:.0f} s, longer than this client waits"
        return DownloadError(detail, url=url, status_code=error.status_code)
    attempts = getattr(error, "attempts", 1)
    cause = error.__cause__
    name = type(cause).__name__ if cause is not None else type(error).__name__
    detail = f"{cause}" if cause is not None and str(cause) else name
    return DownloadError(f"{name} after {attempts} attempts: {detail}", url=url)
