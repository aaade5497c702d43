"""The model catalog and the OpenAPI document, read from the package data files.

The emulator is an independent implementation of the Krea contract: it reads the facts that
``scripts/build_catalog.py`` derived from Krea's OpenAPI document (``krea_dagster/data``) and
never imports the client package ``krea_dagster.api``.

Choices where Krea's documents are silent:

- Job type names (the ``types`` filter of ``GET /jobs``; the document only gives the examples
  ``flux,k1,externalImage``): ``flux`` for ``bfl/flux-1-dev`` and ``bfl/flux-1-kontext-dev``,
  ``externalImage`` for every other image model, ``externalVideo`` for video models and
  ``enhance`` for the enhance models. Unknown type names simply match no job.
- Render time when the document gives no average: 20 s for an image, 30 s for an enhance and
  120 s for a video model.
- Automatic failure (``error.code = "timeout"``): 3 minutes for models Krea hosts itself
  (``hosted_by_krea``) and 2 hours for external providers (krea-api.md section 5).

Another document (the ``openapi`` knob: Krea's document as it is now, with models this release
does not know) is served instead of the bundled one, and its ``POST /generate`` operations are
the models served: a model it adds validates against its own request schema (read here, not
with the client's derivation, so the two still check each other), and a model it drops answers
404. Its price is the lowest ``x-krea-pricing`` amount, else the default price.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from krea_dagster.emulator.errors import BadRequest

DATA_PACKAGE = "krea_dagster.data"
CATALOG_FILE = "krea_models.json"
OPENAPI_FILE = "krea-openapi.json"

DEFAULT_SECONDS_BY_KIND = {"image": 20.0, "enhance": 30.0, "video": 120.0}
HOSTED_TIMEOUT_SECONDS = 3 * 60.0
EXTERNAL_TIMEOUT_SECONDS = 2 * 60 * 60.0
FLUX_MODELS = frozenset({"bfl/flux-1-dev", "bfl/flux-1-kontext-dev"})
JOB_TYPES = ("flux", "externalImage", "externalVideo", "enhance")


@dataclass(frozen=True)
class DeprecatedAlias:
    """A camelCase field name accepted in place of its snake_case name until a sunset date."""

    old: str
    new: str
    sunset_date: str


@dataclass(frozen=True)
class ModelSpec:
    """One ``POST /generate/...`` operation with the facts the emulator needs."""

    key: str
    kind: str
    model: str
    path: str
    fields: dict[str, Any]
    aliases: tuple[DeprecatedAlias, ...]
    avg_seconds: float | None
    hosted_by_krea: bool
    price: dict[str, Any] | None
    example: dict[str, Any] | None
    request_schema: dict[str, Any]

    @classmethod
    def from_entry(cls, key: str, entry: dict[str, Any]) -> ModelSpec:
        """Build a spec from one ``models`` entry of ``krea_models.json``."""
        return cls(
            key=key,
            kind=entry["kind"],
            model=entry["model"],
            path=entry["path"],
            fields=entry.get("fields", {}),
            aliases=tuple(
                DeprecatedAlias(a["from"], a["to"], a["sunset_date"]) for a in entry["aliases"]
            ),
            avg_seconds=entry.get("avg_seconds"),
            hosted_by_krea=bool(entry.get("hosted_by_krea")),
            price=entry.get("price"),
            example=entry.get("example"),
            request_schema=entry["request_schema"],
        )

    @property
    def job_type(self) -> str:
        """The internal job type name used by the ``types`` filter of ``GET /jobs``."""
        if self.kind == "video":
            return "externalVideo"
        if self.kind == "enhance":
            return "enhance"
        return "flux" if self.model in FLUX_MODELS else "externalImage"

    @property
    def nominal_seconds(self) -> float:
        """Average render time from the document, or the per-kind default."""
        if self.avg_seconds:
            return float(self.avg_seconds)
        return DEFAULT_SECONDS_BY_KIND.get(self.kind, DEFAULT_SECONDS_BY_KIND["image"])

    @property
    def timeout_seconds(self) -> float:
        """Unscaled time after which Krea fails a job that has not finished."""
        return HOSTED_TIMEOUT_SECONDS if self.hosted_by_krea else EXTERNAL_TIMEOUT_SECONDS

    def default(self, field: str) -> Any:
        """The schema default of a top-level field, or None."""
        return self.fields.get(field, {}).get("default")


def _read_json(name: str) -> Any:
    return json.loads(resources.files(DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8"))


@cache
def load_models() -> dict[str, ModelSpec]:
    """All generation models keyed like ``image/openai/gpt-image-2``."""
    catalog = _read_json(CATALOG_FILE)
    return {key: ModelSpec.from_entry(key, entry) for key, entry in catalog["models"].items()}


@cache
def openapi_text() -> str:
    """The verbatim OpenAPI document, served at ``GET /openapi.json``."""
    return resources.files(DATA_PACKAGE).joinpath(OPENAPI_FILE).read_text(encoding="utf-8")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document parsed (a fresh copy each call)."""
    document: dict[str, Any] = json.loads(openapi_text())
    return document


@dataclass(frozen=True)
class ServedDocument:
    """The document served at ``GET /openapi.json``, its ETag, and the models it describes."""

    text: str
    etag: str
    models: dict[str, ModelSpec]


class DocumentRegistry:
    """The document served: the ``openapi`` knob's (reloaded when it changes), else the bundled.

    ``models`` holds every model a served document described, so a job keeps its spec when
    the knob changes; ``get(source).models`` are the models served now.
    """

    def __init__(self) -> None:
        self.source: str | None = None
        self.current = _bundled_document()
        self.models: dict[str, ModelSpec] = dict(self.current.models)

    def get(self, source: str | None) -> ServedDocument:
        """The document of ``source`` (a JSON file path; None: the bundled one)."""
        if source != self.source:
            self.current = load_document(source) if source else _bundled_document()
            self.source = source
            self.models.update(self.current.models)
        return self.current


@cache
def _bundled_document() -> ServedDocument:
    return _served(openapi_text(), load_models())


def load_document(path: str | Path) -> ServedDocument:
    """The document of a JSON file and its models (BadRequest naming the fault)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        document = json.loads(text)
    except (OSError, ValueError) as error:
        raise BadRequest(f"openapi: cannot read {path}: {error}") from None
    paths = document.get("paths") if isinstance(document, dict) else None
    if not isinstance(paths, dict):
        raise BadRequest(f"openapi: {path} is not an OpenAPI document (no 'paths' object)")
    bundled = load_models()
    models: dict[str, ModelSpec] = {}
    for route, operations in paths.items():
        if not route.startswith("/generate/") or "post" not in (operations or {}):
            continue
        kind, _, model = route.removeprefix("/generate/").partition("/")
        key = f"{kind}/{model}"
        try:
            models[key] = _document_model(key, kind, model, route, operations["post"], bundled)
        except (KeyError, TypeError, AttributeError) as error:
            raise BadRequest(
                f"openapi: {path}: {route}: no usable request schema ({error})"
            ) from None
    return _served(text, models)


def _served(text: str, models: dict[str, ModelSpec]) -> ServedDocument:
    etag = '"' + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] + '"'
    return ServedDocument(text, etag, models)


def _document_model(
    key: str, kind: str, model: str, route: str, operation: dict[str, Any], bundled: dict[str, Any]
) -> ModelSpec:
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    known = bundled.get(key)
    if known is not None and known.request_schema == schema:
        return known  # the bundled facts (render time, hosting, price) of the same operation
    points = (operation.get("x-krea-pricing") or {}).get("price_points") or []
    amounts = [float(p["amount"]) for p in points if isinstance(p, dict) and "amount" in p]
    return ModelSpec(
        key=key,
        kind=kind,
        model=model,
        path=route,
        fields=dict(schema.get("properties", {})),
        aliases=tuple(
            DeprecatedAlias(a["from"], a["to"], a["sunset_date"])
            for a in operation.get("x-krea-deprecated-field-aliases", [])
        ),
        avg_seconds=known.avg_seconds if known else None,
        hosted_by_krea=known.hosted_by_krea if known else False,
        price={"usd": min(amounts), "points": []} if amounts else None,
        example=operation["requestBody"]["content"]["application/json"].get("example"),
        request_schema=schema,
    )
