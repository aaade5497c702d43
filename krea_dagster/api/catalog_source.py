"""Where a model catalog comes from: Krea's OpenAPI document, read with bounds and derived once.

``derive_catalog`` is the one derivation: ``scripts/build_catalog.py`` runs it over the captured
document to write the bundled ``krea_models.json``, and the live catalog runs it over what the
backend serves at ``GET /openapi.json``. An entry per ``POST /generate/...`` path holds the
facts a client needs: required fields, field types, enums, bounds, defaults, the deprecated
aliases with their sunset dates, compute units and average time (from the description tables)
and the USD price.

Prices, first source that has one wins (``price.source`` says which):

1. ``x-krea-pricing`` on the operation (``{type: fixed, currency: USD, unit: request,
   price_points: [{amount, dimensions}]}``): ``openapi``;
2. a USD column in the operation's description table (``| Resolution | Price |``): ``openapi``;
3. the prices the caller knows for the bundled build (the facts page): ``doc`` or ``3p``;
4. the price of the same model in a previous catalog (the bundled one, for a live document);
5. the compute units of the description table at the median USD per compute unit of the
   priced models: ``compute-units``.

A model with none of these has no price: its estimate is unknown, never $0.

``read_document`` and ``fetch_openapi`` keep a hostile document harmless: a byte cap, a nesting
cap and a total deadline; a document that cannot be derived raises ``CatalogDocumentError``
naming the cause.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx

from krea_dagster.api.json_values import JSONLimitError, is_finite_number, load_json

__all__ = [
    "DEFAULT_CATALOG_DEADLINE",
    "DEFAULT_MAX_OPENAPI_BYTES",
    "DEFAULT_MAX_OPENAPI_DEPTH",
    "DERIVATION_VERSION",
    "FIELD_FACTS",
    "KREA_HOSTED",
    "CatalogDocumentError",
    "FetchedDocument",
    "KnownPrice",
    "derive_catalog",
    "document_sha256",
    "fetch_openapi",
    "read_document",
    "schema_facts",
]

#: Changes whenever ``derive_catalog`` derives differently: a cached derivation of another
#: version is derived again instead of being trusted.
DERIVATION_VERSION = 1
#: The largest ``/openapi.json`` read (Krea's is about 0.4 MB).
DEFAULT_MAX_OPENAPI_BYTES = 8 * 1024 * 1024
#: The deepest nesting of objects and arrays accepted (Krea's document nests 17 deep).
DEFAULT_MAX_OPENAPI_DEPTH = 64
#: Seconds for the whole fetch (connect, every read), after which the cached or bundled
#: catalog is used.
DEFAULT_CATALOG_DEADLINE = 10.0
# Reads wait at most this long each, so a server that stops sending ends within the deadline
# plus this.
_MAX_READ_WAIT = 5.0

#: Which models Krea runs on its own GPUs (the 3-minute automatic failure) versus external
#: providers (the 2-hour one). The document does not say; the list names the open-weight models
#: (krea-api.md section 5). Nothing else of the catalog is typed by hand.
KREA_HOSTED = frozenset(
    {
        "image/bfl/flux-1-dev",
        "image/bfl/flux-1-kontext-dev",
        "image/qwen/2512",
        "image/z-image/z-image",
    }
)

#: The JSON Schema keywords of a property the validator reads (``schema_facts``).
FIELD_FACTS = (
    "type",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "default",
    "format",
)
_NUMBER_FACTS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_COUNT_FACTS = ("minLength", "maxLength", "minItems", "maxItems")
_PRICE = re.compile(r"\$?\s*([0-9]*\.?[0-9]+)")
_PRICE_HEADER = re.compile(r"\b(price|usd|cost)\b", re.IGNORECASE)
# x-krea-pricing dimension names -> the description tables' column names, which the estimate
# reads (``catalog._pricing_facts``); other dimensions are kept as named and match any request.
_DIMENSIONS = {
    "resolution": "Resolution",
    "duration": "Duration",
    "mode": "Mode",
    "quality": "Quality",
    "audio": "Audio",
    "generateaudio": "Audio",
    "generate_audio": "Audio",
    "hasaudio": "Audio",
}


class CatalogDocumentError(ValueError):
    """An OpenAPI document no catalog can be derived from; ``cause`` says why in a few words."""

    def __init__(self, cause: str) -> None:
        self.cause = cause
        super().__init__(cause)


@dataclass(frozen=True)
class KnownPrice:
    """USD prices of a model known from outside the document (the bundled build's facts page).

    Several values are matched to the compute-unit rows in ascending order; one ``from`` value
    is scaled by compute units across the rows.
    """

    values: tuple[float, ...]
    is_from: bool = False
    source: str = "3p"


@dataclass(frozen=True)
class FetchedDocument:
    """What ``GET /openapi.json`` answered: the body (None on 304 Not Modified) and its ETag."""

    body: bytes | None
    etag: str | None
    seconds: float

    @property
    def not_modified(self) -> bool:
        """The server confirmed the cached copy (the conditional request answered 304)."""
        return self.body is None


def document_sha256(raw: bytes) -> str:
    """The fingerprint of a document: SHA-256 of its bytes."""
    return hashlib.sha256(raw).hexdigest()


# -- reading -------------------------------------------------------------------------------------


def read_document(
    raw: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_OPENAPI_BYTES,
    max_depth: int = DEFAULT_MAX_OPENAPI_DEPTH,
) -> dict[str, Any]:
    """The parsed document, or CatalogDocumentError when it is too big, too deep or not JSON.

    The bounds are those every JSON document from outside is held to (``json_values``), so
    an integer of 5,000 digits is refused here too, before any price is read as a float.
    """
    try:
        document = load_json(raw, max_bytes=max_bytes, max_depth=max_depth)
    except JSONLimitError as error:
        raise CatalogDocumentError(f"the document {error}") from None
    if not isinstance(document, dict):
        raise CatalogDocumentError("the document is not a JSON object")
    return document


def fetch_openapi(
    base_url: str,
    *,
    etag: str | None = None,
    deadline: float = DEFAULT_CATALOG_DEADLINE,
    max_bytes: int = DEFAULT_MAX_OPENAPI_BYTES,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FetchedDocument:
    """``GET <base_url>/openapi.json``, conditional on ``etag``, within ``deadline`` seconds.

    The body is read in chunks and abandoned past ``max_bytes`` or the deadline. Raises
    CatalogDocumentError naming the cause (unreachable, an HTTP status, too big, too slow).
    The document is public: no token is sent.
    """
    started = clock()
    url = base_url.rstrip("/") + "/openapi.json"
    headers = {"Accept": "application/json"}
    if etag:
        headers["If-None-Match"] = etag
    wait = max(min(deadline, _MAX_READ_WAIT), 0.001)
    timeout = httpx.Timeout(wait, connect=wait, pool=wait)
    try:
        with (
            httpx.Client(timeout=timeout, transport=transport, trust_env=False) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == 304 and etag:
                return FetchedDocument(None, etag, clock() - started)
            if response.status_code != 200:
                raise CatalogDocumentError(f"GET {url} answered {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                raise CatalogDocumentError(f"the document has more than {max_bytes} bytes")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise CatalogDocumentError(f"the document has more than {max_bytes} bytes")
                if clock() - started > deadline:
                    raise CatalogDocumentError(f"GET {url} took longer than {deadline:g} s")
                chunks.append(chunk)
            new_etag = response.headers.get("etag")
    except httpx.TimeoutException:
        raise CatalogDocumentError(f"GET {url} took longer than {deadline:g} s") from None
    except CatalogDocumentError:
        raise
    except Exception as error:  # an invalid URL, a refused address: any cause is a fallback
        raise CatalogDocumentError(f"GET {url} failed: {_short(error)}") from None
    if clock() - started > deadline:
        raise CatalogDocumentError(f"GET {url} took longer than {deadline:g} s")
    return FetchedDocument(
        b"".join(chunks), new_etag[:512] if new_etag else None, clock() - started
    )


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# -- derivation ----------------------------------------------------------------------------------


def schema_facts(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The validation facts of one property of a JSON Schema, items included for arrays.

    ``derive_catalog`` derives every model's fields with it; ``catalog.node_app_spec`` the
    fields of a node app from the input schema Krea serves for it.
    """
    facts = {key: schema[key] for key in FIELD_FACTS if key in schema}
    if "items" in schema:
        items = schema["items"]
        item_facts = {key: items[key] for key in FIELD_FACTS if key in items}
        if "properties" in items:
            item_facts["properties"] = {
                name: schema_facts(sub) for name, sub in items["properties"].items()
            }
            item_facts["required"] = list(items.get("required", []))
            item_facts["additionalProperties"] = items.get("additionalProperties", True)
        facts["items"] = item_facts
    if "properties" in schema:
        facts["properties"] = {
            name: schema_facts(sub) for name, sub in schema["properties"].items()
        }
        facts["required"] = list(schema.get("required", []))
    if "anyOf" in schema or "oneOf" in schema:
        facts["anyOf"] = [schema_facts(sub) for sub in schema.get("anyOf", schema.get("oneOf"))]
    return facts


def derive_catalog(
    document: Mapping[str, Any],
    *,
    known_prices: Mapping[str, KnownPrice] | None = None,
    previous: Mapping[str, Mapping[str, Any]] | None = None,
    usd_per_compute_unit: float | None = None,
    request_schemas: bool = True,
    capture: str | None = None,
) -> dict[str, Any]:
    """The catalog of every ``POST /generate/...`` operation of an OpenAPI document.

    ``known_prices`` are USD prices by model path (after ``/generate/image/``) from outside the
    document; ``previous`` the entries of an older catalog by key, whose prices fill in where
    the document gives none; ``usd_per_compute_unit`` prices compute units when the document
    prices no model that has them. ``request_schemas`` keeps each verbatim request schema (the
    emulator of the bundled catalog validates with it). Raises CatalogDocumentError naming the
    first path whose schema does not compile.
    """
    paths = document.get("paths")
    if not isinstance(paths, Mapping):
        raise CatalogDocumentError("the document has no 'paths' object")
    known_prices = known_prices or {}
    models: dict[str, dict[str, Any]] = {}
    for path, operations in paths.items():
        if not isinstance(path, str) or not path.startswith("/generate/"):
            continue
        if not isinstance(operations, Mapping) or "post" not in operations:
            continue
        try:
            entry = _entry(path, operations["post"], document, known_prices)
            _check_entry(entry)
        except CatalogDocumentError as error:
            raise CatalogDocumentError(f"{_short_path(path)}: {error.cause}") from None
        except (TypeError, AttributeError, KeyError, ValueError, RecursionError) as error:
            raise CatalogDocumentError(
                f"{_short_path(path)}: the request schema does not compile ({_short(error)})"
            ) from None
        if not request_schemas:
            entry.pop("request_schema")
        models[entry["key"]] = entry
    if not models:
        raise CatalogDocumentError("the document has no POST /generate/... operation")
    ratio = _usd_per_compute_unit(models.values()) or usd_per_compute_unit
    for key, entry in models.items():
        if entry["price"] is not None:
            continue
        older = (previous or {}).get(key, {}).get("price")
        if older and older.get("source") != "compute-units":
            entry["price"] = dict(older)
        elif ratio:
            entry["price"] = _compute_unit_price(entry["compute_units"], ratio)
    info = document.get("info")
    if not isinstance(info, Mapping):
        info = {}
    source: dict[str, Any] = {
        "openapi_title": str(info.get("title", ""))[:200],
        "openapi_version": str(info.get("version", ""))[:64],
    }
    if capture:
        source["capture"] = capture
    source["usd_per_compute_unit_median"] = ratio  # unrounded: a live derivation reuses it
    source["derivation"] = DERIVATION_VERSION
    for entry in models.values():
        del entry["key"]
    return {"source": source, "models": dict(sorted(models.items()))}


def _short_path(path: str) -> str:
    return path if len(path) <= 120 else path[:117] + "..."


def _entry(
    path: str,
    operation: Any,
    document: Mapping[str, Any],
    known_prices: Mapping[str, KnownPrice],
) -> dict[str, Any]:
    if not isinstance(operation, Mapping):
        raise CatalogDocumentError("the operation is not an object")
    kind, _, model_path = path.removeprefix("/generate/").partition("/")
    if not kind or not model_path:
        raise CatalogDocumentError("the path names no model")
    try:
        content = operation["requestBody"]["content"]["application/json"]
        schema = content["schema"]
    except (KeyError, TypeError):
        raise CatalogDocumentError("no JSON request schema") from None
    schema = _inline_refs(schema, document)
    if not isinstance(schema, Mapping):
        raise CatalogDocumentError("the request schema is not an object")
    description = operation.get("description")
    cu_rows, usd_rows, avg_seconds = _description_tables(
        description if isinstance(description, str) else ""
    )
    key = f"{kind}/{model_path}"
    price = (
        _pricing_extension(operation.get("x-krea-pricing"))
        or _table_price(usd_rows)
        or (_known_price(cu_rows, known_prices.get(model_path)) if kind == "image" else None)
    )
    properties = schema.get("properties", {})
    summary = operation.get("summary")
    return {
        "key": key,
        "kind": kind,
        "model": model_path,
        "path": path,
        "name": summary[:200] if isinstance(summary, str) and summary else model_path,
        "required": list(schema.get("required", [])),
        "additional_properties": schema.get("additionalProperties", True),
        "fields": {name: schema_facts(sub) for name, sub in properties.items()},
        "aliases": [
            {"from": a["from"], "to": a["to"], "sunset_date": a["sunset_date"]}
            for a in operation.get("x-krea-deprecated-field-aliases", [])
        ],
        "compute_units": cu_rows,
        "avg_seconds": avg_seconds,
        "hosted_by_krea": key in KREA_HOSTED,
        "price": price,
        "example": content.get("example"),
        "request_schema": schema,
    }


def _inline_refs(schema: Any, document: Mapping[str, Any], depth: int = 0) -> Any:
    """The schema with local ``$ref``s (``#/components/...``) replaced by what they name."""
    if depth > DEFAULT_MAX_OPENAPI_DEPTH:
        raise CatalogDocumentError("the request schema's $refs nest too deep (a cycle?)")
    if isinstance(schema, list):
        return [_inline_refs(item, document, depth + 1) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    if "$ref" in schema:
        reference = schema["$ref"]
        if not isinstance(reference, str) or not reference.startswith("#/"):
            raise CatalogDocumentError(f"unsupported $ref {str(reference)[:80]!r}")
        target: Any = document
        for part in reference[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise CatalogDocumentError(f"$ref {reference[:80]!r} names nothing")
            target = target[part]
        return _inline_refs(target, document, depth + 1)
    return {key: _inline_refs(value, document, depth + 1) for key, value in schema.items()}


def _description_tables(
    description: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float | None]:
    """Compute-unit rows, USD rows (each with its conditions) and the average seconds."""
    cu_rows: list[dict[str, Any]] = []
    usd_rows: list[dict[str, Any]] = []
    avg_seconds: float | None = None
    lines = [line.strip() for line in description.splitlines() if line.strip().startswith("|")]
    if len(lines) < 3:
        return cu_rows, usd_rows, None
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header):
            continue
        conditions: dict[str, str] = {}
        compute_units: float | None = None
        usd: float | None = None
        for name, cell in zip(header, cells, strict=True):
            if name == "Compute Units":
                compute_units = _number_cell(cell)
            elif name == "Average Completion Time":
                avg_seconds = _seconds_cell(cell) or avg_seconds
            elif _PRICE_HEADER.search(name):
                usd = _number_cell(cell)
            else:
                conditions[name] = cell
        if compute_units is not None:
            cu_rows.append({"when": conditions, "compute_units": compute_units})
        if usd is not None:
            usd_rows.append({"when": conditions, "usd": usd})
    return cu_rows, usd_rows, avg_seconds


def _number_cell(cell: str) -> float | None:
    match = _PRICE.search(cell.replace(",", ""))
    if match is None:
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def _seconds_cell(cell: str) -> float | None:
    parts = cell.lstrip("~").split()
    if len(parts) < 2:
        return None
    value = _number_cell(parts[0])
    if value is None:
        return None
    return value * (60 if parts[1].startswith("minute") else 1)


def _table_price(usd_rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not usd_rows:
        return None
    return {
        "usd": min(row["usd"] for row in usd_rows),
        "points": [row for row in usd_rows if row["when"]],
        "source": "openapi",
    }


def _pricing_extension(pricing: Any) -> dict[str, Any] | None:
    """The price of an ``x-krea-pricing`` block, None when absent or not a USD price per request."""
    if not isinstance(pricing, Mapping):
        return None
    if pricing.get("type", "fixed") != "fixed" or pricing.get("currency", "USD") != "USD":
        return None
    if pricing.get("unit", "request") != "request":
        return None
    points: list[dict[str, Any]] = []
    raw_points = pricing.get("price_points")
    for point in raw_points if isinstance(raw_points, list) else []:
        if not isinstance(point, Mapping):
            continue
        usd = _amount(point.get("amount", point.get("usd")))
        if usd is None:
            continue
        dimensions = point.get("dimensions")
        when = {
            _DIMENSIONS.get(str(name).lower(), str(name)): _dimension_value(
                _DIMENSIONS.get(str(name).lower(), ""), value
            )
            for name, value in (dimensions.items() if isinstance(dimensions, Mapping) else ())
        }
        points.append({"when": when, "usd": usd})
    if not points:
        return None
    return {
        "usd": min(point["usd"] for point in points),
        "points": [point for point in points if point["when"]],
        "source": "openapi",
    }


def _amount(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = float(value)
    except (ValueError, OverflowError):  # "1e999" is inf; an int past floats is no price
        return None
    return amount if math.isfinite(amount) and amount >= 0 else None


def _dimension_value(column: str, value: Any) -> str:
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, int | float):
        text = str(int(value)) if float(value).is_integer() else repr(float(value))
        return f"{text}s" if column == "Duration" else text
    return str(value)[:64]


def _known_price(cu_rows: list[dict[str, Any]], known: KnownPrice | None) -> dict[str, Any] | None:
    if known is None or not known.values:
        return None
    values = list(known.values)
    points: list[dict[str, Any]] = []
    ordered = sorted(cu_rows, key=lambda row: row["compute_units"])
    if len(values) > 1 and len(values) == len(ordered):
        for row, usd in zip(ordered, sorted(values), strict=True):
            points.append({"when": row["when"], "usd": usd})
    elif len(values) == 1 and known.is_from and len(ordered) > 1:
        base_cu = ordered[0]["compute_units"]
        for row in ordered:
            usd = round(values[0] * row["compute_units"] / base_cu, 4)
            points.append({"when": row["when"], "usd": usd})
    return {
        "usd": min(values),
        "points": [p for p in points if p["when"]],
        "source": known.source,
    }


def _usd_per_compute_unit(entries: Iterable[Mapping[str, Any]]) -> float | None:
    ratios = [
        entry["price"]["usd"] / min(row["compute_units"] for row in entry["compute_units"])
        for entry in entries
        if entry["price"]
        and entry["compute_units"]
        and min(row["compute_units"] for row in entry["compute_units"]) > 0
    ]
    return statistics.median(ratios) if ratios else None


def _compute_unit_price(cu_rows: list[dict[str, Any]], usd_per_cu: float) -> dict[str, Any] | None:
    if not cu_rows:
        return None
    points = [
        {"when": row["when"], "usd": round(row["compute_units"] * usd_per_cu, 4)}
        for row in cu_rows
        if row["when"]
    ]
    return {
        "usd": round(min(row["compute_units"] for row in cu_rows) * usd_per_cu, 4),
        "points": points,
        "source": "compute-units",
    }


# -- does it compile -----------------------------------------------------------------------------


def _check_entry(entry: Mapping[str, Any]) -> None:
    """Every fact of the entry has the shape the validator reads (CatalogDocumentError if not)."""
    if not _is_str_list(entry["required"]):
        raise CatalogDocumentError("'required' is not a list of field names")
    if not isinstance(entry["additional_properties"], bool | Mapping):
        raise CatalogDocumentError("'additionalProperties' is neither a boolean nor a schema")
    for name, facts in entry["fields"].items():
        _check_facts(facts, str(name))
    for alias in entry["aliases"]:
        if not (isinstance(alias["from"], str) and isinstance(alias["to"], str)):
            raise CatalogDocumentError("a deprecated alias does not name two fields")
        try:
            date.fromisoformat(alias["sunset_date"])
        except (TypeError, ValueError):
            raise CatalogDocumentError(
                f"alias {alias['from'][:40]!r}: sunset_date is not an ISO date"
            ) from None


def _check_facts(facts: Any, where: str) -> None:
    if not isinstance(facts, Mapping):
        raise CatalogDocumentError(f"{where[:80]}: the schema is not an object")
    kind = facts.get("type")
    if kind is not None and not (isinstance(kind, str) or _is_str_list(kind)):
        raise CatalogDocumentError(f"{where[:80]}: 'type' is {_shape(kind)}")
    if "enum" in facts and not isinstance(facts["enum"], list):
        raise CatalogDocumentError(f"{where[:80]}: 'enum' is {_shape(facts['enum'])}")
    for name in _NUMBER_FACTS:
        value = facts.get(name)
        if value is not None and not is_finite_number(value):
            raise CatalogDocumentError(f"{where[:80]}: {name!r} is {_shape(value)}")
    for name in _COUNT_FACTS:
        value = facts.get(name)
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ):
            raise CatalogDocumentError(f"{where[:80]}: {name!r} is {_shape(value)}")
    if "format" in facts and not isinstance(facts["format"], str):
        raise CatalogDocumentError(f"{where[:80]}: 'format' is {_shape(facts['format'])}")
    if "required" in facts and not _is_str_list(facts["required"]):
        raise CatalogDocumentError(f"{where[:80]}: 'required' is not a list of names")
    if "additionalProperties" in facts and not isinstance(
        facts["additionalProperties"], bool | Mapping
    ):
        raise CatalogDocumentError(f"{where[:80]}: 'additionalProperties' is not a boolean")
    if "items" in facts:
        _check_facts(facts["items"], f"{where}[]")
    for name, sub in facts.get("properties", {}).items():
        _check_facts(sub, f"{where}.{name}")
    for sub in facts.get("anyOf", []):
        _check_facts(sub, where)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _shape(value: Any) -> str:
    return f"a {type(value).__name__}" if not isinstance(value, str) else repr(value[:40])
