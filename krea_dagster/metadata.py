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
catalog price of its request (``krea_dagster/data/krea_models.json``, or ``price_usd``); failed
and cancelled jobs are not billed. Two numbers, so Dagster's plot of cost per materialization
adds up: ``krea/run_cost_usd`` is what this materialization adds (the jobs a jobs run
submitted; the billing an outputs run reports for the first time, 0 for a re-run that changed
nothing), ``krea/batch_cost_usd`` what the whole batch generation has cost so far. A completed
job whose model has no known price is counted apart (``krea/unpriced_jobs``), never as $0.
"""

import posixpath
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import dagster as dg
import pandas as pd

# Not exported by ``dagster`` in 1.13 (its own TableMetadataSet subclasses it here); the package
# pins dagster<1.14, and every test that builds assets imports this module.
from dagster._core.definitions.metadata.metadata_set import NamespacedMetadataSet

from krea_dagster.api.catalog import shorten
from krea_dagster.engine.collect import Thumbnail
from krea_dagster.engine.manifest import OUTPUTS_COLUMN, ManifestStatus
from krea_dagster.engine.prompts import (
    ROW_KEY,
    SKIP_COLUMN,
    VALIDATION_COLUMN,
    PreparedBatch,
    PromptValidationError,
)
from krea_dagster.engine.store import ImageStore

if TYPE_CHECKING:
    from krea_dagster.api.catalog import CatalogOrigin
    from krea_dagster.checks import BatchOutcome
    from krea_dagster.engine.nodes import KreaStep
    from krea_dagster.engine.pipeline import KreaImagePipeline

__all__ = [
    "MANIFEST_COLUMN_DOCS",
    "PROMPTS_COLUMN_DOCS",
    "KreaCheckMetadata",
    "KreaImagesMetadata",
    "KreaJobsMetadata",
    "KreaPromptsMetadata",
    "failures_table",
    "images_metadata",
    "jobs_metadata",
    "markdown_cell",
    "metadata_text",
    "problems_table",
    "prompts_metadata",
    "table_schema",
    "thumbnails_markdown",
]

MAX_FAILURE_ROWS = 100
#: Longest text of one value from outside (a cell, a column name, Krea's message) in metadata.
MAX_VALUE_CHARS = 200
#: Columns a ``dagster/column_schema`` lists; the rest are counted in a last entry.
MAX_SCHEMA_COLUMNS = 200
MAX_KEYS_IN_METADATA = 50
MAX_JOB_IDS_IN_METADATA = 200
PREVIEW_ROWS = 10
# Prompts whose Krea job ended without an image. Pending and unresolved prompts may still get
# one and not-submitted ones have no job yet: the every_prompt_resolved check reports those.
FAILED_STATUSES = (ManifestStatus.FAILED, ManifestStatus.CANCELLED, ManifestStatus.IMAGE_ERROR)

# name -> (type, description). Types are the table types the UI shows, not pandas dtypes.
MANIFEST_COLUMN_DOCS: dict[str, tuple[str, str]] = {
    "batch": ("string", "The prompt batch (the partition key)."),
    "generation": ("int", "Generation of the batch: 1, then +1 at each regeneration."),
    "row": ("int", "Row of the prompt in its batch file (1 = first data row)."),
    ROW_KEY: (
        "string",
        "Identifies the source row from step to step: the key column's value, else a hash.",
    ),
    "prompt_key": ("string", "Stable id of the prompt's request (hash of its parameters)."),
    "prompt": ("string", "The prompt text."),
    "variant": ("string", "Makes otherwise identical rows distinct prompts; empty when unused."),
    "job_id": ("string", "Krea job id; empty when nothing was submitted."),
    "status": (
        "string",
        "completed, failed, cancelled, image_error, pending, unresolved, not_submitted or "
        "skipped (a later step's row whose previous step has no output).",
    ),
    "uri": ("string", "Where the verified image is in the store; empty without an image."),
    "width": ("int", "Width of the stored image in pixels."),
    "height": ("int", "Height of the stored image in pixels."),
    "sha256": ("string", "SHA-256 of the stored image (its path in the store derives from it)."),
    "cost_usd": (
        "float",
        "Estimated USD: the catalog price of the request for a completed job (Krea reports no "
        "charge per job), 0 for failed or cancelled jobs, which are not billed; empty when the "
        "model has no known price.",
    ),
    "error_code": ("string", "Why there is no image: Krea's error code or the collector's."),
    "error_message": ("string", "Why there is no image, in words."),
    OUTPUTS_COLUMN: (
        "json",
        "A node app's step: the stored result of every job of the row's execution, in order "
        "(uri is the first).",
    ),
    "step": ("string", "The step of the node that made this manifest."),
    "step_version": ("string", "A hash of the step's templates and settings."),
}
PROMPTS_COLUMN_DOCS: dict[str, tuple[str, str]] = {
    "prompt_key": MANIFEST_COLUMN_DOCS["prompt_key"],
    "row": MANIFEST_COLUMN_DOCS["row"],
    "prompt": MANIFEST_COLUMN_DOCS["prompt"],
    "variant": MANIFEST_COLUMN_DOCS["variant"],
    ROW_KEY: MANIFEST_COLUMN_DOCS[ROW_KEY],
    "request_json": (
        "string",
        "The request body to send to Krea (JSON), defaults applied; a referenced file stands "
        "as its upload token until it is uploaded, just before the request is sent.",
    ),
    "references_json": ("json", "The files the request names, by upload token (JSON)."),
    "estimated_usd": (
        "float",
        "Estimated USD of one job for this request (catalog price); empty when unpriced.",
    ),
    SKIP_COLUMN: ("string", "Why this row is not sent: its previous step has no output for it."),
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

    summary: str | None = None
    model: str | None = None
    estimated_cost_usd: float | None = None  # of the whole batch, were it all sent
    unpriced_prompts: int | None = None
    skipped_rows: int | None = None
    #: Which catalog validated the batch (bundled or live, fingerprint, fetch time, fallback).
    catalog: dg.JsonMetadataValue | None = None
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
    run_cost_usd: float | None = None  # estimated, of the jobs this run submitted
    unpriced_jobs: int | None = None  # submitted by this run with no known price
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
    skipped_rows: int | None = None
    run_cost_usd: float | None = None
    batch_cost_usd: float | None = None
    unpriced_jobs: int | None = None
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
    """The prompts without an output: status, Krea's code and message, job id."""
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


# -- the renderer of each asset's materialization -------------------------------------------


def markdown_preview(table: pd.DataFrame) -> str:
    """The first rows of a prompts table: row, prompt, variant, estimated USD (or why skipped)."""
    lines = ["| row | prompt | variant | est. USD |", "|---|---|---|---|"]
    for record in table.head(PREVIEW_ROWS).to_dict(orient="records"):
        prompt = markdown_cell(record["prompt"], 120)
        skip = record.get(SKIP_COLUMN)
        cost = record["estimated_usd"]
        if isinstance(skip, str) and skip:
            shown = f"skipped: upstream {markdown_cell(skip, 40)}"
        else:
            shown = "unknown" if cost is None or pd.isna(cost) else f"{cost:.4f}"
        lines.append(
            f"| {record['row']} | {prompt} | {markdown_cell(record['variant'], 60)} | {shown} |"
        )
    if len(table) > PREVIEW_ROWS:
        lines.append(f"\n_{len(table) - PREVIEW_ROWS} more rows_")
    return "\n".join(lines)


def problems_table(error: PromptValidationError) -> dg.TableMetadataValue:
    """Every problem of a refused batch (up to 200): row, location, column, rule, message."""
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "row": problem.row if problem.row is not None else 0,
                    "location": shorten(problem.location or "", 200),
                    "column": shorten(str(problem.column or ""), 120),
                    "rule": problem.rule,
                    "message": shorten(problem.message, 600),
                }
            )
            for problem in error.problems[:200]
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("row", "int"),
                dg.TableColumn("location", "string"),
                dg.TableColumn("column", "string"),
                dg.TableColumn("rule", "string"),
                dg.TableColumn("message", "string"),
            ]
        ),
    )


def prompts_metadata(
    model: str, prepared: PreparedBatch, skipped_files: Sequence[Any], origin: "CatalogOrigin"
) -> dict[str, Any]:
    """A prompts materialization: the validated table, its estimate, which catalog validated
    it, what was not read."""
    table = prepared.table
    skipped = int(table[SKIP_COLUMN].notna().sum()) if SKIP_COLUMN in table.columns else 0
    sent = len(table) - skipped
    summary = f"{sent} valid prompt(s), estimated {prepared.estimate_text}"
    if skipped:
        summary += f"; {skipped} row(s) skipped (no output upstream)"
    return {
        "dagster/row_count": len(table),
        "dagster/column_schema": table_schema(table, PROMPTS_COLUMN_DOCS),
        **KreaPromptsMetadata(
            summary=summary,
            model=model,
            estimated_cost_usd=prepared.estimated_usd,
            unpriced_prompts=prepared.unpriced_rows,
            skipped_rows=skipped,
            catalog=dg.MetadataValue.json(
                {**origin.to_json(), "validated": VALIDATION_COLUMN not in table.columns}
            ),
            skipped_files=dg.MetadataValue.json(
                {
                    shorten(entry.file, 300): shorten(entry.message, 300)
                    for entry in skipped_files[:50]
                }
            ),
            preview=dg.MetadataValue.md(markdown_preview(table)),
        ),
    }


def jobs_metadata(batch: str, summary: Any, rows: Mapping[str, Any]) -> dict[str, Any]:
    """A jobs materialization: what this run submitted and what it is estimated to cost."""
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row.state] = counts.get(row.state, 0) + 1
    job_ids = [row.job_id for row in rows.values() if row.job_id]
    return dict(
        KreaJobsMetadata(
            batch=batch,
            generation=str(summary.generation),
            prompts=summary.planned,
            submitted_this_run=sum(report.submitted for report in summary.rounds),
            already_covered=sum(report.skipped for report in summary.rounds)
            + (summary.planned - summary.to_submit),
            reconciled=len(summary.reconciled),
            run_cost_usd=round(sum(report.submitted_usd for report in summary.rounds), 6),
            unpriced_jobs=sum(report.submitted_unpriced for report in summary.rounds),
            status_counts=dg.MetadataValue.json(dict(sorted(counts.items()))),
            job_ids=dg.MetadataValue.json(job_ids[:MAX_JOB_IDS_IN_METADATA]),
        )
    )


def previous_batch_cost(
    context: dg.AssetExecutionContext, key: dg.AssetKey, batch: str, generation: int
) -> float:
    """The batch cost the last materialization of this partition reported for this generation
    (0 for another generation or none): what this materialization's cost adds to."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[batch]), limit=1, ascending=False
    ).records
    if not records or records[0].asset_materialization is None:
        return 0.0
    metadata = records[0].asset_materialization.metadata
    same = metadata.get("krea/generation")
    cost = metadata.get("krea/batch_cost_usd")
    if same is None or cost is None or str(same.value) != str(generation):
        return 0.0
    value = cost.value
    return float(value) if isinstance(value, int | float) else 0.0


def images_metadata(
    context: dg.AssetExecutionContext,
    pipeline: "KreaImagePipeline",
    manifest: pd.DataFrame,
    outcome: "BatchOutcome",
    report: Any,
    *,
    store_url: str | None,
    step: "KreaStep",
) -> dict[str, Any]:
    """An outputs materialization: counts, cost (this run's and the batch's), thumbnails, the
    failures table, the gallery page, the column schema."""
    batch = outcome.batch
    order = {key: index for index, key in enumerate(manifest["prompt_key"])}  # batch order
    folder, links = gallery_entries(
        pipeline.store,
        pipeline.prefix,
        batch,
        manifest,
        subtitle=f"generation {outcome.generation} · {step.model}",
        store_url=store_url,
        log=context.log,
    )
    before = previous_batch_cost(context, context.asset_key, batch, outcome.generation)
    if outcome.unpriced:
        context.log.warning(
            f"batch {batch!r}: {outcome.unpriced} completed job(s) of {step.model} have no known "
            "price, so the cost shown is a lower bound; give price_usd (USD per request) to "
            "count them"
        )
    entries = dict(
        KreaImagesMetadata(
            batch=batch,
            generation=str(outcome.generation),
            images=outcome.images,
            failed_prompts=outcome.failed,
            skipped_rows=outcome.skipped,
            run_cost_usd=round(max(outcome.cost_usd - before, 0.0), 6),
            batch_cost_usd=outcome.cost_usd,
            unpriced_jobs=outcome.unpriced,
            status_counts=dg.MetadataValue.json(status_counts(manifest)),
            thumbnails=dg.MetadataValue.md(
                thumbnails_markdown(
                    sorted(report.thumbnails, key=lambda thumb: order.get(thumb.prompt_key, 0)),
                    total_images=outcome.images,
                )
            ),
            failures=failures_table(manifest),
            this_run=dg.MetadataValue.json(
                {
                    "polls": report.polls,
                    "downloaded": report.downloaded,
                    "already_stored": report.already_stored,
                }
            ),
            **links,
        )
    )
    if step.name:
        entries["krea/step_version"] = step.version
    return {
        **entries,
        "dagster/row_count": len(manifest),
        "dagster/uri": folder,
        "dagster/column_schema": table_schema(manifest, MANIFEST_COLUMN_DOCS),
    }
