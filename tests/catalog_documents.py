"""Krea OpenAPI documents for the live-catalog tests: the bundled one plus a model it lacks.

``SAMPLE_KREA_3`` is shaped like the Krea 2 operations of Krea's newer document (krea-api.md
section 14.2): a required ``aspect_ratio`` and ``resolution``, a ``creativity`` enum, and an
``x-krea-pricing`` block (section 9) with a price per request.
"""

from pathlib import Path
from typing import Any

from krea_dagster.emulator.testing import write_openapi_document

NEW_MODEL = "krea/krea-3"
NEW_MODEL_PATH = f"/generate/image/{NEW_MODEL}"
NEW_MODEL_USD = 0.04
GONE_MODEL = "google/imagen-3"
GONE_MODEL_PATH = f"/generate/image/{GONE_MODEL}"

SAMPLE_KREA_3: dict[str, Any] = {
    "summary": "Krea 3",
    "description": "Krea's newest image model.\n| Compute Units |\n|---|\n| 20 |",
    "x-krea-pricing": {
        "type": "fixed",
        "currency": "USD",
        "unit": "request",
        "price_points": [{"amount": str(NEW_MODEL_USD), "dimensions": {"resolution": "1K"}}],
    },
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "prompt": {"type": "string", "minLength": 1, "maxLength": 2000},
                        "aspect_ratio": {"type": "string", "enum": ["1:1", "4:3", "16:9"]},
                        "resolution": {"type": "string", "enum": ["1K"]},
                        "creativity": {
                            "type": "string",
                            "enum": ["raw", "low", "medium", "high"],
                            "default": "medium",
                        },
                        "seed": {"type": "number"},
                    },
                    "required": ["prompt", "aspect_ratio", "resolution"],
                    "additionalProperties": False,
                }
            }
        }
    },
}


def extended_document(folder: Path, *, drop_gone: bool = False) -> Path:
    """The bundled document plus ``krea/krea-3`` (and without ``google/imagen-3`` if asked)."""
    return write_openapi_document(
        folder / "krea-openapi-extended.json",
        add={NEW_MODEL_PATH: SAMPLE_KREA_3},
        drop=(GONE_MODEL_PATH,) if drop_gone else (),
    )
