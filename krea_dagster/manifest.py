"""The manifest of a batch generation: one row per prompt (its metadata: ``metadata.py``).

The manifest is an ordinary pandas DataFrame, one row per prompt of the batch, so downstream
assets take it as an input like any table: where the image is, whether it is verified, what
it cost, and why it failed when it did. Its ``status`` column says, per prompt:

=================  =====================================================================
``completed``      a verified image is in the store (``uri``, ``sha256``, size)
``failed``         Krea failed the job (``error_code`` / ``error_message`` from Krea)
``cancelled``      the job was cancelled (by a user, by poll_timeout, or unattributable)
``image_error``    the job completed (and was paid) but its result is not a valid image
``pending``        the job is still rendering at Krea
``unresolved``     a submission whose outcome is unknown and could not be reconciled
``not_submitted``  no job: refused by Krea (balance, token, body) or the batch stopped
=================  =====================================================================
"""

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from krea_dagster.api import JobStatus
from krea_dagster.ledger import Submission, SubmissionState

__all__ = [
    "MANIFEST_COLUMNS",
    "ManifestStatus",
    "build_manifest",
    "row_status",
]

MANIFEST_COLUMNS = (
    "batch",
    "generation",
    "row",
    "prompt_key",
    "prompt",
    "variant",
    "job_id",
    "status",
    "uri",
    "width",
    "height",
    "sha256",
    "cost_usd",
    "error_code",
    "error_message",
)


class ManifestStatus:
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    IMAGE_ERROR = "image_error"
    PENDING = "pending"
    UNRESOLVED = "unresolved"
    NOT_SUBMITTED = "not_submitted"


def row_status(row: Submission | None) -> str:
    """The manifest status of a prompt from its latest ledger row."""
    if row is None or row.state == SubmissionState.NOT_CREATED:
        return ManifestStatus.NOT_SUBMITTED
    if row.is_unresolved:
        return ManifestStatus.UNRESOLVED
    if row.state == JobStatus.COMPLETED:
        if row.image_uri:
            return ManifestStatus.COMPLETED
        # Storing the image failed (the collector records why), or nobody stored it yet.
        return ManifestStatus.IMAGE_ERROR if row.error_code else ManifestStatus.PENDING
    if row.state == JobStatus.FAILED:
        return ManifestStatus.FAILED
    if row.state == JobStatus.CANCELLED:
        return ManifestStatus.CANCELLED
    return ManifestStatus.PENDING


def build_manifest(
    prompts: pd.DataFrame,
    rows: Mapping[str, Submission],
    *,
    batch: str,
    generation: int,
    carried_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """One manifest row per prompt, in the batch's order, with the carried columns at the end."""
    records: list[dict[str, Any]] = []
    for prompt in prompts.to_dict(orient="records"):
        row = rows.get(prompt["prompt_key"])
        status = row_status(row)
        completed = status == ManifestStatus.COMPLETED
        record: dict[str, Any] = {
            "batch": batch,
            "generation": generation,
            "row": prompt["row"],
            "prompt_key": prompt["prompt_key"],
            "prompt": prompt["prompt"],
            "variant": prompt["variant"],
            "job_id": row.job_id if row else None,
            "status": status,
            "uri": row.image_uri if completed and row else None,
            "width": row.width if completed and row else None,
            "height": row.height if completed and row else None,
            "sha256": row.sha256 if completed and row else None,
            "cost_usd": (row.cost_usd or 0.0) if row and row.is_paid else 0.0,
            "error_code": None if completed or row is None else row.error_code,
            "error_message": None if completed or row is None else row.error_message,
        }
        if row is None:
            record["error_code"] = "not_submitted"
            record["error_message"] = (
                "no submission for this prompt in this generation; run the jobs asset"
            )
        elif status == ManifestStatus.PENDING:
            record["error_code"] = record["error_code"] or "pending"
            record["error_message"] = record["error_message"] or (
                "job completed at Krea; its image is not stored yet"
                if row.is_paid
                else f"job is {row.state} at Krea"
            )
        for column in carried_columns:
            record[column] = prompt.get(column)
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=[*MANIFEST_COLUMNS, *carried_columns])
    for column in ("width", "height"):
        frame[column] = frame[column].astype("Int64")
    return frame
