"""What ``POST /assets`` accepts, checked before anything is sent, and the upload's hash key.

Krea accepts JPEG, PNG, WebP, HEIC, MP4, MOV, WebM, GLB, WAV and MP3 up to 75 MB
(krea-api.md section 4); the type is recognised by the file's first bytes, not its name. Every
upload made by this client carries a ``description`` starting with ``sha256:<hex of the
bytes>``: the key by which an upload whose answer was lost is found again in ``GET /assets``,
and by which the same bytes are recognised later. Zero-data-retention requests carry files as
``data:`` URIs instead (``to_data_uri``).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from krea_dagster.api.errors import InvalidUploadError

__all__ = [
    "ALLOWED_UPLOAD_TYPES",
    "MAX_UPLOAD_BYTES",
    "check_upload",
    "description_sha256",
    "read_upload_file",
    "sniff_upload_type",
    "to_data_uri",
    "upload_description",
]

#: Krea's cap on one asset: 75 MB.
MAX_UPLOAD_BYTES = 75 * 1024 * 1024
#: The types ``POST /assets`` accepts (krea-api.md section 4), as MIME type -> extension.
ALLOWED_UPLOAD_TYPES: dict[str, str] = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/heic": "heic",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/webm": "webm",
    "model/gltf-binary": "glb",
    "audio/wav": "wav",
    "audio/mpeg": "mp3",
}
_ALLOWED_NAMES = "JPEG, PNG, WebP, HEIC, MP4, MOV, WebM, GLB, WAV, MP3"
_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1"}
_HASH_IN_DESCRIPTION = re.compile(r"(?:^|\s)sha256:([0-9a-f]{64})(?:\s|$)")


def sniff_upload_type(head: bytes) -> str | None:
    """The MIME type of a file Krea accepts, from its first bytes (at least 12), else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"glTF"):
        return "model/gltf-binary"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIC_BRANDS:
            return "image/heic"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    return None


def check_upload(data: bytes, *, source: str | None = None) -> str:
    """The MIME type of an acceptable upload, or InvalidUploadError saying what is wrong."""
    if not data:
        raise InvalidUploadError("the file is empty", source=source)
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidUploadError(
            f"the file is {len(data)} bytes, over Krea's 75 MB limit ({MAX_UPLOAD_BYTES} bytes); "
            "resize or recompress it",
            source=source,
        )
    mime_type = sniff_upload_type(data[:16])
    if mime_type is None:
        raise InvalidUploadError(
            f"the file is not a type Krea accepts (first bytes {data[:8]!r}); allowed types: "
            f"{_ALLOWED_NAMES}; convert it, e.g. to PNG",
            source=source,
        )
    return mime_type


def upload_description(sha256: str, description: str | None = None) -> str:
    """The ``description`` an upload carries: ``sha256:<hex>`` first, then the caller's text."""
    marker = f"sha256:{sha256}"
    return f"{marker} {description.strip()}" if description and description.strip() else marker


def description_sha256(description: str | None) -> str | None:
    """The content hash an upload's description carries, if it has one."""
    found = _HASH_IN_DESCRIPTION.search(description or "")
    return found.group(1) if found else None


def to_data_uri(data: bytes, *, source: str | None = None) -> str:
    """``data:<type>;base64,...`` for a file Krea accepts (checked like an upload)."""
    mime_type = check_upload(data, source=source)
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


def read_upload_file(path: Path) -> bytes:
    """A local file's bytes; the size is checked before reading (blocking: use ``Offload``)."""
    source = str(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise InvalidUploadError("not a regular file", source=source)
        if size > MAX_UPLOAD_BYTES:
            raise InvalidUploadError(
                f"the file is {size} bytes, over Krea's 75 MB limit ({MAX_UPLOAD_BYTES} bytes)",
                source=source,
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidUploadError("no such file", source=source) from None
    except PermissionError:
        raise InvalidUploadError(
            "the file cannot be read (permission denied)", source=source
        ) from None
