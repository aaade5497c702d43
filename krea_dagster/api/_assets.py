"""Flows over ``/assets`` shared by both clients: upload, list, delete, reconcile an upload.

An upload is a create: ``POST /assets`` has no idempotency key, so it is judged by the same
predicate as a generation POST (``retries.decide(RequestKind.CREATE, ...)``). It is resent only
when Krea provably never saw it (a connect failure, a 429); after a failure that may have
happened once Krea had the file (a read timeout, a dropped connection, a 5xx) it is *not*
resent: ``GET /assets`` is searched for the asset instead. The key of that search is the
``description`` every upload carries, which starts with ``sha256:<hex of the bytes>``, together
with the size and the upload time (not before the attempt was sent, minus a clock skew).

The file is checked before anything is sent: not empty, at most 75 MB, and one of the types
Krea accepts (JPEG, PNG, WebP, HEIC, MP4, MOV, WebM, GLB, WAV, MP3), recognised by its first
bytes, not by its name.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from krea_dagster.api._core import Flow, Offload, RequestCore, Sleep, decode_body, read_json
from krea_dagster.api.config import DEFAULT_CLOCK_SKEW
from krea_dagster.api.errors import (
    AmbiguousUploadError,
    KreaError,
    MalformedPayloadError,
    NotFoundError,
)
from krea_dagster.api.models import Asset, AssetList, as_aware
from krea_dagster.api.retries import RequestKind, RetryDecision, Verdict, decide
from krea_dagster.api.uploads import (
    ALLOWED_UPLOAD_TYPES,
    check_upload,
    description_sha256,
    read_upload_file,
    upload_description,
)

__all__: list[str] = []

logger = logging.getLogger("krea_dagster.api")
_PATH = "/assets"


class AssetPager:
    """Walks ``GET /assets`` pages newest first; stops at the end or past ``uploaded_after``."""

    def __init__(self, *, limit: int, uploaded_after: datetime | None = None) -> None:
        self.limit = limit
        self.uploaded_after = as_aware(uploaded_after) if uploaded_after is not None else None
        self.cursor: str | None = None
        self.pages = 0
        self.done = False

    def accept(self, page: AssetList) -> list[Asset]:
        """The assets of ``page`` to hand out (it marks the pager done at the end)."""
        self.pages += 1
        emitted = []
        for asset in page.items:
            if self.uploaded_after is not None and asset.uploaded_at < self.uploaded_after:
                self.done = True  # newest first: the rest are older still
                break
            emitted.append(asset)
        if page.next_cursor is None or not page.items:
            self.done = True
        self.cursor = page.next_cursor
        return emitted

    def next_page(self, core: RequestCore, max_retries: int | None) -> Flow[AssetList]:
        page = yield from list_assets(
            core, cursor=self.cursor, limit=self.limit, max_retries=max_retries
        )
        return page


def list_assets(
    core: RequestCore,
    *,
    cursor: str | datetime | None = None,
    limit: int = 100,
    max_retries: int | None = None,
) -> Flow[AssetList]:
    """One page of ``GET /assets`` (assets uploaded strictly before ``cursor``)."""
    if not 1 <= limit <= 1000:
        raise ValueError(f"limit must be between 1 and 1000, got {limit}")
    params = {
        "limit": limit,
        "cursor": as_aware(cursor).isoformat() if isinstance(cursor, datetime) else cursor,
    }
    response = yield from core.request("GET", _PATH, params=params, max_retries=max_retries)
    return core.parse(AssetList.from_api, response, "GET", _PATH)


def get_asset(core: RequestCore, asset_id: str, *, max_retries: int | None = None) -> Flow[Asset]:
    """``GET /assets/{id}``."""
    response = yield from core.request(
        "GET", "/assets/{id}", path_params={"id": asset_id}, max_retries=max_retries
    )
    return core.parse(Asset.from_api, response, "GET", "/assets/{id}")


def delete_asset(core: RequestCore, asset_id: str, *, max_retries: int | None = None) -> Flow[bool]:
    """``DELETE /assets/{id}``; Krea's ``success``. A 404 on a retry means the first one worked."""
    try:
        response = yield from core.request(
            "DELETE", "/assets/{id}", path_params={"id": asset_id}, max_retries=max_retries
        )
    except NotFoundError as error:
        if error.attempts > 1:
            # An earlier attempt was answered too late or not at all, and it did delete.
            logger.info("asset %s already gone on retry: deleted by an earlier attempt", asset_id)
            return True
        raise
    body = decode_body(response)
    success = body.get("success", True) if isinstance(body, dict) else True
    logger.info("asset %s deleted (success=%s)", asset_id, success)
    return bool(success)


def find_upload(
    core: RequestCore,
    sha256: str,
    *,
    size: int | None = None,
    uploaded_after: datetime | None = None,
    max_retries: int | None = None,
) -> Flow[Asset | None]:
    """The oldest asset whose description carries ``sha256`` (and whose size matches), if any.

    Pages newest first and stops at assets older than ``uploaded_after``; without it every
    asset of the account is read.
    """
    pager = AssetPager(limit=1000, uploaded_after=uploaded_after)
    match: Asset | None = None
    while not pager.done:
        page = yield from pager.next_page(core, max_retries)
        for asset in pager.accept(page):
            if description_sha256(asset.description) != sha256:
                continue
            if size is not None and asset.size_bytes is not None and asset.size_bytes != size:
                continue
            match = asset  # keep going: the oldest match is the one the first attempt made
    return match


def reconcile_upload(
    core: RequestCore,
    error: AmbiguousUploadError,
    *,
    skew: float = DEFAULT_CLOCK_SKEW,
    max_retries: int | None = None,
) -> Flow[Asset | None]:
    """The asset an ambiguous upload created, or None if ``GET /assets`` still shows none."""
    found = yield from find_upload(
        core,
        error.sha256,
        size=error.size,
        uploaded_after=error.sent_at - timedelta(seconds=skew),
        max_retries=max_retries,
    )
    return found


def upload_asset(
    core: RequestCore,
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    *,
    filename: str | None = None,
    description: str | None = None,
    skew: float = DEFAULT_CLOCK_SKEW,
    max_retries: int | None = None,
) -> Flow[Asset]:
    """``POST /assets`` (multipart): checked first, never resent once it may have arrived."""
    if isinstance(source, bytes | bytearray | memoryview):
        data, where = bytes(source), filename
    else:
        path = Path(source)
        data = yield Offload(functools.partial(read_upload_file, path))
        where, filename = str(path), filename or path.name
    mime_type = check_upload(data, source=where)
    sha256 = hashlib.sha256(data).hexdigest()
    text = upload_description(sha256, description)
    name = filename or f"{sha256[:16]}.{ALLOWED_UPLOAD_TYPES[mime_type]}"
    allowed = core.max_retries_for(max_retries)
    attempts = retries = 0
    while True:
        attempts += 1
        sent_at = core.clock.now()
        request = core.build_request(
            "POST",
            core.url_for(_PATH),
            files={"file": (name, data, mime_type)},
            data={"description": text},
            timeout=core.config.timeouts.for_json(),
            retries_taken=attempts - 1,
        )
        core.stats.record_request("POST", _PATH)
        outcome: httpx.Response | Exception
        try:
            outcome = yield from core.send(request)
        except httpx.TransportError as exc:
            outcome = exc
        decision = decide(RequestKind.CREATE, outcome)
        if decision.verdict is Verdict.DONE:
            if not (isinstance(outcome, httpx.Response) and outcome.is_success):
                raise core.final_error(outcome, "POST", _PATH, attempts, decision.reason)
            try:
                asset = Asset.from_api(read_json(outcome))
            except (ValueError, MalformedPayloadError):
                # Krea stored something, but its answer cannot be read: look for it.
                decision = RetryDecision(Verdict.AMBIGUOUS, "the 2xx body is not an asset")
            else:
                core.stats.increment("assets_uploaded")
                logger.info(
                    "POST /assets -> %s: asset %s (%d bytes, %s)",
                    outcome.status_code,
                    asset.id,
                    len(data),
                    mime_type,
                )
                return asset
        if decision.verdict is Verdict.AMBIGUOUS:
            core.stats.increment("ambiguous_uploads")
            logger.warning(
                "POST /assets outcome unknown (%s); looking for the asset in GET /assets, not "
                "resending",
                decision.reason,
            )
            error = AmbiguousUploadError(
                sha256=sha256,
                size=len(data),
                description=text,
                sent_at=sent_at,
                cause=outcome if isinstance(outcome, BaseException) else decision.reason,
                request_timeout=core.config.timeouts.request_window or float("inf"),
            )
            if isinstance(outcome, BaseException):
                error.__cause__ = outcome
            try:
                found = yield from reconcile_upload(core, error, skew=skew, max_retries=max_retries)
            except KreaError as lookup_error:
                logger.warning("GET /assets failed while reconciling an upload: %s", lookup_error)
                raise error from lookup_error
            if found is None:
                raise error
            core.stats.increment("uploads_reconciled")
            logger.info("ambiguous upload found as asset %s: not resent", found.id)
            return found
        # Verdict.RETRY or RETRY_CAPACITY: Krea never saw it, or refused it (429) without
        # storing anything: resending cannot make a second asset.
        delay = core.retry_delay(outcome, "POST", _PATH, retries, allowed, decision.reason)
        retries += 1
        yield Sleep(delay)
