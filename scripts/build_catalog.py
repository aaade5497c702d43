#!/usr/bin/env python3
"""Derive the Krea model catalog from Krea's OpenAPI document and the facts page.

Usage:
    python scripts/build_catalog.py [--openapi ../shared/krea-openapi.json]
                                    [--facts ../shared/krea-api.md] [--check]

Writes two package data files that users get with the wheel (so nobody needs ``shared/``):

- ``krea_dagster/data/krea-openapi.json``: a verbatim copy of the OpenAPI document (the emulator
  serves it at ``GET /openapi.json`` and the conformance tests read it);
- ``krea_dagster/data/krea_models.json``: one entry per ``POST /generate/...`` path with the facts
  a client and an emulator need: required fields, field types, enums, bounds, defaults, the
  deprecated aliases with their sunset dates, compute units and average time (from the
  description tables), the verbatim request schema, and the USD price.

Nothing here is typed by hand except ``KREA_HOSTED``: which models Krea runs on its own GPUs
(the 3-minute automatic failure) versus external providers (the 2-hour one). The document does
not say; the list names the open-weight models (krea-api.md section 5).

Prices: the OpenAPI capture has none, so they come from the table in krea-api.md section 14.
Several prices in one cell are matched to the compute-unit rows in ascending order (price grows
with compute units); a single "from $x" price is scaled by compute units across rows; a model
with no known price gets one derived from its compute units at the median USD per compute unit
of the priced models, marked ``"source": "compute-units"``.

``--check`` exits 1 when the committed files differ from what the inputs produce.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from krea_dagster.api.catalog import schema_facts

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "krea_dagster" / "data"
DEFAULT_OPENAPI = ROOT.parent / "shared" / "krea-openapi.json"
DEFAULT_FACTS = ROOT.parent / "shared" / "krea-api.md"

KREA_HOSTED = {
    "image/bfl/flux-1-dev",
    "image/bfl/flux-1-kontext-dev",
    "image/qwen/2512",
    "image/z-image/z-image",
}

PRICE_RE = re.compile(r"\$([0-9]*\.?[0-9]+)")


def number(text: str) -> float:
    return float(text.strip().lstrip("~").replace(",", ""))


def description_tables(description: str) -> tuple[list[dict[str, Any]], float | None]:
    """Compute-unit rows (with their conditions) and the average seconds from a description."""
    rows: list[dict[str, Any]] = []
    avg_seconds: float | None = None
    lines = [line.strip() for line in description.splitlines() if line.strip().startswith("|")]
    if not lines:
        return rows, None
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header):
            continue
        conditions: dict[str, str] = {}
        compute_units: float | None = None
        for name, cell in zip(header, cells, strict=True):
            if name == "Compute Units":
                compute_units = number(cell)
            elif name == "Average Completion Time":
                value, unit = cell.lstrip("~").split()[:2]
                avg_seconds = float(value) * (60 if unit.startswith("minute") else 1)
            else:
                conditions[name] = cell
        if compute_units is not None:
            rows.append({"when": conditions, "compute_units": compute_units})
    return rows, avg_seconds


def facts_prices(facts_md: str) -> dict[str, dict[str, Any]]:
    """USD cells of the image table in krea-api.md, keyed by the path after /generate/image/."""
    prices: dict[str, dict[str, Any]] = {}
    for line in facts_md.splitlines():
        match = re.match(r"\|\s*`([a-z0-9.\-]+/[a-z0-9.\-]+)`\s*\|", line)
        if not match:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        cell = cells[-1]
        values = [float(v) for v in PRICE_RE.findall(cell)]
        if not values:
            continue
        source = "doc" if "[doc]" in cell else "3p"
        prices[match.group(1)] = {
            "values": values,
            "from": cell.lower().startswith("from"),
            "source": source,
        }
    return prices


def price_entry(
    cu_rows: list[dict[str, Any]], known: dict[str, Any] | None
) -> dict[str, Any] | None:
    if known is None:
        return None
    values: list[float] = known["values"]
    points: list[dict[str, Any]] = []
    ordered = sorted(cu_rows, key=lambda row: row["compute_units"])
    if len(values) > 1 and len(values) == len(ordered):
        for row, usd in zip(ordered, sorted(values), strict=True):
            points.append({"when": row["when"], "usd": usd})
    elif len(values) == 1 and known["from"] and len(ordered) > 1:
        base_cu = ordered[0]["compute_units"]
        for row in ordered:
            usd = round(values[0] * row["compute_units"] / base_cu, 4)
            points.append({"when": row["when"], "usd": usd})
    return {
        "usd": min(values),
        "points": [p for p in points if p["when"]],
        "source": known["source"],
    }


def derived_price(cu_rows: list[dict[str, Any]], usd_per_cu: float) -> dict[str, Any] | None:
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


def build(openapi: dict[str, Any], facts_md: str) -> dict[str, Any]:
    prices = facts_prices(facts_md)
    models: dict[str, dict[str, Any]] = {}
    for path, operations in openapi["paths"].items():
        if not path.startswith("/generate/") or "post" not in operations:
            continue
        op = operations["post"]
        kind, model_path = path.removeprefix("/generate/").split("/", 1)
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        example = op["requestBody"]["content"]["application/json"].get("example")
        cu_rows, avg_seconds = description_tables(op.get("description", ""))
        known = prices.get(model_path) if kind == "image" else None
        models[f"{kind}/{model_path}"] = {
            "kind": kind,
            "model": model_path,
            "path": path,
            "name": op.get("summary", model_path),
            "required": list(schema.get("required", [])),
            "additional_properties": schema.get("additionalProperties", True),
            "fields": {
                name: schema_facts(sub) for name, sub in schema.get("properties", {}).items()
            },
            "aliases": [
                {"from": a["from"], "to": a["to"], "sunset_date": a["sunset_date"]}
                for a in op.get("x-krea-deprecated-field-aliases", [])
            ],
            "compute_units": cu_rows,
            "avg_seconds": avg_seconds,
            "hosted_by_krea": f"{kind}/{model_path}" in KREA_HOSTED,
            "price": price_entry(cu_rows, known),
            "example": example,
            "request_schema": schema,
        }
    ratios = [
        entry["price"]["usd"] / min(row["compute_units"] for row in entry["compute_units"])
        for entry in models.values()
        if entry["price"] and entry["compute_units"]
    ]
    usd_per_cu = statistics.median(ratios)
    for entry in models.values():
        if entry["price"] is None:
            entry["price"] = derived_price(entry["compute_units"], usd_per_cu)
    return {
        "source": {
            "openapi_title": openapi["info"]["title"],
            "openapi_version": openapi["info"]["version"],
            "capture": "2026-05-25 with x-change-note updates",
            "usd_per_compute_unit_median": round(usd_per_cu, 6),
        },
        "models": dict(sorted(models.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openapi", type=Path, default=DEFAULT_OPENAPI)
    parser.add_argument("--facts", type=Path, default=DEFAULT_FACTS)
    parser.add_argument("--check", action="store_true", help="fail when the files are stale")
    args = parser.parse_args(argv)
    openapi_text = args.openapi.read_text(encoding="utf-8")
    catalog = build(json.loads(openapi_text), args.facts.read_text(encoding="utf-8"))
    outputs = {
        DATA / "krea-openapi.json": openapi_text,
        DATA / "krea_models.json": json.dumps(catalog, indent=1, sort_keys=False) + "\n",
    }
    stale = [
        path
        for path, text in outputs.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(
                f"stale: {path.relative_to(ROOT)} (run scripts/build_catalog.py)", file=sys.stderr
            )
        return 1 if stale else 0
    DATA.mkdir(parents=True, exist_ok=True)
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
