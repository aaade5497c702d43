"""Which model catalog validates a batch: the backend's live one, cached, or the bundled one.

``catalog_for`` is the one entry point. With the live catalog on (the default), it reads the
backend's ``GET /openapi.json``, derives the catalog with the same code as the bundled build
(``krea_dagster.api.catalog_source``) and caches it in the ledger database with the document's
ETag, SHA-256 and fetch time, where every process of the deployment finds it:

- fresh (asked less than ``max_age`` seconds ago): the cached catalog, no request;
- stale: a conditional request (``If-None-Match``); 304 or the same bytes keeps the cached
  derivation, a new document is derived and stored;
- the fetch or the derivation fails (unreachable, slow, too big, too deep, not JSON, a schema
  that does not compile): the cached catalog, else the bundled one, with the cause in
  ``origin.fallback`` for the caller to warn about once; the failure is cached like an answer,
  so the processes of a deployment do not ask a failing backend again before ``max_age``.

Everything is bounded: a byte cap, a nesting cap and a total deadline per fetch.
"""

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from krea_dagster.api.catalog import CatalogOrigin, ModelCatalog, ModelSpec, bundled_catalog
from krea_dagster.api.catalog_source import (
    DEFAULT_CATALOG_DEADLINE,
    DERIVATION_VERSION,
    CatalogDocumentError,
    derive_catalog,
    document_sha256,
    fetch_openapi,
    read_document,
)
from krea_dagster.engine.ledger import CachedCatalog, Ledger, utcnow

__all__ = [
    "DEFAULT_CATALOG_MAX_AGE",
    "CatalogChanges",
    "CatalogSettings",
    "catalog_changes",
    "catalog_for",
    "resolutions",
]

#: Seconds a live catalog (or a failed check) is trusted before the backend is asked again.
DEFAULT_CATALOG_MAX_AGE = 3600.0

#: How each resolution of this process went (``cache``, ``not_modified``, ``fetched``,
#: ``failed``, ``off``) and the seconds spent fetching and deriving: the figures benchmarks
#: and the issue's closing note read.
resolutions: Counter[str] = Counter()
timings: dict[str, list[float]] = {"fetch": [], "derive": []}


@dataclass(frozen=True)
class CatalogSettings:
    """How a resource wants its catalog (``KreaResource.catalog_settings``)."""

    base_url: str
    live: bool = True
    max_age: float = DEFAULT_CATALOG_MAX_AGE
    #: Models sent unvalidated when no catalog lists them (the user's explicit opt-in).
    unvalidated_models: tuple[str, ...] = ()
    deadline: float = DEFAULT_CATALOG_DEADLINE


@dataclass(frozen=True)
class CatalogChanges:
    """What a live catalog adds to, drops from and reprices in the bundled one."""

    new: tuple[ModelSpec, ...]
    gone: tuple[ModelSpec, ...]
    repriced: tuple[tuple[ModelSpec, ModelSpec], ...] = field(default=())


def catalog_for(
    settings: CatalogSettings,
    ledger: Ledger,
    *,
    refresh: bool = False,
    transport: httpx.BaseTransport | None = None,
) -> ModelCatalog:
    """The catalog that validates this backend's batches now (see the module docstring).

    ``refresh`` asks the backend even when the cached copy is fresh (``krea-dagster catalog
    --refresh``). Never raises for a bad document: the cause is in ``origin.fallback``.
    """
    unvalidated = settings.unvalidated_models
    if not settings.live:
        resolutions["off"] += 1
        return _bundled(None, unvalidated, live_off=True)
    base_url = settings.base_url.rstrip("/")
    cache = ledger.catalog_cache()
    row = cache.get(base_url)
    usable = row if row is not None and _usable(row) else None
    if row is not None and not refresh and utcnow() - row.checked_at < _age(settings):
        resolutions["cache"] += 1
        if usable is not None:
            return _live(usable, unvalidated, fallback=_stale_note(row))
        return _bundled(_failure_note(base_url, row.error or "unknown cause"), unvalidated)
    started = time.monotonic()
    try:
        fetched = fetch_openapi(
            base_url,
            etag=usable.etag if usable is not None else None,
            deadline=settings.deadline,
            transport=transport,
        )
        timings["fetch"].append(time.monotonic() - started)
        if fetched.not_modified and usable is not None:
            resolutions["not_modified"] += 1
            cache.confirm(base_url, etag=usable.etag)
            return _live(usable, unvalidated)
        assert fetched.body is not None
        sha256 = document_sha256(fetched.body)
        if usable is not None and usable.sha256 == sha256:
            resolutions["not_modified"] += 1
            cache.confirm(base_url, etag=fetched.etag)
            return _live(usable, unvalidated)
        derived = time.monotonic()
        catalog_json = _derive(fetched.body)
        timings["derive"].append(time.monotonic() - derived)
    except CatalogDocumentError as error:
        resolutions["failed"] += 1
        cache.record_failure(base_url, error.cause)
        if usable is not None:
            return _live(usable, unvalidated, fallback=_stale_note(usable, error.cause))
        return _bundled(_failure_note(base_url, error.cause), unvalidated)
    resolutions["fetched"] += 1
    stored = cache.store(
        base_url,
        etag=fetched.etag,
        sha256=sha256,
        derivation=DERIVATION_VERSION,
        catalog_json=catalog_json,
    )
    return _live(stored, unvalidated)


def catalog_changes(live: ModelCatalog, bundled: ModelCatalog | None = None) -> CatalogChanges:
    """Models the live catalog adds, drops and reprices against the bundled one."""
    bundled = bundled or bundled_catalog()
    new = tuple(spec for key, spec in sorted(live.specs.items()) if key not in bundled.specs)
    gone = tuple(spec for key, spec in sorted(bundled.specs.items()) if key not in live.specs)
    repriced = tuple(
        (bundled.specs[key], spec)
        for key, spec in sorted(live.specs.items())
        if key in bundled.specs and _usd(bundled.specs[key]) != _usd(spec)
    )
    return CatalogChanges(new, gone, repriced)


def _usd(spec: ModelSpec) -> tuple[float, tuple[float, ...]] | None:
    if spec.price is None:
        return None
    return spec.price.usd, tuple(point.usd for point in spec.price.points)


def _age(settings: CatalogSettings) -> timedelta:
    return timedelta(seconds=max(settings.max_age, 0.0))


def _usable(row: CachedCatalog) -> bool:
    return row.catalog_json is not None and row.derivation == DERIVATION_VERSION


def _derive(raw: bytes) -> str:
    """The live catalog of a document, as JSON; CatalogDocumentError when it cannot be used."""
    document = read_document(raw)
    bundled = bundled_catalog()
    previous = {key: {"price": _price_entry(spec)} for key, spec in bundled.specs.items()}
    data = derive_catalog(
        document,
        previous=previous,
        usd_per_compute_unit=bundled.source.get("usd_per_compute_unit_median"),
        request_schemas=False,
    )
    try:
        ModelCatalog.from_data(data, CatalogOrigin("live", ""))
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise CatalogDocumentError(f"the derived catalog does not load ({error})") from None
    return json.dumps(data, separators=(",", ":"))


def _price_entry(spec: ModelSpec) -> dict[str, Any] | None:
    if spec.price is None:
        return None
    return {
        "usd": spec.price.usd,
        "points": [{"when": dict(p.when), "usd": p.usd} for p in spec.price.points],
        "source": spec.price.source,
    }


# Parsed catalogs by (document SHA-256, derivation): a fresh cache hit costs a row read, not a
# JSON parse of every model.
_PARSED: dict[tuple[str, int], ModelCatalog] = {}
_MAX_PARSED = 8


def _live(
    row: CachedCatalog, unvalidated: Sequence[str], *, fallback: str | None = None
) -> ModelCatalog:
    assert row.catalog_json is not None and row.sha256 is not None
    key = (row.sha256, row.derivation or 0)
    parsed = _PARSED.get(key)
    if parsed is None:
        parsed = ModelCatalog.from_data(json.loads(row.catalog_json), CatalogOrigin("live", ""))
        if len(_PARSED) >= _MAX_PARSED:
            _PARSED.clear()  # a few documents per process at most; simpler than an LRU
        _PARSED[key] = parsed
    origin = CatalogOrigin(
        "live", row.sha256, base_url=row.base_url, fetched_at=row.fetched_at, fallback=fallback
    )
    return ModelCatalog(parsed.specs, origin, unvalidated=unvalidated, source=parsed.source)


def _bundled(
    fallback: str | None, unvalidated: Iterable[str], *, live_off: bool = False
) -> ModelCatalog:
    bundled = bundled_catalog()
    origin = CatalogOrigin(
        "bundled", bundled.origin.fingerprint, fallback=fallback, live_off=live_off
    )
    return ModelCatalog(bundled.specs, origin, unvalidated=unvalidated, source=bundled.source)


def _failure_note(base_url: str, cause: str) -> str:
    return f"the live catalog of {base_url} could not be read ({cause})"


def _stale_note(row: CachedCatalog, cause: str | None = None) -> str | None:
    cause = cause or row.error
    if cause is None:
        return None
    fetched = f"{row.fetched_at:%Y-%m-%d %H:%M UTC}" if row.fetched_at else "earlier"
    return (
        f"the live catalog of {row.base_url} could not be refreshed ({cause}); using the copy "
        f"fetched {fetched}"
    )
