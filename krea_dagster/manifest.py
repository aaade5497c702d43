"""The metadata that shows a batch's manifest in the Dagster UI (the manifest itself is
``krea_dagster.engine.manifest``)."""

from collections import Counter
from collections.abc import Sequence
from typing import Any

import dagster as dg
import pandas as pd

from krea_dagster.engine.collect import Thumbnail
from krea_dagster.engine.manifest import MAX_FAILURE_ROWS, ManifestStatus

__all__ = ["gallery_markdown", "manifest_metadata"]


def gallery_markdown(thumbnails: Sequence[Thumbnail], *, total_images: int) -> str:
    """Small inline thumbnails (data URIs), with the prompt as alt text and title."""
    if not thumbnails:
        return "_no images yet_"
    cells = []
    for thumb in thumbnails:
        caption = thumb.caption.replace("[", "(").replace("]", ")").replace('"', "'")[:80]
        cells.append(f'![{caption}]({thumb.data_uri} "{caption}")')
    more = total_images - len(thumbnails)
    suffix = f"\n\n_{len(thumbnails)} of {total_images} images shown_" if more > 0 else ""
    return " ".join(cells) + suffix


def failures_table(manifest: pd.DataFrame) -> dg.TableMetadataValue:
    failed = manifest[manifest["status"] != ManifestStatus.COMPLETED].head(MAX_FAILURE_ROWS)
    records = [
        dg.TableRecord(
            {
                "prompt_key": str(row["prompt_key"]),
                "prompt": str(row["prompt"])[:200],
                "status": str(row["status"]),
                "code": str(row["error_code"] or ""),
                "message": str(row["error_message"] or "")[:500],
                "job_id": str(row["job_id"] or ""),
            }
        )
        for row in failed.to_dict(orient="records")
    ]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("prompt_key", "string"),
            dg.TableColumn("prompt", "string"),
            dg.TableColumn("status", "string"),
            dg.TableColumn("code", "string"),
            dg.TableColumn("message", "string"),
            dg.TableColumn("job_id", "string"),
        ]
    )
    return dg.MetadataValue.table(records=records, schema=schema)


def column_schema(frame: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(str(name), str(dtype)) for name, dtype in frame.dtypes.items()]
    )


def manifest_metadata(
    manifest: pd.DataFrame,
    *,
    model: str,
    thumbnails: Sequence[Thumbnail],
    store_uri: str,
) -> dict[str, Any]:
    """Counts, cost, location, schema, gallery and failures of one manifest."""
    counts = Counter(manifest["status"])
    completed = int(counts.get(ManifestStatus.COMPLETED, 0))
    cost = float(manifest["cost_usd"].sum())
    return {
        "dagster/row_count": len(manifest),
        "dagster/uri": store_uri,
        "dagster/column_schema": column_schema(manifest),
        "krea/images": completed,
        "krea/failures": len(manifest) - completed,
        "krea/status_counts": dg.MetadataValue.json(dict(sorted(counts.items()))),
        f"krea.{model}.images": completed,
        f"krea.{model}.usd": round(cost, 6),
        "krea/gallery": dg.MetadataValue.md(gallery_markdown(thumbnails, total_images=completed)),
        "krea/failures_table": failures_table(manifest),
    }
