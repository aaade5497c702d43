"""Reference images from anywhere: resolve what a request names into what it carries.

A media input of a request (``image_urls[]``, ``style_images[].url``, ``image_url``... found
from the catalog by ``krea_dagster.api.media``) may be given as

- an ``http(s)://`` URL: kept as is (a public URL, an asset URL, an earlier job's result);
- a ``data:`` URI: decoded, checked, and uploaded like a file (or kept, for ZDR requests);
- a local path (``refs/sku-42.png``, ``file:///...``), relative to ``base_dir`` when given;
- an ``s3://`` URI (or another fsspec protocol), read through universal-pathlib.

Files are read, hashed (SHA-256), checked (a type Krea accepts, recognised by its first bytes,
images opened by Pillow; at most 75 MB; the kind its input takes: an image for ``image_urls``,
a video for ``start_video``) and uploaded once through ``POST /assets``: the
``UploadCache`` maps a content hash to the asset URL, so the same bytes, under any name or
from any source, are uploaded one time, until Krea no longer has the asset (deleted): then
``forget_gone_uploads`` drops the entry and the next request that needs the file uploads it
again. ``MemoryUploadCache`` is the in-process cache; a ledger-backed one implements the same
methods. With zero data retention on, files become ``data:`` URIs instead and nothing is
uploaded (Krea requires it).

No Dagster import: this module is engine-level.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    NamedTuple,
    Protocol,
    TypeVar,
    runtime_checkable,
)
from urllib.parse import unquote, urlsplit

from krea_dagster.api.catalog import shorten
from krea_dagster.api.client import AsyncKreaClient, KreaClient
from krea_dagster.api.errors import InvalidUploadError, KreaError, NotFoundError
from krea_dagster.api.json_values import string_leaves
from krea_dagster.api.media import MediaValue, find_media, media_paths, replace_media
from krea_dagster.api.uploads import MAX_UPLOAD_BYTES, check_upload, to_data_uri
from krea_dagster.engine.crashpoints import crash_point

__all__ = [
    "CachedUpload",
    "ImageReferenceError",
    "LoadedReference",
    "MemoryUploadCache",
    "ReferenceResolver",
    "ResolvedReference",
    "UploadCache",
    "check_unchanged",
    "forget_gone_uploads",
    "image_fields",
    "load_reference",
    "media_kind_problem",
    "reference_kind",
]

if TYPE_CHECKING:
    from krea_dagster.api.models import Asset

logger = logging.getLogger("krea_dagster.engine.references")

ReferenceKind = Literal["url", "data", "local", "remote"]
_PILLOW_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


class ImageReferenceError(InvalidUploadError):
    """A reference cannot be resolved (missing file, unknown scheme, refused type or size)."""


class CachedUpload(NamedTuple):
    """One file the cache holds as uploaded: its content hash, asset URL and asset id."""

    sha256: str
    url: str
    asset_id: str | None


@runtime_checkable
class UploadCache(Protocol):
    """Content hash -> uploaded asset; a ledger table implements it for every worker."""

    def get(self, sha256: str) -> str | None:
        """The asset URL already uploaded for these bytes, or None."""

    def put(self, sha256: str, url: str, asset_id: str, size: int) -> None:
        """Record that these bytes were uploaded as ``asset_id`` at ``url``."""

    def begin(self, sha256: str) -> bool:
        """Record that an upload of these bytes is about to start.

        True when an earlier upload of the same bytes was started and never recorded (its
        worker died, or its answer was lost): the asset may exist, so look for it in
        ``GET /assets`` before uploading again.
        """

    def named(self, urls: Iterable[str]) -> list[CachedUpload]:
        """The cached uploads whose asset URL is one of ``urls``."""

    def forget(self, sha256: str, url: str) -> bool:
        """Drop the entry of these bytes if it still names ``url`` (its asset is gone at Krea),
        so the next resolve uploads them again. False when the entry names another URL (a
        worker uploaded them again meanwhile) or there is none."""


class MemoryUploadCache:
    """An ``UploadCache`` in a dict (one process; tests and single runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: dict[str, tuple[str, str, int]] = {}  # sha256 -> (url, asset_id, size)
        self._started: set[str] = set()

    def get(self, sha256: str) -> str | None:
        with self._lock:
            entry = self.entries.get(sha256)
        return entry[0] if entry else None

    def put(self, sha256: str, url: str, asset_id: str, size: int) -> None:
        with self._lock:
            self.entries[sha256] = (url, asset_id, size)
            self._started.discard(sha256)

    def begin(self, sha256: str) -> bool:
        with self._lock:
            interrupted = sha256 in self._started
            self._started.add(sha256)
        return interrupted

    def named(self, urls: Iterable[str]) -> list[CachedUpload]:
        wanted = set(urls)
        with self._lock:
            return [
                CachedUpload(sha256, url, asset_id)
                for sha256, (url, asset_id, _) in self.entries.items()
                if url in wanted
            ]

    def forget(self, sha256: str, url: str) -> bool:
        with self._lock:
            entry = self.entries.get(sha256)
            if entry is None or entry[0] != url:
                return False
            del self.entries[sha256]
            self._started.discard(sha256)
        return True

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class LoadedReference:
    """The checked bytes of a file reference."""

    source: str
    data: bytes
    sha256: str
    mime_type: str

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def filename(self) -> str:
        """A file name for the upload (the source's last path segment, else from the hash)."""
        name = os.path.basename(urlsplit(self.source).path) if ":" in self.source else ""
        name = name or os.path.basename(self.source)
        return name if name and not self.source.startswith("data:") else self.sha256[:16]


@dataclass(frozen=True)
class ResolvedReference:
    """What one reference became: the string the request carries, and how it was obtained.

    ``how`` is ``kept`` (an http(s) URL, sent as is), ``uploaded`` (``POST /assets`` now),
    ``cached`` (the same bytes were uploaded before, says the cache), ``found`` (an earlier
    upload of the bytes found in ``GET /assets``) or ``inlined`` (a ``data:`` URI, ZDR).
    """

    source: str
    value: str
    how: Literal["kept", "uploaded", "cached", "found", "inlined"]
    sha256: str | None = None
    size: int | None = None
    mime_type: str | None = None
    asset_id: str | None = None


def image_fields(model: str, kind: str = "image") -> tuple[str, ...]:
    """The media input paths of a model from the catalog (``image_urls[]``, ...)."""
    return media_paths(model, kind)


def reference_kind(reference: str) -> ReferenceKind:
    """``url`` (http/https), ``data``, ``local`` (a path or ``file:``) or ``remote`` (s3, ...)."""
    if not isinstance(reference, str) or not reference.strip():
        raise ImageReferenceError("an image reference must be a non-empty string")
    text = reference.strip()
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return "url"
    if scheme == "data":
        return "data"
    if scheme in ("", "file") or (len(scheme) == 1 and text[1:3] in (":\\", ":/")):
        return "local"  # a one-letter "scheme" is a Windows drive
    return "remote"


def _display(reference: str) -> str:
    if reference.startswith("data:"):
        return reference[: min(len(reference), reference.find(",") + 1 or 40)] + "..."
    parts = urlsplit(reference)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else reference


def _decode_data_uri(reference: str) -> bytes:
    header, sep, payload = reference.partition(",")
    if not sep:
        raise ImageReferenceError(
            "a data: URI needs a ',' before its payload", source=_display(reference)
        )
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageReferenceError(
                "the data: URI's base64 payload is invalid", source=_display(reference)
            ) from None
    return unquote(payload).encode("latin-1", errors="replace")


def _read_path(path: Any, source: str) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReferenceError("no such file", source=source) from None
    except Exception as exc:  # an object store raises its client's own errors (botocore, ...)
        raise ImageReferenceError(
            f"cannot read it ({type(exc).__name__}: {_short(str(exc))})", source=source
        ) from exc
    if size > MAX_UPLOAD_BYTES:
        raise ImageReferenceError(
            f"the file is {size} bytes, over Krea's 75 MB limit ({MAX_UPLOAD_BYTES} bytes)",
            source=source,
        )
    if not path.is_file():
        raise ImageReferenceError("not a regular file", source=source)
    try:
        data: bytes = path.read_bytes()
    except Exception as exc:  # as above
        raise ImageReferenceError(
            f"cannot read it ({type(exc).__name__}: {_short(str(exc))})", source=source
        ) from exc
    return data


def _short(text: str) -> str:
    return shorten(text, 300)


def _verify_image(data: bytes, mime_type: str, source: str) -> None:
    expected = _PILLOW_TYPES.get(mime_type)
    if expected is None:
        return  # HEIC, video, audio: the signature check is all Pillow could add
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            found = image.format
            image.verify()
    except Exception as exc:  # Pillow raises many types
        raise ImageReferenceError(
            f"looks like {expected} but Pillow cannot read it ({type(exc).__name__}: {exc})",
            source=source,
        ) from exc
    if found != expected:
        raise ImageReferenceError(
            f"the signature says {expected} but Pillow reads {found}", source=source
        )


def load_reference(
    reference: str,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> LoadedReference:
    """Read, check and hash a file reference (a local path, ``s3://...`` or a ``data:`` URI)."""
    kind = reference_kind(reference)
    text = reference.strip()
    source = _display(text)
    if kind == "url":
        raise ImageReferenceError("an http(s) URL is sent as is, not read", source=source)
    if kind == "data":
        data = _decode_data_uri(text)
    elif kind == "local":
        local = (
            Path(unquote(urlsplit(text).path)) if text.lower().startswith("file:") else Path(text)
        )
        local = local.expanduser()
        if not local.is_absolute() and base_dir is not None:
            local = Path(base_dir) / local
        source = str(local)
        data = _read_path(local, source)
    else:
        from upath import UPath

        from krea_dagster.engine.paths import missing_extra

        missing = missing_extra(text)
        if missing is not None:
            raise ImageReferenceError(missing, source=source)
        try:
            path = UPath(text, **dict(storage_options or {}))
        except (ValueError, ImportError) as exc:
            raise ImageReferenceError(
                f"unsupported reference scheme ({exc}); use an http(s) URL, a local path, an "
                "s3:// URI or a data: URI",
                source=source,
            ) from exc
        data = _read_path(path, source)
    try:
        mime_type = check_upload(data, source=source)
    except InvalidUploadError as exc:
        raise ImageReferenceError(exc.reason, source=source) from None
    _verify_image(data, mime_type, source)
    return LoadedReference(source, data, hashlib.sha256(data).hexdigest(), mime_type)


ClientT = TypeVar("ClientT")


class _ResolverBase(Generic[ClientT]):
    """What the sync and async resolvers share: their settings and the steps around the
    upload itself."""

    def __init__(
        self,
        client: ClientT,
        cache: UploadCache | None = None,
        *,
        zero_data_retention: bool = False,
        base_dir: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        description: str | None = None,
        search_assets: bool = False,
    ) -> None:
        self.client = client
        # The async resolver's per-hash locks: concurrent resolves of the same bytes take turns.
        self._locks: dict[str, asyncio.Lock] = {}
        self.cache: UploadCache = cache if cache is not None else MemoryUploadCache()
        self.zero_data_retention = zero_data_retention
        self.base_dir = base_dir
        self.storage_options = dict(storage_options or {})
        self.description = description
        self.search_assets = search_assets
        self.uploads = 0
        self.cache_hits = 0

    def _kept(self, reference: str) -> ResolvedReference | None:
        """The result for an http(s) URL (kept as is), or None for a file reference."""
        if reference_kind(reference) != "url":
            return None
        text = reference.strip()
        if self.zero_data_retention:
            raise ImageReferenceError(
                "zero-data-retention requests accept only data: URIs; give the file as a "
                "local path, an s3:// URI or a data: URI instead of a URL",
                source=_display(text),
            )
        return ResolvedReference(text, text, "kept")

    def _load(self, reference: str) -> LoadedReference:
        return load_reference(
            reference.strip(), base_dir=self.base_dir, storage_options=self.storage_options
        )

    def _without_upload(self, loaded: LoadedReference) -> ResolvedReference | None:
        """Inlined (ZDR) or cached, when no upload is needed."""
        facts = _facts(loaded)
        if self.zero_data_retention:
            return ResolvedReference(loaded.source, to_data_uri(loaded.data), "inlined", **facts)
        cached = self.cache.get(loaded.sha256)
        if cached is None:
            return None
        self.cache_hits += 1
        logger.debug("reference %s: already uploaded (%s)", loaded.source, loaded.sha256[:12])
        return ResolvedReference(loaded.source, cached, "cached", **facts)

    def _record(self, loaded: LoadedReference, asset: Asset, how: str) -> ResolvedReference:
        self.cache.put(loaded.sha256, asset.image_url, asset.id, loaded.size)
        if how == "uploaded":
            self.uploads += 1
            logger.info(
                "reference %s uploaded as asset %s (%d bytes)", loaded.source, asset.id, loaded.size
            )
        else:
            logger.info("reference %s found as asset %s, not uploaded", loaded.source, asset.id)
        return ResolvedReference(
            loaded.source,
            asset.image_url,
            "uploaded" if how == "uploaded" else "found",
            asset_id=asset.id,
            **_facts(loaded),
        )


def _facts(loaded: LoadedReference) -> dict[str, Any]:
    return {"sha256": loaded.sha256, "size": loaded.size, "mime_type": loaded.mime_type}


def _in_request(item: MediaValue, error: ImageReferenceError) -> ImageReferenceError:
    return ImageReferenceError(f"{item.path}: {error.reason}", source=error.source)


class ReferenceResolver(_ResolverBase[KreaClient]):
    """Turns references into request values, uploading each distinct file once.

    ``resolve(reference)`` handles one string; ``resolve_request(model, params)`` every media
    input of a request (found from the catalog), and returns the request to send plus what each
    reference became. ``zero_data_retention=True`` inlines files as ``data:`` URIs and refuses
    http(s) URLs (Krea's ZDR accepts only data URIs); nothing is uploaded then.
    ``search_assets=True`` looks for the bytes in ``GET /assets`` (by the hash every upload's
    description carries) before uploading on a cache miss: it reads the whole asset list, so
    it suits accounts with few assets or a cold cache.
    """

    def resolve(self, reference: str) -> ResolvedReference:
        """What the request carries for ``reference`` (see the class docstring)."""
        kept = self._kept(reference)
        if kept is not None:
            return kept
        loaded = self._load(reference)
        done = self._without_upload(loaded)
        if done is not None:
            return done
        if self.cache.begin(loaded.sha256) or self.search_assets:
            found = self.client.find_asset(loaded.sha256, size=loaded.size)
            if found is not None:
                return self._record(loaded, found, "found")
        asset = self.client.upload_asset(
            loaded.data, filename=loaded.filename, description=self.description
        )
        crash_point("upload.after_post")
        return self._record(loaded, asset, "uploaded")

    def resolve_request(
        self, model: str | None, params: Mapping[str, Any], kind: str = "image"
    ) -> tuple[dict[str, Any], list[ResolvedReference]]:
        """``params`` with every media input resolved, and the resolution of each one.

        The same reference string is resolved once per call; different strings naming the same
        bytes are uploaded once through the cache.
        """
        media = find_media(model, params, kind)
        by_reference: dict[str, ResolvedReference] = {}
        for item in media:
            if item.value not in by_reference:
                try:
                    by_reference[item.value] = self.resolve(item.value)
                except ImageReferenceError as exc:
                    raise _in_request(item, exc) from None
        return _assemble(params, media, by_reference)


class AsyncReferenceResolver(_ResolverBase[AsyncKreaClient]):
    """The asyncio twin of ``ReferenceResolver`` over an ``AsyncKreaClient``.

    Files are read in a worker thread; concurrent ``resolve`` calls for the same bytes wait for
    one another, so they upload once.
    """

    async def resolve(self, reference: str) -> ResolvedReference:
        """See ``ReferenceResolver.resolve``."""
        kept = self._kept(reference)
        if kept is not None:
            return kept
        loaded = await asyncio.to_thread(self._load, reference)
        lock = self._locks.setdefault(loaded.sha256, asyncio.Lock())
        async with lock:
            done = self._without_upload(loaded)
            if done is not None:
                return done
            interrupted = await asyncio.to_thread(self.cache.begin, loaded.sha256)
            if interrupted or self.search_assets:
                found = await self.client.find_asset(loaded.sha256, size=loaded.size)
                if found is not None:
                    return self._record(loaded, found, "found")
            asset = await self.client.upload_asset(
                loaded.data, filename=loaded.filename, description=self.description
            )
            crash_point("upload.after_post")
        return self._record(loaded, asset, "uploaded")

    async def resolve_request(
        self, model: str | None, params: Mapping[str, Any], kind: str = "image"
    ) -> tuple[dict[str, Any], list[ResolvedReference]]:
        """See ``ReferenceResolver.resolve_request``."""
        media = find_media(model, params, kind)
        by_reference: dict[str, ResolvedReference] = {}
        for item in media:
            if item.value not in by_reference:
                try:
                    by_reference[item.value] = await self.resolve(item.value)
                except ImageReferenceError as exc:
                    raise _in_request(item, exc) from None
        return _assemble(params, media, by_reference)


def _assemble(
    params: Mapping[str, Any], media: list[MediaValue], by_reference: dict[str, ResolvedReference]
) -> tuple[dict[str, Any], list[ResolvedReference]]:
    replacements = {item.location: by_reference[item.value].value for item in media}
    return (
        replace_media(params, replacements, media),
        [by_reference[item.value] for item in media],
    )


# -- checked before anything is sent, uploaded only when a request goes out ------------------

#: A file reference of a validated request, by content: what the request carries until its
#: prompt is about to be sent, when the file is uploaded (once per content hash and account)
#: and the asset URL takes its place. An https URL under the reserved ``.invalid`` domain
#: (RFC 6761: it never resolves), so the request validates exactly as it will be sent.
UPLOAD_TOKEN_PREFIX = "https://upload.krea-dagster.invalid/sha256/"


def upload_token(sha256: str) -> str:
    """The stand-in a validated request carries for the file with this content hash."""
    return UPLOAD_TOKEN_PREFIX + sha256


def token_sha256(value: Any) -> str | None:
    """The content hash an upload token stands for, None for any other value."""
    if isinstance(value, str) and value.startswith(UPLOAD_TOKEN_PREFIX):
        return value[len(UPLOAD_TOKEN_PREFIX) :]
    return None


class CheckedReferences:
    """The files a batch's requests name, each read, checked and hashed locally: no upload.

    ``tokenize`` replaces every file reference of a request (a local path, ``file:``,
    ``s3://`` or another object store) by its ``upload_token``, so the request's identity (its
    prompt key) follows the file's content, not its name, and validation sees the request as
    it will be sent. ``data:`` URIs are checked and kept (Krea reads them inline); http(s)
    URLs are left to the URL rule. A file of another kind than its input takes (a video in
    ``image_urls``) is a problem. ``sources`` maps each token to the file it came from, for
    the upload just before the request is sent (``check_unchanged``, then
    ``resolve_upload_tokens``).
    """

    def __init__(
        self,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.storage_options = dict(storage_options or {})
        self._seen: dict[str, tuple[str, str, str] | ImageReferenceError] = {}

    def tokenize(
        self, model: str | None, params: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str], list[tuple[str, str]]]:
        """``params`` with file references replaced by tokens, the tokens' sources, and a
        ``(path, message)`` problem per reference that cannot be used."""
        media = find_media(model, params)
        replacements: dict[Any, str] = {}
        sources: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        for item in media:
            if not isinstance(item.value, str) or reference_kind_or_none(item.value) in (
                None,
                "url",
            ):
                continue  # http(s) URLs and non-strings: the URL rule and the schema judge them
            outcome = self._check(item.value)
            if isinstance(outcome, ImageReferenceError):
                problems.append((item.path, _reason(outcome, self.base_dir)))
                continue
            token, source, mime_type = outcome
            if (wrong := media_kind_problem(item.path, mime_type)) is not None:
                problems.append((item.path, f"{shorten(_display(source), 120)}: {wrong}"))
                continue
            if token != item.value:
                replacements[item.location] = token
                sources[token] = source
        return replace_media(params, replacements, media), sources, problems

    def _check(self, reference: str) -> tuple[str, str, str] | ImageReferenceError:
        if reference not in self._seen:
            try:
                self._seen[reference] = self._load(reference)
            except ImageReferenceError as error:
                self._seen[reference] = error
        return self._seen[reference]

    def _load(self, reference: str) -> tuple[str, str, str]:
        loaded = load_reference(
            reference.strip(), base_dir=self.base_dir, storage_options=self.storage_options
        )
        if reference_kind(reference) == "data":
            return reference, reference, loaded.mime_type  # checked; sent inline as it is
        return upload_token(loaded.sha256), loaded.source, loaded.mime_type


#: Words of an input's name that say which kind of file it takes, most specific first.
_INPUT_KINDS = (("video", "video"), ("audio", "audio"), ("image", "image"), ("mask", "image"))


def media_kind_problem(path: str, mime_type: str) -> str | None:
    """Why a file of ``mime_type`` cannot go to the input at ``path`` (``image_urls[0]`` takes
    an image, ``start_video`` a video, ``audio_url`` audio), or None. An input whose name says
    no kind (``references[0].uri``) takes any file Krea accepts."""
    name = path.lower()
    for word, family in _INPUT_KINDS:
        if word in name:
            if mime_type.split("/", 1)[0] == family:
                return None
            article = "an" if family[0] in "aeiou" else "a"
            return (
                f"the file is {mime_type}, but {path} takes {article} {family} file; give "
                f"{article} {family} here"
            )
    return None


def reference_kind_or_none(reference: str) -> ReferenceKind | None:
    """``reference_kind``, or None for a blank string (the schema reports that)."""
    if not reference.strip():
        return None
    return reference_kind(reference)


#: What a reference may be, for the message of one that is none of them.
_REFERENCE_KINDS = (
    "an image reference is an https:// URL, a data:image/... URI, or a file: a local path "
    "(relative to {base}), file://... or s3://..."
)


def _reason(error: ImageReferenceError, base_dir: Any = None) -> str:
    source = f"{shorten(error.source, 120)}: " if error.source else ""
    reason = error.reason
    if reason == "no such file":
        where = str(base_dir) if base_dir is not None else "the project root"
        reason += "; " + _REFERENCE_KINDS.format(base=where)
    return f"{source}{reason}"


def check_unchanged(files: Mapping[str, str]) -> None:
    """Refuse, before anything is uploaded, files whose content is no longer what was validated.

    ``files`` maps upload tokens to the files they came from (a batch's about to be sent). Each
    file is read and hashed again, one at a time; a changed or missing file raises
    ``ImageReferenceError`` naming every one of them.
    """
    problems: list[str] = []
    for token, source in files.items():
        try:
            loaded = load_reference(source)
        except ImageReferenceError as error:
            problems.append(f"{_reason(error)} (validated, gone since)")
            continue
        if loaded.sha256 != token_sha256(token):
            problems.append(
                f"{shorten(_display(source), 120)}: the file changed after the batch was "
                "validated (its content hash moved)"
            )
    if problems:
        shown = "; ".join(problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ImageReferenceError(
            f"{shown}{more}. Materialize the step's prompts again to validate the new content"
        )


async def resolve_upload_tokens(
    request: Mapping[str, Any],
    sources: Mapping[str, str],
    resolver: AsyncReferenceResolver,
) -> dict[str, Any]:
    """``request`` with every upload token replaced by the asset URL of its file.

    Each file is read again and must still have the content it was validated with (a file
    changed since is refused: validate the batch again); the resolver uploads it once per
    content hash and account (or finds the earlier upload).
    """

    async def value(item: Any) -> Any:
        sha256 = token_sha256(item)
        if sha256 is None:
            if isinstance(item, Mapping):
                return {key: await value(sub) for key, sub in item.items()}
            if isinstance(item, list | tuple):
                return [await value(sub) for sub in item]
            return item
        source = sources.get(item)
        if source is None:
            raise ImageReferenceError(
                f"the validated request names file {sha256[:12]}... but not where it came "
                "from; materialize the step's prompts again"
            )
        resolved = await resolver.resolve(source)
        if resolved.sha256 != sha256:
            raise ImageReferenceError(
                "the file changed after the batch was validated (its content hash moved); "
                "materialize the step's prompts again to validate the new content",
                source=_display(source),
            )
        return resolved.value

    return {key: await value(item) for key, item in request.items()}


# -- an uploaded file Krea no longer has --------------------------------------------------------


async def forget_gone_uploads(
    client: AsyncKreaClient, cache: UploadCache, request: Mapping[str, Any]
) -> list[CachedUpload]:
    """The uploaded files ``request`` names whose asset Krea no longer has, each forgotten by
    the cache, so resolving the file again uploads it once more.

    Krea refuses a request naming a deleted asset ("Input file rejected"), and fails a job
    whose asset was deleted before it ran; the cache would hand out the dead URL forever. The
    evidence is Krea's own: ``GET /assets/{id}`` answering 404. Any other answer (the asset is
    there, or Krea could not be asked) forgets nothing, so a refusal for another reason stays
    one.
    """
    urls = {value for value in string_leaves(request) if "://" in value}
    if not urls:
        return []
    named = await asyncio.to_thread(cache.named, urls)
    gone: list[CachedUpload] = []
    for upload in named:
        if upload.asset_id is None:
            continue
        try:
            await client.get_asset(upload.asset_id)
        except NotFoundError:
            gone.append(upload)
            if await asyncio.to_thread(cache.forget, upload.sha256, upload.url):
                logger.warning(
                    "asset %s (file %s...) is gone at Krea: the file is uploaded again before "
                    "its next use",
                    upload.asset_id,
                    upload.sha256[:12],
                )
        except KreaError as error:
            logger.warning(
                "could not check asset %s at Krea (%s); its upload is kept", upload.asset_id, error
            )
    return gone
