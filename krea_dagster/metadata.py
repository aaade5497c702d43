"""The metadata krea-dagster puts on its assets and checks: one ``krea/`` namespace, typed.

Every key the integration writes is ``krea/<name>`` (plus Dagster's own ``dagster/...`` keys),
declared once here as a ``NamespacedMetadataSet`` per asset, so the UI shows one vocabulary
and code can read it back (``KreaImagesMetadata.extract(materialization.metadata)``).

Numbers are what Dagster plots; only measures that differ are numbers. Identifiers such as the
generation are text, and per-run diagnostics (polls, downloads) are one JSON entry, so the
Plots tab shows the batch's prompts, images, failures and cost, not three lines of one count.

Every value that comes from outside (a column name or cell of the user's table, a code or
message of Krea's answer) is shortened on its way in (``metadata_text``, ``markdown_cell``), as
error messages are: a 1 MB cell makes a cell of a few hundred characters, not a 1 MB event.

Costs are **estimates**: Krea does not report the charge per job, so a completed job costs the
catalog price of its request (``krea_dagster/data/krea_models.json``); failed and cancelled jobs
are not billed. The keys say so (``krea/estimated_cost_usd``).
"""

import posixpath
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dagster as dg
import pandas as pd

# Not exported by ``dagster`` in 1.13 (its own TableMetadataSet subclasses it here); the package
# pins dagster<1.14, and every test that builds assets imports this module.
from dagster._core.definitions.metadata.metadata_set import NamespacedMetadataSet

from krea_dagster.api.catalog import shorten
from krea_dagster.engine.collect import Thumbnail
from krea_dagster.engine.manifest import OUTPUTS_COLUMN, ManifestStatus
from krea_dagster.engine.store import ImageStore

__all__ = [
    "MANIFEST_COLUMN_DOCS",
    "PROMPTS_COLUMN_DOCS",
    "KreaCheckMetadata",
    "KreaImagesMetadata",
    "KreaJobsMetadata",
    "KreaPromptsMetadata",
    "failures_table",
    "markdown_cell",
    "metadata_text",
    "prompts_preview",
    "table_schema",
    "thumbnails_markdown",
]

MAX_FAILURE_ROWS = 100
#: Longest text of one value from outside (a cell, a column name, Krea's message) in metadata.
MAX_VALUE_CHARS = 200
#: Columns a ``dagster/column_schema`` lists; the rest are counted in a last entry.
MAX_SCHEMA_COLUMNS = 200
PREVIEW_ROWS = 10
MAX_KEYS_IN_METADATA = 50
# Prompts whose Krea job ended without an image. Pending and unresolved prompts may still get
# one and not-submitted ones have no job yet: the every_prompt_resolved check reports those.
FAILED_STATUSES = (ManifestStatus.FAILED, ManifestStatus.CANCELLED, ManifestStatus.IMAGE_ERROR)

# name -> (type, description). Types are the table types the UI shows, not pandas dtypes.
MANIFEST_COLUMN_DOCS: dict[str, tuple[str, str]] = {
    "batch": ("string", "The prompt batch (the partition key)."),
    "generation": ("int", "Generation of the batch: 1, then +1 at each regeneration."),
    "row": ("int", "Row of the prompt in its batch file (1 = first data row)."),
    "prompt_key": ("string", "Stable id of the prompt's request (hash of its parameters)."),
    "prompt": ("string", "The prompt text."),
    "variant": ("string", "Makes otherwise identical rows distinct prompts; empty when unused."),
    "job_id": ("string", "Krea job id; empty when nothing was submitted."),
    "status": (
        "string",
        "completed, failed, cancelled, image_error, pending, unresolved or not_submitted.",
    ),
    "uri": ("string", "Where the verified image is in the store; empty without an image."),
    "width": ("int", "Width of the stored image in pixels."),
    "height": ("int", "Height of the stored image in pixels."),
    "sha256": ("string", "SHA-256 of the stored image (its path in the store derives from it)."),
    "cost_usd": (
        "float",
        "Estimated USD: the catalog price of the request for a completed job (Krea reports no "
        "charge per job), 0 for failed or cancelled jobs, which are not billed.",
    ),
    "error_code": ("string", "Why there is no image: Krea's error code or the collector's."),
    "error_message": ("string", "Why there is no image, in words."),
    OUTPUTS_COLUMN: (
        "json",
        "A node app's step: the stored result of every job of the row's execution, in order "
        "(uri is the first).",
    ),
}
PROMPTS_COLUMN_DOCS: dict[str, tuple[str, str]] = {
    "prompt_key": MANIFEST_COLUMN_DOCS["prompt_key"],
    "row": MANIFEST_COLUMN_DOCS["row"],
    "prompt": MANIFEST_COLUMN_DOCS["prompt"],
    "variant": MANIFEST_COLUMN_DOCS["variant"],
    "request_json": ("string", "The request body sent to Krea (JSON), defaults applied."),
    "estimated_usd": (
        "float",
        "Estimated USD of one job for this request (catalog price); empty when unpriced.",
    ),
}
CARRIED_DESCRIPTION = "Carried over from the prompt file."


def _column_type(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    return "string"


def metadata_text(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """A value from outside as metadata text: ``str`` of it, shortened like error messages."""
    return shorten(value if isinstance(value, str) else str(value), limit)


def markdown_cell(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """A value as the text of one markdown table cell: one line, shortened, markup escaped."""
    text = " ".join(metadata_text(value, limit).split())
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    for char in "*_`[]":
        text = text.replace(char, "\\" + char)
    return text


def table_schema(frame: pd.DataFrame, docs: Mapping[str, tuple[str, str]]) -> dg.TableSchema:
    """The columns of ``frame`` with type and description (carried columns say so).

    Column names come from the user's table, so they are shortened, and at most
    ``MAX_SCHEMA_COLUMNS`` are listed (a last entry counts the others).
    """
    columns = []
    dtypes = list(frame.dtypes.items())
    for name, dtype in dtypes[:MAX_SCHEMA_COLUMNS]:
        kind, description = docs.get(str(name), (_column_type(dtype), CARRIED_DESCRIPTION))
        columns.append(dg.TableColumn(metadata_text(name), kind, description=description))
    if len(dtypes) > MAX_SCHEMA_COLUMNS:
        more = len(dtypes) - MAX_SCHEMA_COLUMNS
        columns.append(
            dg.TableColumn(
                f"... {more} more column(s)",
                "string",
                description=f"The table has {len(dtypes)} columns; the first "
                f"{MAX_SCHEMA_COLUMNS} are listed.",
            )
        )
    return dg.TableSchema(columns=columns)


class KreaPromptsMetadata(NamespacedMetadataSet):
    """``krea/...`` entries of a prompts materialization."""

    model: str | None = None
    estimated_cost_usd: float | None = None
    unpriced_prompts: int | None = None
    skipped_files: dg.JsonMetadataValue | None = None
    preview: dg.MarkdownMetadataValue | None = None

    @classmethod
    def namespace(cls) -> str:
        return "krea"


class KreaJobsMetadata(NamespacedMetadataSet):
    """``krea/...`` entries of a jobs materialization."""

    batch: str | None = None
    generation: str | None = None  # an identifier: text, not a plotted number
    prompts: int | None = None
    submitted_this_run: int | None = None
    already_covered: int | None = None
    reconciled: int | None = None
    estimated_cost_usd: float | None = None  # of the jobs this run submitted
    status_counts: dg.JsonMetadataValue | None = None
    job_ids: dg.JsonMetadataValue | None = None

    @classmethod
    def namespace(cls) -> str:
        return "krea"


class KreaImagesMetadata(NamespacedMetadataSet):
    """``krea/...`` entries of an images materialization (and of its failure), in UI order."""

    gallery: dg.UrlMetadataValue | None = None
    batch: str | None = None
    generation: str | None = None
    images: int | None = None
    failed_prompts: int | None = None
    estimated_cost_usd: float | None = None
    thumbnails: dg.MarkdownMetadataValue | None = None
    failures: dg.TableMetadataValue | None = None
    status_counts: dg.JsonMetadataValue | None = None
    gallery_path: dg.PathMetadataValue | None = None
    manifest_copy: dg.PathMetadataValue | None = None
    this_run: dg.JsonMetadataValue | None = None

    @classmethod
    def namespace(cls) -> str:
        return "krea"


class KreaCheckMetadata(NamespacedMetadataSet):
    """``krea/...`` entries of a check result: the batch judged and what was found."""

    batch: str | None = None
    generation: str | None = None
    prompts: int | None = None
    failed_prompts: int | None = None
    failed_fraction: float | None = None
    max_failed_fraction: float | None = None
    unresolved: int | None = None
    wrong_size: int | None = None
    duplicates: dg.JsonMetadataValue | None = None
    prompt_keys: dg.JsonMetadataValue | None = None
    error_codes: dg.JsonMetadataValue | None = None
    reported: dg.JsonMetadataValue | None = None

    @classmethod
    def namespace(cls) -> str:
        return "krea"


def thumbnails_markdown(thumbnails: Sequence[Thumbnail], *, total_images: int) -> str:
    """A table of small inline thumbnails (data URIs), each with its prompt as caption."""
    if not thumbnails:
        return "_no images yet_"
    lines = ["| image | prompt |", "|---|---|"]
    for thumb in thumbnails:
        caption = " ".join(metadata_text(thumb.caption, 160).split())
        alt = caption.replace("[", "(").replace("]", ")").replace('"', "'").replace("|", "/")
        lines.append(f'| ![{alt}]({thumb.data_uri} "{alt}") | {markdown_cell(caption, 160)} |')
    if total_images > len(thumbnails):
        lines.append(f"\n_{len(thumbnails)} of {total_images} images shown; all in the gallery_")
    return "\n".join(lines)


def failures_table(manifest: pd.DataFrame) -> dg.TableMetadataValue:
    """The prompts without an image: status, Krea's code and message, job id."""
    failed = manifest[manifest["status"] != ManifestStatus.COMPLETED].head(MAX_FAILURE_ROWS)
    records = [
        dg.TableRecord(
            {
                "row": int(row["row"]),
                "prompt": metadata_text(row["prompt"]),
                "status": metadata_text(row["status"]),
                "code": metadata_text(row["error_code"] or ""),
                "message": metadata_text(row["error_message"] or "", 500),
                "job_id": metadata_text(row["job_id"] or ""),
            }
        )
        for row in failed.to_dict(orient="records")
    ]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("row", "int", description=MANIFEST_COLUMN_DOCS["row"][1]),
            dg.TableColumn("prompt", "string", description="The prompt (first 200 characters)."),
            dg.TableColumn("status", "string", description=MANIFEST_COLUMN_DOCS["status"][1]),
            dg.TableColumn("code", "string", description=MANIFEST_COLUMN_DOCS["error_code"][1]),
            dg.TableColumn(
                "message", "string", description=MANIFEST_COLUMN_DOCS["error_message"][1]
            ),
            dg.TableColumn("job_id", "string", description=MANIFEST_COLUMN_DOCS["job_id"][1]),
        ]
    )
    return dg.MetadataValue.table(records=records, schema=schema)


def prompts_preview(table: pd.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    """The first rows of a prompts table as markdown: row, prompt, variant, estimated USD."""
    lines = ["| row | prompt | variant | est. USD |", "|---|---|---|---|"]
    for record in table.head(rows).to_dict(orient="records"):
        cost = record["estimated_usd"]
        shown = "?" if cost is None or pd.isna(cost) else f"{cost:.4f}"
        lines.append(
            f"| {record['row']} | {markdown_cell(record['prompt'], 120)} | "
            f"{markdown_cell(record['variant'], 60)} | {shown} |"
        )
    if len(table) > rows:
        lines.append(f"\n_{len(table) - rows} more rows_")
    return "\n".join(lines)


def failed_prompts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows whose Krea job ended without an image (failed, cancelled, image_error)."""
    return manifest[manifest["status"].isin(FAILED_STATUSES)]


def status_counts(manifest: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(Counter(manifest["status"]).items())}


def file_url(uri: str) -> str:
    """A URL for a store URI: ``file://`` for a local path, the URI itself otherwise."""
    if "://" in uri:
        return uri
    return Path(uri).as_uri()


def served_url(store_url: str, root: str, uri: str) -> str:
    """The address of a store file under ``store_url``, where the store root is served over HTTP."""
    root_path = root.split("://", 1)[-1].rstrip("/")
    path = uri.split("://", 1)[-1]
    if "://" not in root:
        root_path, path = str(Path(root_path).resolve()), str(Path(path).resolve())
    relative = posixpath.relpath(path, root_path)
    if relative.startswith(".."):
        raise ValueError(f"{uri} is not inside the store root {root}")
    return store_url.rstrip("/") + "/" + quote(relative)


def gallery_entries(
    store: ImageStore,
    prefix: str,
    batch: str,
    manifest: pd.DataFrame,
    *,
    subtitle: str,
    store_url: str | None,
    log: Any,
) -> tuple[str, dict[str, Any]]:
    """Write the batch's gallery page and manifest copy; the batch folder and their links.

    A page that cannot be written is logged, never fatal: the images are stored already.
    """
    from krea_dagster.engine.gallery import write_batch_gallery

    folder = store.uri(store.batch_folder(prefix, batch))
    try:
        files = write_batch_gallery(
            store, prefix, batch, manifest, title=f"{prefix} / {batch}", subtitle=subtitle
        )
    except OSError as error:
        log.warning(f"could not write the gallery page of batch {batch!r}: {error}")
        return folder, {}
    page_url = served_url(store_url, store.root, files.page) if store_url else file_url(files.page)
    return files.folder, {
        "gallery": dg.MetadataValue.url(page_url),
        "gallery_path": dg.MetadataValue.path(files.page),
        "manifest_copy": dg.MetadataValue.path(files.manifest),
    }
