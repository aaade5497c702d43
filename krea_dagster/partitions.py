"""Register prompt batches as dynamic partitions, without the daemon and without paying.

A batch must exist as a partition before ``dg launch --partition`` (or ``Materialize`` in the
UI) can run it. The discovery sensor adds partitions as it finds files, but it needs the daemon
and also launches (paid) runs. ``register_batches`` does only the first part: it scans the
prompt folder, adds a partition per batch file to the instance, and records each new or changed
file as a runless materialization of ``prompt_source`` (data version = the file's content hash),
exactly as the discovery sensor does, so lineage and staleness agree whichever registered it.

From the command line: ``krea-dagster register-batches [PREFIX ...]`` (see ``krea_dagster.cli``).
Every ``build_krea_image_assets`` call (the YAML component's included) is remembered by prefix
in this process, which is how the command finds an instance after loading a code location.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from krea_dagster.assets import KreaImageAssets

__all__ = [
    "BatchRegistration",
    "built_instances",
    "recorded_source_versions",
    "register_batches",
    "remember",
]

_BUILT: dict[str, "KreaImageAssets"] = {}


def remember(assets: "KreaImageAssets") -> None:
    """Record an instance by prefix (the last one built for a prefix wins)."""
    _BUILT[assets.prefix] = assets


def built_instances() -> dict[str, "KreaImageAssets"]:
    """Every instance built in this process, by prefix."""
    return dict(_BUILT)


@dataclass(frozen=True)
class BatchRegistration:
    """What ``register_batches`` did for one instance."""

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
            parts.append(f"{len(self.problems)} file(s) skipped")
        return ", ".join(parts)


def recorded_source_versions(
    instance: dg.DagsterInstance, assets: "KreaImageAssets", batches: list[str]
) -> dict[str, str | None]:
    """The content hash each batch's ``prompt_source`` was last recorded with (None: never).

    One query for all batches (the data-version tag of each partition's latest
    materialization), so a discovery tick over many partitions stays cheap.
    """
    if not batches:
        return {}
    from dagster._core.events import DagsterEventType

    tags = instance.event_log_storage.get_latest_tags_by_partition(
        assets.source.key,
        DagsterEventType.ASSET_MATERIALIZATION,
        tag_keys=["dagster/data_version"],
        asset_partitions=list(batches),
    )
    return {batch: tags.get(batch, {}).get("dagster/data_version") for batch in batches}


def register_batches(
    assets: "KreaImageAssets",
    instance: dg.DagsterInstance | None = None,
    *,
    only: list[str] | None = None,
) -> BatchRegistration:
    """Add the batches of ``assets``' prompt folder as partitions of ``instance``.

    Args:
        assets: the instance (``build_krea_image_assets`` result).
        instance: the Dagster instance (default: ``DagsterInstance.get()``, i.e.
            ``$DAGSTER_HOME``).
        only: register just these batch names (each must be a file of the folder).

    Nothing is submitted to Krea; a batch already registered is left as it is, and its
    ``prompt_source`` is recorded again only when its file changed.
    """
    instance = instance or dg.DagsterInstance.get()
    batches, problems = assets.pipeline.files.scan()
    names = sorted(batches)
    if only is not None:
        unknown = sorted(set(only) - set(batches))
        if unknown:
            raise ValueError(
                f"{assets.prefix}: no batch file named {', '.join(unknown)} in "
                f"{assets.pipeline.files.directory} (batches there: {', '.join(names) or 'none'})"
            )
        names = sorted(set(only))
    partitions_name = assets.partitions_def.name or ""
    existing = [b for b in names if instance.has_dynamic_partition(partitions_name, b)]
    added = [b for b in names if b not in existing]
    if added:
        instance.add_dynamic_partitions(partitions_name, added)
    versions = recorded_source_versions(instance, assets, names)
    recorded = []
    for batch in names:
        info = batches[batch]
        if versions.get(batch) == info.content_hash:
            continue
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=assets.source.key,
                partition=batch,
                metadata={
                    "files": dg.MetadataValue.json(list(info.files)),
                    "rows": info.rows,
                    "content_hash": info.content_hash,
                },
                tags={"dagster/data_version": info.content_hash},
            )
        )
        recorded.append(batch)
    return BatchRegistration(
        prefix=assets.prefix,
        partitions_name=partitions_name,
        added=added,
        existing=existing,
        recorded=recorded,
        problems=[f"{problem.file}: {problem.message}" for problem in problems],
    )
