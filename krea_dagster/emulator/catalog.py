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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

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
