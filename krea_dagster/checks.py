"""The per-batch checks of a step's outputs, and the outcome they judge.

Every step of every node gets the same four checks on its outputs asset, one result per batch
(partitioned like the asset):

- ``no_failed_prompts``: no prompt's job ended without an output; WARN for some failures,
  ERROR above ``max_failed_fraction`` (the step then fails too, so the run and the partition
  show it);
- ``every_prompt_resolved``: every prompt has a verified output, a recorded terminal failure or
  a recorded skip (its previous step had no output); a submission reconciliation could not
  decide is named;
- ``images_have_requested_size``: every stored output has the width and height its request
  asked for;
- ``no_duplicate_paid_jobs``: the ledger holds no two paid jobs for one prompt of a generation.
"""

import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd

from krea_dagster.engine.manifest import ManifestStatus
from krea_dagster.engine.pipeline import KreaImagePipeline
from krea_dagster.engine.prompts import expected_size
from krea_dagster.metadata import MAX_KEYS_IN_METADATA, KreaCheckMetadata, failed_prompts

__all__ = [
    "CHECK_FAILED",
    "CHECK_NAMES",
    "CHECK_NO_DOUBLE_PAY",
    "CHECK_RESOLVED",
    "CHECK_SIZE",
    "DEFAULT_MAX_FAILED_FRACTION",
    "BatchOutcome",
    "check_fraction",
    "check_results",
    "check_specs",
]

DEFAULT_MAX_FAILED_FRACTION = 0.5
CHECK_RESOLVED = "every_prompt_resolved"
CHECK_SIZE = "images_have_requested_size"
CHECK_NO_DOUBLE_PAY = "no_duplicate_paid_jobs"
CHECK_FAILED = "no_failed_prompts"
CHECK_NAMES = (CHECK_FAILED, CHECK_RESOLVED, CHECK_SIZE, CHECK_NO_DOUBLE_PAY)


def check_fraction(value: Any, name: str) -> float:
    """A share of a batch's prompts, 0 to 1 (``ValueError`` naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(
            f"{name}={value!r} must be a number from 0 to 1 (the share of a batch's prompts "
            "that may fail), e.g. 0.5; 0 fails a batch on its first failure, 1 never"
        )
    return float(value)


def check_specs(
    key: dg.AssetKey, partitions: dg.PartitionsDefinition, max_failed_fraction: float
) -> list[dg.AssetCheckSpec]:
    """The outputs checks of a step, one result per batch (partitioned like the asset)."""
    descriptions = {
        CHECK_FAILED: (
            "No prompt's Krea job of the batch ended without an output (failed, cancelled, "
            "invalid output). Severity WARN for some failures, ERROR when more than "
            f"{max_failed_fraction:.0%} of the prompts failed (max_failed_fraction); the step "
            "then fails too, so the run and the partition show it."
        ),
        CHECK_RESOLVED: (
            "Every prompt has a verified output, a recorded terminal failure or a recorded skip."
        ),
        CHECK_SIZE: "Every stored output has the width and height its request asked for.",
        CHECK_NO_DOUBLE_PAY: "The ledger holds no two paid jobs for one prompt in one generation.",
    }
    with warnings.catch_warnings():
        # Partitioned checks are a preview in Dagster 1.13 (each result then names its batch in
        # the UI's check history); the warning would repeat for every node built.
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
        return [
            dg.AssetCheckSpec(name, asset=key, description=text, partitions_def=partitions)
            for name, text in descriptions.items()
        ]


@dataclass(frozen=True)
class BatchOutcome:
    """How many prompts of a batch generation ended without an output, against the threshold.

    Rows the step skipped (their previous step had no output) are not this step's prompts.
    """

    batch: str
    generation: int
    prompts: int
    images: int
    failed: int
    skipped: int
    threshold: float
    error_codes: dict[str, int]
    cost_usd: float
    unpriced: int

    @classmethod
    def of(
        cls, manifest: pd.DataFrame, *, batch: str, generation: int, threshold: float
    ) -> "BatchOutcome":
        failed = failed_prompts(manifest)
        codes = failed["error_code"].fillna(failed["status"]).astype(str)
        completed = manifest["status"] == ManifestStatus.COMPLETED
        skipped = int((manifest["status"] == ManifestStatus.SKIPPED).sum())
        return cls(
            batch=batch,
            generation=generation,
            prompts=len(manifest) - skipped,
            images=int(completed.sum()),
            failed=len(failed),
            skipped=skipped,
            threshold=threshold,
            error_codes={str(code): int(n) for code, n in sorted(Counter(codes).items())},
            cost_usd=round(float(manifest["cost_usd"].sum()), 6),
            unpriced=int((completed & manifest["cost_usd"].isna()).sum()),
        )

    @property
    def fraction(self) -> float:
        return self.failed / self.prompts if self.prompts else 0.0

    @property
    def too_many_failed(self) -> bool:
        return self.fraction > self.threshold

    @property
    def cost_text(self) -> str:
        """The batch's cost in words: a lower bound when some completed jobs have no price."""
        text = f"${self.cost_usd:.4f}"
        if self.unpriced:
            text += f" plus {self.unpriced} job(s) of unknown price"
        return text

    @property
    def summary(self) -> str:
        """One line: the batch, how many outputs, how many failed and why, the cost."""
        codes = ", ".join(f"{code} x{count}" for code, count in self.error_codes.items())
        failed = f"{self.failed} of {self.prompts} prompts failed" + (
            f" ({codes})" if codes else ""
        )
        skipped = f", {self.skipped} skipped upstream" if self.skipped else ""
        return (
            f"batch {self.batch!r} generation {self.generation}: {self.images} of "
            f"{self.prompts} outputs stored, {failed}{skipped}, estimated cost {self.cost_text}"
        )


def check_results(
    pipeline: KreaImagePipeline, manifest: pd.DataFrame, outcome: BatchOutcome
) -> Iterator[dg.AssetCheckResult]:
    """The four check results of one batch generation (see the module docstring)."""
    batch, generation = outcome.batch, outcome.generation
    judged = f"batch {batch!r} generation {generation}"
    # Each check's numbers are its own finding (what its Plots show), the batch is text.
    base: dict[str, Any] = {"batch": batch, "generation": str(generation)}

    failed = failed_prompts(manifest)
    yield dg.AssetCheckResult(
        check_name=CHECK_FAILED,
        passed=outcome.failed == 0,
        severity=(
            dg.AssetCheckSeverity.ERROR if outcome.too_many_failed else dg.AssetCheckSeverity.WARN
        ),
        description=(
            f"{judged}: {outcome.failed} of {outcome.prompts} prompts failed "
            f"({outcome.fraction:.0%}; ERROR above {outcome.threshold:.0%})"
        ),
        metadata=dict(
            KreaCheckMetadata(
                **base,
                prompts=outcome.prompts,
                failed_prompts=outcome.failed,
                failed_fraction=round(outcome.fraction, 4),
                max_failed_fraction=outcome.threshold,
                error_codes=dg.MetadataValue.json(outcome.error_codes),
                prompt_keys=dg.MetadataValue.json(
                    list(failed["prompt_key"].head(MAX_KEYS_IN_METADATA))
                ),
            )
        ),
    )

    unresolved = manifest[
        manifest["status"].isin(
            [ManifestStatus.PENDING, ManifestStatus.UNRESOLVED, ManifestStatus.NOT_SUBMITTED]
        )
    ]
    reported = pipeline.ledger.reported(pipeline.scope, batch)
    yield dg.AssetCheckResult(
        check_name=CHECK_RESOLVED,
        passed=unresolved.empty,
        description=f"{judged}: {len(unresolved)} of {outcome.prompts} prompts unresolved"
        + (
            f"; {len(reported)} submission(s) reconciliation could not decide: resolve them "
            "by hand (see krea/reported)"
            if reported
            else ""
        ),
        metadata=dict(
            KreaCheckMetadata(
                **base,
                unresolved=len(unresolved),
                prompt_keys=dg.MetadataValue.json(
                    list(unresolved["prompt_key"].head(MAX_KEYS_IN_METADATA))
                ),
                reported=dg.MetadataValue.json(
                    [
                        {
                            "submission_id": r.submission_id,
                            "prompt_key": r.prompt_key,
                            "why": (r.error_message or "")[:500],
                        }
                        for r in reported[:20]
                    ]
                ),
            )
        ),
    )

    rows = pipeline.latest(batch, generation)
    wrong: list[str] = []
    for record in manifest[manifest["status"] == ManifestStatus.COMPLETED].to_dict(
        orient="records"
    ):
        row = rows[record["prompt_key"]]
        wanted = expected_size(row.request)
        if wanted is not None and (record["width"], record["height"]) != wanted:
            wrong.append(record["prompt_key"])
    yield dg.AssetCheckResult(
        check_name=CHECK_SIZE,
        passed=not wrong,
        description=f"{judged}: {len(wrong)} of {outcome.images} outputs have the wrong size",
        metadata=dict(
            KreaCheckMetadata(
                **base,
                wrong_size=len(wrong),
                prompt_keys=dg.MetadataValue.json(wrong[:MAX_KEYS_IN_METADATA]),
            )
        ),
    )

    duplicates = pipeline.ledger.paid_duplicates(pipeline.scope, batch, generation)
    yield dg.AssetCheckResult(
        check_name=CHECK_NO_DOUBLE_PAY,
        passed=not duplicates,
        description=f"{judged}: {len(duplicates)} prompts paid twice",
        metadata=dict(KreaCheckMetadata(**base, duplicates=dg.MetadataValue.json(duplicates))),
    )
