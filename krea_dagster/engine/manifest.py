"""The manifest of a batch generation: one row per prompt, what happened to it.

The manifest is an ordinary pandas DataFrame, one row per prompt of the batch, so downstream
assets take it as an input like any table: where the image is, whether it is verified, what
it cost, and why it failed when it did. Its ``status`` column says, per prompt:

=================  =====================================================================
``completed``      a verified image is in the store (``uri``, ``sha256``, size)
``failed``         Krea failed the job (``error_code`` / ``error_message`` from Krea)
``cancelled``      the job was cancelled (by a user, by poll_timeout, or unattributable)
``image_error``    the job completed (and was paid) but its result is not a valid image
``pending``        the job is still rendering at Krea
``unresolved``     a submission whose outcome is unknown, or that reconciliation reported
``not_submitted``  no job: refused by Krea (balance, token, body) or the batch stopped
``skipped``        a later step of a node did not send the row: its previous step has no
                   output for it (``error_code`` ``upstream_failed``)
=================  =====================================================================

A node app's row stands for all the jobs of its execution: ``completed`` once every one has a
verified image (``uri`` is the first job's; ``outputs`` lists every job's, in order), otherwise
the status of the first job that has none; its cost is theirs together.
"""

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import pandas as pd

from krea_dagster.api import JobStatus
from krea_dagster.engine.errors import ErrorCode
from krea_dagster.engine.ledger import Submission, SubmissionState
from krea_dagster.engine.prompts import ROW_KEY, SKIP_COLUMN

__all__ = [
    "MANIFEST_COLUMNS",
    "OUTPUTS_COLUMN",
    "ManifestStatus",
    "build_manifest",
    "row_status",
]

MANIFEST_COLUMNS = (
    "batch",
    "generation",
    "row",
    "row_key",
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
#: A node app's step: every job's stored result of the row, in order (after the columns above).
OUTPUTS_COLUMN = "outputs"


class ManifestStatus(StrEnum):
    """The ``status`` of a manifest row (the table above)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    IMAGE_ERROR = "image_error"
    PENDING = "pending"
    UNRESOLVED = "unresolved"
    NOT_SUBMITTED = "not_submitted"
    #: A later step of a node did not send the row: its previous step has no output for it.
    SKIPPED = "skipped"


def row_status(row: Submission | None) -> str:
    """The manifest status of a prompt from its latest ledger row."""
    if row is None or row.state == SubmissionState.NOT_CREATED:
        return ManifestStatus.NOT_SUBMITTED
    if row.is_unresolved or row.is_reported:
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
    outputs: Mapping[str, Sequence[Submission]] | None = None,
) -> pd.DataFrame:
    """One manifest row per prompt, in the batch's order, with the carried columns at the end.

    ``outputs`` (a node app's step) are the output rows of each submission: the manifest then
    has an ``outputs`` column, and each row's status, error and cost cover all its jobs.
    """
    records: list[dict[str, Any]] = []
    for prompt in prompts.to_dict(orient="records"):
        skip = prompt.get(SKIP_COLUMN)
        if isinstance(skip, str) and skip:
            records.append(_skipped(prompt, skip, batch, generation, carried_columns, outputs))
            continue
        row = rows.get(prompt["prompt_key"])
        jobs = [row, *outputs.get(row.submission_id, ())] if row and outputs is not None else []
        billed = jobs or ([row] if row else [])
        status = row_status(row)
        deciding = row
        for job in jobs:
            if row_status(job) != ManifestStatus.COMPLETED:
                status, deciding = row_status(job), job
                break
        completed = status == ManifestStatus.COMPLETED
        record: dict[str, Any] = {
            "batch": batch,
            "generation": generation,
            "row": prompt["row"],
            ROW_KEY: prompt.get(ROW_KEY, prompt["prompt_key"]),
            "prompt_key": prompt["prompt_key"],
            "prompt": prompt["prompt"],
            "variant": prompt["variant"],
            "job_id": row.job_id if row else None,
            "status": str(status),
            "uri": row.image_uri if completed and row else None,
            "width": row.width if completed and row else None,
            "height": row.height if completed and row else None,
            "sha256": row.sha256 if completed and row else None,
            "cost_usd": _cost(billed),
            "error_code": None if completed or deciding is None else deciding.error_code,
            "error_message": None if completed or deciding is None else deciding.error_message,
        }
        if outputs is not None:
            record[OUTPUTS_COLUMN] = [job.image_uri for job in jobs if job.image_uri]
        if row is None:
            record["error_code"] = ErrorCode.NOT_SUBMITTED.value
            record["error_message"] = (
                "no submission for this prompt in this generation; run the jobs asset"
            )
        elif status == ManifestStatus.PENDING and deciding is not None:
            record["error_code"] = record["error_code"] or ErrorCode.PENDING.value
            record["error_message"] = record["error_message"] or (
                "job completed at Krea; its image is not stored yet"
                if deciding.is_paid
                else f"job is {deciding.state} at Krea"
            )
        for column in carried_columns:
            record[column] = prompt.get(column)
        records.append(record)
    extra = [OUTPUTS_COLUMN] if outputs is not None else []
    frame = pd.DataFrame.from_records(
        records, columns=[*MANIFEST_COLUMNS, *extra, *carried_columns]
    )
    for column in ("width", "height"):
        frame[column] = frame[column].astype("Int64")
    frame["cost_usd"] = frame["cost_usd"].astype("float64")  # unknown price: NaN
    return frame


def _cost(jobs: Sequence[Submission]) -> float | None:
    """What the ledger charged for these jobs (a prompt's row, then a node app's output rows),
    None when Krea billed one of them and its price is unknown.

    A node-app execution is charged on its submission row once any of its jobs completed,
    whatever its first job did; its output rows add nothing.
    """
    if not jobs:
        return 0.0
    if any(job.is_paid for job in jobs) and jobs[0].cost_usd is None:
        return None
    return sum(job.cost_usd or 0.0 for job in jobs)


def _skipped(
    prompt: Mapping[Any, Any],
    skip: str,
    batch: str,
    generation: int,
    carried_columns: Sequence[str],
    outputs: Mapping[str, Sequence[Submission]] | None,
) -> dict[str, Any]:
    """The manifest row of a prompt the step did not send: its previous step has no output."""
    record: dict[str, Any] = dict.fromkeys(MANIFEST_COLUMNS)
    record.update(
        {
            "batch": batch,
            "generation": generation,
            "row": prompt["row"],
            ROW_KEY: prompt.get(ROW_KEY),
            "prompt_key": prompt["prompt_key"],
            "prompt": prompt["prompt"],
            "variant": prompt["variant"],
            "status": ManifestStatus.SKIPPED.value,
            "cost_usd": 0.0,
            "error_code": ErrorCode.UPSTREAM_FAILED.value,
            "error_message": f"not sent: the previous step's output of this row is {skip}",
        }
    )
    if outputs is not None:
        record[OUTPUTS_COLUMN] = []
    for column in carried_columns:
        record[column] = prompt.get(column)
    return record
