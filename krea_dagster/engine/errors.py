"""The engine's error vocabulary: one exception tree, one set of error codes.

Exceptions (the client's own, ``krea_dagster.api.errors``, sit beside this tree)::

    EngineError                    something stopped a batch step; nothing was paid twice
    ├── BudgetExceededError        the batch's estimate is above max_usd_per_run (nothing sent)
    ├── BatchStoppedError          Krea refused to go on (balance, token, rate, unreachable)
    │                              .transient: a retry later may succeed (rate, unreachable)
    └── LeaseUnavailableError      other submissions hold every submit lane of the account too long

``ErrorCode`` values are what the ledger's ``error_code`` column and the manifest's
``error_code`` column hold for the engine's own outcomes; a failed Krea job keeps Krea's code
(``safety_filter``, ``internal_error``, ...), which ``is_transient_job_error`` classifies.
"""

from enum import StrEnum

__all__ = [
    "PERMANENT_JOB_ERRORS",
    "TRANSIENT_JOB_ERRORS",
    "BatchStoppedError",
    "BudgetExceededError",
    "EngineError",
    "ErrorCode",
    "LeaseUnavailableError",
    "is_transient_job_error",
]


class ErrorCode(StrEnum):
    """Error codes the engine writes to the ledger and the manifest."""

    #: Krea refused the request body (400/422); counts as an attempt.
    REJECTED = "rejected"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    #: The POST never reached Krea (connect errors).
    NOT_SENT = "not_sent"
    #: The POST may have created a job; reconciliation decides.
    AMBIGUOUS_SUBMIT = "ambiguous_submit"
    #: Reconciliation proved no job was created; the prompt may be sent again.
    RECONCILED_NOT_CREATED = "reconciled_not_created"
    #: Krea refused the request because an uploaded file it names is gone (the asset was
    #: deleted): nothing was created; the file is uploaded again and the prompt re-sent.
    STALE_UPLOAD = "stale_upload"
    #: The job of a lost answer, which several unresolved rows could each have made, was
    #: cancelled before it completed: nothing billed; the prompt is sent again.
    RECONCILED_CANCELLED = "reconciled_cancelled"
    #: Reconciliation could not decide; reported, never re-sent on a guess.
    UNDECIDABLE = "undecidable"
    #: No submission for the prompt in this generation.
    NOT_SUBMITTED = "not_submitted"
    PENDING = "pending"
    POLL_TIMEOUT = "poll_timeout"
    #: A failed upstream row: the step downstream of it was not paid for.
    UPSTREAM_FAILED = "upstream_failed"
    # The job completed (and was paid) but its result could not be stored as a valid output:
    #: the result does not decode as an image,
    INVALID_IMAGE = "invalid_image"
    #: or as a playable video;
    INVALID_VIDEO = "invalid_video"
    #: the image is not the width and height the request asked for,
    WRONG_SIZE = "wrong_size"
    #: or not its aspect ratio;
    WRONG_ASPECT_RATIO = "wrong_aspect_ratio"
    #: Krea reported the job completed without a result URL;
    NO_RESULT = "no_result"
    #: the result could not be downloaded,
    DOWNLOAD_FAILED = "download_failed"
    #: or not written to the store.
    STORE_FAILED = "store_failed"


#: Krea job error codes worth another (unbilled) attempt: the provider or the platform failed.
TRANSIENT_JOB_ERRORS = frozenset({"internal_error", "timeout", "provider_error", "server_error"})
#: Codes that would fail again with the same request: never resubmitted.
PERMANENT_JOB_ERRORS = frozenset(
    {"safety_filter", "nsfw", "ip_detected", "validation_error", "invalid_request", "moderation"}
)


def is_transient_job_error(code: str | None) -> bool:
    """Whether a failed job with this code may be resubmitted (within ``max_attempts``).

    Unknown codes are permanent: paying again for a request that may fail the same way is the
    costlier mistake.
    """
    return code in TRANSIENT_JOB_ERRORS


class EngineError(Exception):
    """Something stopped a batch step; nothing was paid twice."""


class BudgetExceededError(EngineError, ValueError):
    """The new submissions of a batch are estimated above ``max_usd_per_run``."""


class BatchStoppedError(EngineError):
    """Krea refused to go on with the batch (balance, token, rate limit, unreachable)."""

    def __init__(self, message: str, *, code: str, transient: bool) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


class LeaseUnavailableError(EngineError):
    """Other submissions hold every submit lane of the account longer than this step waits."""

    transient = True
