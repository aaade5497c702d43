#!/usr/bin/env python3
"""Derive the bundled Krea model catalog from Krea's OpenAPI document and the facts page.

Usage:
    python scripts/build_catalog.py [--openapi ../shared/krea-openapi.json]
                                    [--facts ../shared/krea-api.md] [--check]

Writes two package data files that users get with the wheel (so nobody needs ``shared/``):

- ``krea_dagster/data/krea-openapi.json``: a verbatim copy of the OpenAPI document (the emulator
  serves it at ``GET /openapi.json`` and the conformance tests read it);
- ``krea_dagster/data/krea_models.json``: the catalog ``krea_dagster.api.catalog_source.
  derive_catalog`` derives from it (the same derivation the live catalog runs over a backend's
  ``/openapi.json``), with the document's SHA-256 as its fingerprint.

The only input besides the document is the USD column of the image table in krea-api.md
section 14 (the 2026-05 capture has no prices): several prices in one cell are matched to the
compute-unit rows in ascending order, a single "from $x" price is scaled by compute units.
Prices the document itself gives (``x-krea-pricing``, a price column) win over them.

``--check`` exits 1 when the committed files differ from what the inputs produce.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from krea_dagster.api.catalog_source import KnownPrice, derive_catalog, document_sha256

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "krea_dagster" / "data"
DEFAULT_OPENAPI = ROOT.parent / "shared" / "krea-openapi.json"
DEFAULT_FACTS = ROOT.parent / "shared" / "krea-api.md"

PRICE_RE = re.compile(r"\$([0-9]*\.?[0-9]+)")


def facts_prices(facts_md: str) -> dict[str, KnownPrice]:
    """USD cells of the image table in krea-api.md, keyed by the path after /generate/image/."""
    prices: dict[str, KnownPrice] = {}
    for line in facts_md.splitlines():
        match = re.match(r"\|\s*`([a-z0-9.\-]+/[a-z0-9.\-]+)`\s*\|", line)
        if not match:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        cell = cells[-1]
        values = tuple(float(v) for v in PRICE_RE.findall(cell))
        if not values:
            continue
        prices[match.group(1)] = KnownPrice(
            values=values,
            is_from=cell.lower().startswith("from"),
            source="doc" if "[doc]" in cell else "3p",
        )
    return prices


def build(openapi_text: str, facts_md: str) -> dict[str, Any]:
    catalog = derive_catalog(
        json.loads(openapi_text),
        known_prices=facts_prices(facts_md),
        capture="2026-05-25 with x-change-note updates",
    )
    catalog["source"]["openapi_sha256"] = document_sha256(openapi_text.encode("utf-8"))
    return catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openapi", type=Path, default=DEFAULT_OPENAPI)
    parser.add_argument("--facts", type=Path, default=DEFAULT_FACTS)
    parser.add_argument("--check", action="store_true", help="fail when the files are stale")
    args = parser.parse_args(argv)
    openapi_text = args.openapi.read_text(encoding="utf-8")
    catalog = build(openapi_text, args.facts.read_text(encoding="utf-8"))
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
