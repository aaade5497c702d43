"""Video results: a real, small, playable MP4 (Motion-JPEG) and its poster frame.

Krea's video models return an MP4. The emulator writes one by hand, without ffmpeg: an ISO base
media file (``ftyp``, ``mdat``, ``moov``) with one video track whose samples are JPEG frames
(sample entry ``mp4v`` with ``esds`` object type 0x6C, Motion-JPEG, which ffmpeg and VLC play).
The frames are drawn from the job's hash (prompt, seed and input files, like the images), with
a bar that moves from frame to frame, so the file is deterministic per job and visibly animated.
The long side is at most :data:`MAX_SIDE` pixels and the clip lasts ``FRAMES / FPS`` seconds,
so a file stays around 10-30 KB. The poster frame (``poster_jpeg``) is the first frame's JPEG,
byte for byte, served beside the video.
"""

from __future__ import annotations

import hashlib
import io
import struct

from PIL import Image, ImageDraw

FRAMES = 8
FPS = 4
TIMESCALE = 1000
MAX_SIDE = 256
_UNITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def video_size(width: int, height: int) -> tuple[int, int]:
    """The frame size: the job's aspect, long side at most MAX_SIDE, even sides."""
    scale = min(1.0, MAX_SIDE / max(width, height, 1))
    return max(16, int(width * scale) // 2 * 2), max(16, int(height * scale) // 2 * 2)


def _frames(key: str, width: int, height: int) -> list[bytes]:
    digest = hashlib.sha256(key.encode()).digest()
    background, accent = tuple(digest[0:3]), tuple(digest[3:6])
    frames = []
    for index in range(FRAMES):
        image = Image.new("RGB", (width, height), background)
        pen = ImageDraw.Draw(image)
        x = (index * width) // FRAMES
        pen.rectangle((x, 0, x + max(2, width // FRAMES), height), fill=accent)
        pen.ellipse((width // 4, height // 4, width // 2, height // 2), fill=tuple(digest[6:9]))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
        frames.append(buffer.getvalue())
    return frames


def _esds() -> bytes:
    decoder_config = bytes([0x04, 13, 0x6C, (0x04 << 2) | 1]) + b"\x00\x00\x00" + b"\x00" * 8
    sl_config = bytes([0x06, 1, 0x02])
    es = bytes([0x03, 3 + len(decoder_config) + len(sl_config)]) + b"\x00\x01\x00"
    return _full_box(b"esds", 0, 0, es + decoder_config + sl_config)


def _sample_entry(width: int, height: int) -> bytes:
    return _box(
        b"mp4v",
        b"\x00" * 6 + struct.pack(">H", 1),  # reserved, data_reference_index
        b"\x00" * 16,  # pre_defined, reserved
        struct.pack(">HHII", width, height, 0x00480000, 0x00480000),
        b"\x00" * 4 + struct.pack(">H", 1),  # reserved, frame_count
        bytes([10]) + b"Motion JPEG".ljust(31, b"\x00")[:31],  # compressorname
        struct.pack(">Hh", 0x18, -1),
        _esds(),
    )


def _moov(frames: list[bytes], width: int, height: int, data_offset: int) -> bytes:
    delta = TIMESCALE // FPS
    duration = delta * len(frames)
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, TIMESCALE, duration),
        struct.pack(">IH", 0x00010000, 0x0100) + b"\x00" * 10,
        _UNITY_MATRIX + b"\x00" * 24 + struct.pack(">I", 2),
    )
    tkhd = _full_box(
        b"tkhd",
        0,
        3,
        struct.pack(">IIIII", 0, 0, 1, 0, duration),
        b"\x00" * 8 + struct.pack(">hhhH", 0, 0, 0, 0),
        _UNITY_MATRIX + struct.pack(">II", width << 16, height << 16),
    )
    mdhd = _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, duration, 0x55C4, 0))
    hdlr = _full_box(b"hdlr", 0, 0, b"\x00" * 4 + b"vide" + b"\x00" * 12 + b"VideoHandler\x00")
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), _sample_entry(width, height)),
        _full_box(b"stts", 0, 0, struct.pack(">III", 1, len(frames), delta)),
        _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, len(frames), 1)),
        _full_box(
            b"stsz",
            0,
            0,
            struct.pack(">II", 0, len(frames)),
            b"".join(struct.pack(">I", len(frame)) for frame in frames),
        ),
        _full_box(b"stco", 0, 0, struct.pack(">II", 1, data_offset)),
    )
    minf = _box(
        b"minf",
        _full_box(b"vmhd", 0, 1, b"\x00" * 8),
        _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1))),
        stbl,
    )
    return _box(b"moov", mvhd, _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf)))


def render_mp4(key: str, width: int, height: int) -> bytes:
    """A playable Motion-JPEG MP4 for this job key, at most MAX_SIDE pixels on its long side."""
    width, height = video_size(width, height)
    frames = _frames(key, width, height)
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 512), b"isomiso2mp41")
    mdat = _box(b"mdat", *frames)
    data_offset = len(ftyp) + 8  # the first frame starts right after the mdat header
    return ftyp + mdat + _moov(frames, width, height, data_offset)


def poster_jpeg(key: str, width: int, height: int) -> bytes:
    """The poster frame: the video's first frame, the same JPEG bytes."""
    width, height = video_size(width, height)
    return _frames(key, width, height)[0]
