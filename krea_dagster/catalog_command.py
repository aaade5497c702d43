"""``krea-dagster catalog [--refresh]``: the models the backend serves, against this release.

Reads the backend's live catalog the way a run does (``krea_dagster.engine.catalogs``: the copy
cached in the ledger while fresh, ``--refresh`` to ask the backend now) and prints every model
with its price where Krea's document gives one, what is new since the bundled catalog, what is
gone from Krea's document, and what is priced differently. When a code location is found (as
``register-batches`` finds it, or ``-f``/``-m``), each instance whose model is gone is named with
its batches, before anything is paid; its ledger holds the cache. Exit status 1 when the live
catalog could not be read or a model an instance uses is gone.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from krea_dagster.api import BASE_URL_ENV, DEFAULT_BASE_URL, ModelCatalog, ModelSpec
from krea_dagster.engine.catalogs import CatalogSettings, catalog_changes, catalog_for
from krea_dagster.engine.ledger import Ledger

__all__ = ["add_catalog_command", "catalog_command"]

#: The cache of a command run outside any code location: nothing is kept between runs.
EPHEMERAL_LEDGER = "sqlite:///:memory:"


def add_catalog_command(commands: Any, usage_error: type[Exception]) -> None:
    """Add the ``catalog`` subcommand to the ``krea-dagster`` parser's subcommands."""
    parser = commands.add_parser(
        "catalog",
        help="list the models the backend serves: new, gone and repriced against this release",
        description=__doc__.split("\n\n")[1].replace("``", "").replace("\n", " "),
    )
    parser.add_argument(
        "--refresh", action="store_true", help="ask the backend now, even if the cache is fresh"
    )
    parser.add_argument(
        "--base-url",
        help=f"the API (default: ${BASE_URL_ENV}, else the code location's resource, else "
        f"{DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--ledger",
        help="ledger database URL holding the cache (default: the code location's ledger)",
    )
    parser.add_argument(
        "--no-code-location",
        action="store_true",
        help="do not look for a code location (no per-instance report)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-f", "--python-file", dest="file", help="file defining the Definitions")
    where.add_argument("-m", "--module-name", dest="module", help="module defining them")
    parser.set_defaults(handler=lambda args: catalog_command(args, usage_error))


def catalog_command(args: argparse.Namespace, usage_error: type[Exception]) -> int:
    """Run ``krea-dagster catalog``; returns the exit status."""
    instances = {} if args.no_code_location else _instances(args, usage_error)
    base_url = (
        args.base_url
        or os.environ.get(BASE_URL_ENV)
        or _resource_base_url(instances)
        or DEFAULT_BASE_URL
    )
    ledger_url = args.ledger or _instance_ledger(instances) or EPHEMERAL_LEDGER
    models = catalog_for(
        CatalogSettings(base_url=base_url), Ledger(ledger_url), refresh=args.refresh
    )
    return report(models, instances, out=sys.stdout, err=sys.stderr)


def report(models: ModelCatalog, instances: dict[str, Any], *, out: TextIO, err: TextIO) -> int:
    """Print the catalog, its changes and the instances whose model is gone; the exit status."""
    origin = models.origin
    status = 0
    if origin.fallback:
        print(f"warning: {origin.fallback}", file=err)
        status = 1
    print(f"{origin.describe()}: {len(models.specs)} models", file=out)
    changes = catalog_changes(models) if origin.is_live else None
    if changes is not None:
        _section(out, "new since this release", changes.new)
        _section(out, "gone from Krea's document", changes.gone)
        print(f"\npriced differently than this release ({len(changes.repriced)}):", file=out)
        for old, new in changes.repriced:
            print(f"  {new.key}  {_price(old)} -> {_price(new)}", file=out)
    affected = _gone_instances(models, instances) if origin.is_live else []
    if affected:
        status = 1
        print(
            "\ninstances whose model Krea no longer lists (their batches would be refused):",
            file=out,
        )
        for line in affected:
            print(f"  {line}", file=out)
    _section(out, "models", models.models())
    return status


def _section(out: TextIO, title: str, specs: Sequence[ModelSpec]) -> None:
    print(f"\n{title} ({len(specs)}):", file=out)
    width = max((len(spec.key) for spec in specs), default=0)
    if not specs:
        print("  none", file=out)
    for spec in specs:
        print(f"  {spec.key:<{width}}  {_price(spec):<28}  {spec.name}", file=out)


def _price(spec: ModelSpec) -> str:
    price = spec.price
    if price is None:
        return "price unknown"
    high = max((point.usd for point in price.points), default=price.usd)
    shown = f"${price.usd:g}" if high == price.usd else f"${price.usd:g}-${high:g}"
    return f"{shown} ({price.source})"


def _gone_instances(models: ModelCatalog, nodes: dict[str, Any]) -> list[str]:
    """Every step of every node whose model the catalog no longer has, with its batches."""
    lines = []
    for prefix, node in sorted(nodes.items()):
        for step in node.step_assets:
            model = step.pipeline.model
            if step.pipeline.is_node_app or models.has(model):
                continue
            where = f"{prefix}/{step.step.name}" if step.step.name else prefix
            if node.source is not None:
                batches, _ = node.node.files.scan()
                names = ", ".join(sorted(batches)) or "no batch files yet"
            else:
                names = f"every batch of {node.table_key.to_user_string()}"
            lines.append(f"{where} ({model}): batches {names}")
    return lines


def _instances(args: argparse.Namespace, usage_error: type[Exception]) -> dict[str, Any]:
    """The krea-dagster nodes of the code location, if one is found; {} otherwise."""
    from krea_dagster.cli import _target, load_code_location
    from krea_dagster.partitions import built_nodes

    try:
        kind, target, working_directory = _target(args)
    except usage_error:
        if args.file or args.module:
            raise
        return {}
    load_code_location(kind, target, working_directory)
    return built_nodes()


def _resource_base_url(instances: dict[str, Any]) -> str | None:
    for assets in instances.values():
        embedded = assets.krea.embedded
        if embedded is not None:
            return str(embedded.effective_base_url)
    return None


def _instance_ledger(instances: dict[str, Any]) -> str | None:
    for assets in instances.values():
        return str(assets.pipeline.ledger.url)
    return None
