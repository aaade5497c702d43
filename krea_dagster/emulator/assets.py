"""Asset uploads: the allowed file types, recognised by their content, and the size cap.

The type is decided by the file's magic bytes, not by the declared ``Content-Type`` (which
clients often send as ``application/octet-stream``): JPEG, PNG, WebP, HEIC, MP4, MOV, WebM,
GLB, WAV and MP3 are accepted, anything else is a 400 naming the allowed types. The cap is
75 MB (75 x 1024 x 1024 bytes). Width and height are read for JPEG, PNG and WebP and are null
for the other types, as the Asset schema allows.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from PIL import Image

from krea_dagster.emulator.clock import format_micros, to_micros
from krea_dagster.emulator.errors import BadRequest, NotFound
from krea_dagster.emulator.records import Account, Asset

if TYPE_CHECKING:
    from krea_dagster.emulator.state import EmulatorState

MAX_ASSET_BYTES = 75 * 1024 * 1024
ALLOWED_TYPES = "JPEG, PNG, WebP, HEIC, MP4, MOV, WebM, GLB, WAV, MP3"
_HEIC_BRANDS = {
    b"heic",
    b"heix",
    b"hevc",
    b"hevx",
    b"heim",
    b"heis",
    b"hevm",
    b"hevs",
    b"mif1",
    b"msf1",
}
_EXTENSIONS = {
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


def sniff_mime_type(head: bytes) -> str | None:
    """The MIME type of an allowed file from its first bytes, or None."""
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
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        if brand in _HEIC_BRANDS:
            return "image/heic"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if box in (b"moov", b"mdat", b"wide", b"free"):
        return "video/quicktime"
    return None


def extension(mime_type: str) -> str:
    """The file extension used in an asset's URL."""
    return _EXTENSIONS.get(mime_type, "bin")


def check_upload(data: bytes) -> tuple[str, int | None, int | None]:
    """(mime type, width, height) of an acceptable upload, or BadRequest."""
    if len(data) > MAX_ASSET_BYTES:
        raise BadRequest(
            f"file is {len(data)} bytes; the maximum size is 75MB ({MAX_ASSET_BYTES} bytes)"
        )
    if not data:
        raise BadRequest("file is empty")
    mime_type = sniff_mime_type(data[:32])
    if mime_type is None:
        raise BadRequest(f"unsupported file type; allowed types: {ALLOWED_TYPES}")
    width = height = None
    if mime_type in ("image/jpeg", "image/png", "image/webp"):
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except (OSError, ValueError):
            raise BadRequest(f"file looks like {mime_type} but cannot be decoded") from None
    return mime_type, width, height


def upload(
    state: EmulatorState,
    account: Account,
    data: bytes,
    filename: str | None,
    description: str | None,
) -> Asset:
    """Store an upload for the account (BadRequest for a bad type or size)."""
    mime_type, width, height = check_upload(data)
    uploaded_us = max(to_micros(state.clock()), account.last_uploaded_us + 1)
    account.last_uploaded_us = uploaded_us
    asset_id = str(uuid.uuid4())
    asset = Asset(
        id=asset_id,
        account_id=account.id,
        uploaded_us=uploaded_us,
        mime_type=mime_type,
        filename=f"{asset_id}.{extension(mime_type)}",
        size_bytes=len(data),
        width=width,
        height=height,
        description=description,
        data=data,
    )
    state.assets[asset.id] = asset
    account.asset_ids.append(asset.id)
    state.store.save_asset(asset)
    state.store.save_account(account)
    state.counters.count_upload(hashlib.sha256(data).hexdigest())
    state.flush_counters(force=True)  # exact after a kill -9, like the assets themselves
    return asset


def own_asset(state: EmulatorState, account: Account, asset_id: str) -> Asset:
    """The account's asset (NotFound for unknown or foreign ids)."""
    asset = state.assets.get(asset_id)
    if asset is None or asset.account_id != account.id:
        raise NotFound(f"asset {asset_id!r} not found")
    return asset


def delete(state: EmulatorState, account: Account, asset_id: str) -> None:
    """Remove the account's asset."""
    asset = own_asset(state, account, asset_id)
    del state.assets[asset.id]
    account.asset_ids.remove(asset.id)
    state.store.delete_asset(asset.id)


def list_page(
    state: EmulatorState, account: Account, cursor_us: int | None, limit: int
) -> tuple[list[Asset], int | None]:
    """Own assets newest first, uploaded strictly before the cursor; and the next cursor."""
    uploaded = [state.assets[i].uploaded_us for i in account.asset_ids]
    end = len(uploaded) if cursor_us is None else bisect_left(uploaded, cursor_us)
    ids = account.asset_ids[max(0, end - limit - 1) : end][::-1]
    page = [state.assets[i] for i in ids[:limit]]
    return page, (page[-1].uploaded_us if len(ids) > limit else None)


def asset_json(state: EmulatorState, asset: Asset) -> dict[str, Any]:
    """The Asset object of the OpenAPI document."""
    data: dict[str, Any] = {
        "id": asset.id,
        "image_url": f"{state.cdn_url}/assets/{asset.filename}",
        "uploaded_at": format_micros(asset.uploaded_us),
        "width": asset.width,
        "height": asset.height,
        "size_bytes": asset.size_bytes,
        "mime_type": asset.mime_type,
    }
    if asset.description is not None:
        data["description"] = asset.description
    return data
