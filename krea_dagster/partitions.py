"""A node's batches as dynamic partitions: registered without the daemon and without paying.

A batch must exist as a partition before ``dg launch --partition`` (or ``Materialize`` in the
UI) can run it. The discovery sensor adds partitions as it finds batches, but it needs the
daemon and also launches (paid) runs. ``register_batches`` does only the first part:

- for a prompt-file node, it scans the folder, adds a partition per batch file (or ``batch``
  value), and records each new or changed file as a runless materialization of
  ``prompt_source`` (data version = the file's content hash), exactly as the discovery sensor
  does, so lineage and staleness agree whichever registered it;
- for a node over an unpartitioned table asset, it reads the table's latest materialized value
  (through its IO manager) and adds a partition per value of the batch column.

From the command line: ``krea-dagster register-batches [PREFIX ...]`` (``krea_dagster.cli``).
Every node built (``build_krea_node``, its presets, the YAML components) is remembered by prefix
in this process, which is how the command finds it after loading a code location.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg

from krea_dagster.engine.names import batch_name_problem
from krea_dagster.engine.nodes import cell_text, table_frame
from krea_dagster.engine.prompts import PromptValidationError

if TYPE_CHECKING:
    from krea_dagster.node import KreaNodeAssets

__all__ = [
    "BatchRegistration",
    "built_nodes",
    "recorded_source_versions",
    "register_batches",
    "remember",
    "table_batches",
]

_BUILT: dict[str, "KreaNodeAssets"] = {}


def remember(node: "KreaNodeAssets") -> None:
    """Record a node by prefix (the last one built for a prefix wins)."""
    _BUILT[node.prefix] = node


def built_nodes() -> dict[str, "KreaNodeAssets"]:
    """Every node built in this process, by prefix."""
    return dict(_BUILT)


@dataclass(frozen=True)
class BatchRegistration:
    """What ``register_batches`` did for one node."""

    prefix: str
    partitions_name: str
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.prefix}: {len(self.added)} batch(es) added"]
        if self.added:
            parts[0] += f" ({', '.join(self.added)})"
        parts.append(f"{len(self.existing)} already registered")
        if self.problems:
            parts.append(f"{len(self.problems)} skipped")
        return ", ".join(parts)


def recorded_source_versions(
    instance: dg.DagsterInstance, node: "KreaNodeAssets", batches: list[str]
) -> dict[str, str | None]:
    """The content hash each batch's ``prompt_source`` was last recorded with (None: never).

    One query for all batches (the data-version tag of each partition's latest
    materialization), so a discovery tick over many partitions stays cheap.
    """
    if not batches or node.source is None:
        return {}
    from dagster._core.events import DagsterEventType

    tags = instance.event_log_storage.get_latest_tags_by_partition(
        node.source.key,
        DagsterEventType.ASSET_MATERIALIZATION,
        tag_keys=["dagster/data_version"],
        asset_partitions=list(batches),
    )
    return {batch: tags.get(batch, {}).get("dagster/data_version") for batch in batches}


def table_batches(node: "KreaNodeAssets", table: Any) -> tuple[dict[str, str], list[str]]:
    """The batches of an unpartitioned table: each value of the batch column with the content
    hash of its rows, and a problem per value that is not a plain partition key (and one for
    rows without a batch). The table is read as a step reads it (``nodes.table_frame``)."""
    column = node.node.batch_column
    where = f"the table asset {node.table_key.to_user_string() if node.table_key else ''}"
    try:
        frame = table_frame(table)
    except PromptValidationError as error:
        reasons = "; ".join(problem.message for problem in error.problems)
        raise ValueError(f"{node.prefix}: {where}: {reasons}") from None
    if column not in frame.columns:
        raise ValueError(
            f"{node.prefix}: the table has no {column!r} column naming each row's batch; add it "
            "(or name another with batch_column=...), or partition the table like the node"
        )
    names = [cell_text(value) for value in frame[column]]
    problems: list[str] = []
    if (unnamed := names.count(None)) > 0:
        problems.append(
            f"{column}: {unnamed} row(s) have no batch; fill it, or leave those rows out of "
            "the table asset"
        )
    batches: dict[str, str] = {}
    for name in sorted({name for name in names if name is not None}):
        if (problem := batch_name_problem(name)) is not None:
            problems.append(f"{column}={name!r}: {problem}")
            continue
        part = frame[[value == name for value in names]]
        records = part.drop(columns=[column]).to_dict(orient="records")
        text = json.dumps(records, sort_keys=True, default=str)
        batches[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return batches, problems


def register_batches(
    node: "KreaNodeAssets",
    instance: dg.DagsterInstance | None = None,
    *,
    only: list[str] | None = None,
    table: Any = None,
) -> BatchRegistration:
    """Add the batches of ``node`` as partitions of ``instance``; nothing is sent to Krea.

    Args:
        node: the node (``build_krea_node`` or a preset's result).
        instance: the Dagster instance (default: ``DagsterInstance.get()``, i.e.
            ``$DAGSTER_HOME``).
        only: register just these batch names (each must be a batch of the source).
        table: for a node over an unpartitioned table asset, the table's value.

    A batch already registered is left as it is; a prompt file's ``prompt_source`` is recorded
    again only when the file changed.
    """
    instance = instance or dg.DagsterInstance.get()
    partitions_def = node.partitions_def
    if not isinstance(partitions_def, dg.DynamicPartitionsDefinition) or not partitions_def.name:
        raise ValueError(
            f"{node.prefix}: its batches are the partitions of {type(partitions_def).__name__}, "
            "which Dagster defines itself; there is nothing to register"
        )
    source_hashes: dict[str, str]
    files: dict[str, Any] = {}
    if node.source is not None:
        found, scan_problems = node.node.files.scan()
        source_hashes = {batch: info.content_hash for batch, info in found.items()}
        files = found
        problems = [f"{problem.file}: {problem.message}" for problem in scan_problems]
        where = node.node.files.directory
    else:
        if table is None:
            raise ValueError(f"{node.prefix}: give the table's value to register its batches")
        source_hashes, problems = table_batches(node, table)
        where = f"the table {node.table_key.to_user_string() if node.table_key else ''}"
    names = sorted(source_hashes)
    if only is not None:
        unknown = sorted(set(only) - set(source_hashes))
        if unknown:
            raise ValueError(
                f"{node.prefix}: no batch named {', '.join(unknown)} in {where} "
                f"(batches there: {', '.join(names) or 'none'})"
            )
        names = sorted(set(only))
    name = partitions_def.name
    existing = [b for b in names if instance.has_dynamic_partition(name, b)]
    added = [b for b in names if b not in existing]
    if added:
        instance.add_dynamic_partitions(name, added)
    recorded = []
    if node.source is not None:
        versions = recorded_source_versions(instance, node, names)
        for batch in names:
            info = files[batch]
            if versions.get(batch) == info.content_hash:
                continue
            instance.report_runless_asset_event(source_materialization(node, batch, info))
            recorded.append(batch)
    return BatchRegistration(
        prefix=node.prefix,
        partitions_name=name,
        added=added,
        existing=existing,
        recorded=recorded,
        problems=problems,
    )


def source_materialization(
    node: "KreaNodeAssets", batch: str, info: Any
) -> dg.AssetMaterialization:
    """A new version of a batch's prompt file, as a runless materialization of the prompt
    source: what lineage, staleness and ``eager()`` automation react to."""
    assert node.source is not None
    return dg.AssetMaterialization(
        asset_key=node.source.key,
        partition=batch,
        metadata={
            "files": dg.MetadataValue.json(list(info.files)),
            "rows": info.rows,
            "content_hash": info.content_hash,
        },
        tags={"dagster/data_version": info.content_hash},
    )
