"""Checks of downloaded videos (MP4 / MOV) without a decoder, and their poster frame.

``inspect_video`` reads the ISO base media structure (the boxes): an ``ftyp`` first, a
``moov`` with a video track (``hdlr`` ``vide``) of non-zero width, height and sample count,
and sample data that lies inside the file. That is what a truncated or mislabelled download
breaks, and it costs one read of the ``moov`` box, not a decode. ``poster_frame`` returns the
first frame as JPEG bytes when the track is Motion-JPEG (the emulator's videos); for other
codecs (H.264...) it returns None: extracting a frame needs a decoder (PyAV or ffmpeg).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from krea_dagster.api.errors import KreaError

__all__ = ["VideoError", "VideoInfo", "inspect_video", "poster_frame"]

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf"}
_JPEG_CODECS = {b"jpeg", b"mjpa", b"mjpb"}
_MAX_MOOV_BYTES = 64 * 1024 * 1024


class VideoError(KreaError, ValueError):
    """The file is not a well-formed MP4/MOV video (the message says what is wrong)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the boxes of a video say: size, length, codec, frames, where the first frame is."""

    width: int
    height: int
    duration_seconds: float
    codec: str
    frames: int
    brand: str
    first_sample: tuple[int, int]  # (offset, size) of the first frame's bytes

    @property
    def is_motion_jpeg(self) -> bool:
        """Whether each frame is a JPEG (so the poster frame needs no decoder)."""
        return self.codec in ("jpeg", "mjpa", "mjpb", "mp4v/jpeg")


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in ``data[start:end]``."""
    found = []
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:
            if position + 16 > end:
                raise VideoError(f"box {kind!r} is cut off")
            size = struct.unpack_from(">Q", data, position + 8)[0]
            header = 16
        elif size == 0:
            size = end - position
        if size < header or position + size > end:
            raise VideoError(f"box {kind!r} at {position} runs past its parent ({size} bytes)")
        found.append((kind, position + header, position + size))
        position += size
    return found


def _top_level(handle: BinaryIO, file_size: int) -> list[tuple[bytes, int, int]]:
    found = []
    position = 0
    while position + 8 <= file_size:
        handle.seek(position)
        header = handle.read(16)
        size, kind = struct.unpack_from(">I4s", header)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", header, 8)[0], 16
        elif size == 0:
            size = file_size - position
        if size < head or position + size > file_size:
            raise VideoError(
                f"box {kind!r} at {position} claims {size} bytes but the file has only "
                f"{file_size - position} left (truncated download?)"
            )
        found.append((kind, position + head, position + size))
        position += size
    return found


def _walk(data: bytes, start: int, end: int, into: dict[bytes, list[tuple[int, int]]]) -> None:
    for kind, body_start, body_end in _boxes(data, start, end):
        into.setdefault(kind, []).append((body_start, body_end))
        if kind in _CONTAINERS:
            _walk(data, body_start, body_end, into)


def _video_track(moov: bytes) -> dict[bytes, list[tuple[int, int]]]:
    tracks = [(s, e) for kind, s, e in _boxes(moov, 0, len(moov)) if kind == b"trak"]
    for start, end in tracks:
        boxes: dict[bytes, list[tuple[int, int]]] = {}
        _walk(moov, start, end, boxes)
        for hdlr_start, _ in boxes.get(b"hdlr", []):
            if moov[hdlr_start + 8 : hdlr_start + 12] == b"vide":
                return boxes
    raise VideoError("no video track (no trak whose hdlr is 'vide')")


def _one(boxes: dict[bytes, list[tuple[int, int]]], kind: bytes) -> tuple[int, int]:
    if kind not in boxes:
        raise VideoError(f"the video track has no {kind.decode()} box")
    return boxes[kind][0]


def _codec(moov: bytes, stsd: tuple[int, int]) -> str:
    start, end = stsd
    if end - start < 16:
        raise VideoError("the stsd box has no sample entry")
    entry = moov[start + 12 : start + 16]
    codec = entry.decode("latin-1")
    if entry == b"mp4v":  # MPEG-4 visual entry: the esds object type says which codec
        esds = moov.find(b"esds", start, end)
        if esds != -1 and _object_type(moov, esds + 8, end) == 0x6C:
            codec = "mp4v/jpeg"
    return codec


def _descriptor(data: bytes, position: int) -> tuple[int, int, int]:
    """(tag, payload start, payload length) of an MPEG-4 descriptor (7-bit length bytes)."""
    tag, position, length = data[position], position + 1, 0
    for _ in range(4):
        byte = data[position]
        position += 1
        length = (length << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, position, length


def _object_type(data: bytes, position: int, end: int) -> int | None:
    """The objectTypeIndication of an esds box's DecoderConfigDescriptor (0x6C: JPEG)."""
    try:
        tag, position, _ = _descriptor(data, position)
        if tag != 0x03:
            return None
        flags = data[position + 2]
        position += 3
        position += 2 if flags & 0x80 else 0  # streamDependenceFlag: dependsOn_ES_ID
        position += 1 + data[position] if flags & 0x40 else 0  # URL_Flag: URLlength, URL
        position += 2 if flags & 0x20 else 0  # OCRstreamFlag: OCR_ES_Id
        tag, position, _ = _descriptor(data, position)
        return data[position] if tag == 0x04 and position < end else None
    except IndexError:
        return None


def inspect_video(path: str | os.PathLike[str]) -> VideoInfo:
    """The video's facts from its boxes, or VideoError naming what is malformed."""
    file_size = os.path.getsize(path)
    with Path(path).open("rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[4:8] != b"ftyp":
            raise VideoError(f"not an MP4/MOV file (first bytes {head[:12]!r})")
        top = _top_level(handle, file_size)
        kinds = [kind for kind, _, _ in top]
        if b"moov" not in kinds:
            raise VideoError("no moov box: the file has no index (truncated or unfinished?)")
        if b"mdat" not in kinds:
            raise VideoError("no mdat box: the file carries no media data")
        _, moov_start, moov_end = next(box for box in top if box[0] == b"moov")
        if moov_end - moov_start > _MAX_MOOV_BYTES:
            raise VideoError(f"the moov box is {moov_end - moov_start} bytes, too large")
        handle.seek(moov_start)
        moov = handle.read(moov_end - moov_start)
    track = _video_track(moov)
    tkhd, _ = _one(track, b"tkhd")
    version = moov[tkhd]
    width_at = tkhd + (84 if version == 1 else 72) + 4
    width, height = (value >> 16 for value in struct.unpack_from(">II", moov, width_at))
    mdhd, _ = _one(track, b"mdhd")
    if moov[mdhd] == 1:
        timescale, duration = struct.unpack_from(">IQ", moov, mdhd + 20)
    else:
        timescale, duration = struct.unpack_from(">II", moov, mdhd + 12)
    stsz, _ = _one(track, b"stsz")
    sample_size, frames = struct.unpack_from(">II", moov, stsz + 4)
    first_size = sample_size or (struct.unpack_from(">I", moov, stsz + 12)[0] if frames else 0)
    if b"stco" in track:
        first_offset = struct.unpack_from(">I", moov, track[b"stco"][0][0] + 8)[0]
    elif b"co64" in track:
        first_offset = struct.unpack_from(">Q", moov, track[b"co64"][0][0] + 8)[0]
    else:
        raise VideoError("the video track has no chunk offsets (stco/co64)")
    if width <= 0 or height <= 0 or frames <= 0:
        raise VideoError(f"the video track is empty ({width}x{height}, {frames} frames)")
    if first_offset + first_size > file_size:
        raise VideoError("the first frame lies past the end of the file (truncated download?)")
    return VideoInfo(
        width=width,
        height=height,
        duration_seconds=duration / timescale if timescale else 0.0,
        codec=_codec(moov, _one(track, b"stsd")),
        frames=frames,
        brand=head[8:12].decode("latin-1").strip(),
        first_sample=(first_offset, first_size),
    )


def poster_frame(path: str | os.PathLike[str], info: VideoInfo | None = None) -> bytes | None:
    """The first frame as JPEG bytes for a Motion-JPEG video, else None (needs a decoder)."""
    info = info or inspect_video(path)
    if not info.is_motion_jpeg:
        return None
    offset, size = info.first_sample
    with Path(path).open("rb") as handle:
        handle.seek(offset)
        frame = handle.read(size)
    if not frame.startswith(b"\xff\xd8\xff"):
        raise VideoError("the first frame of the Motion-JPEG track is not a JPEG")
    return frame
