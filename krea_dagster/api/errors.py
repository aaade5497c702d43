"""Exceptions raised by the Krea client.

Every exception derives from one base, ``KreaError``::

    KreaError
    ├── APIError                         talking to the API went wrong
    │   ├── APIStatusError               Krea answered with a non-2xx status
    │   │   ├── BadRequestError          400
    │   │   ├── AuthenticationError      401
    │   │   ├── InsufficientCreditsError 402
    │   │   ├── PermissionDeniedError    403
    │   │   ├── NotFoundError            404
    │   │   ├── UnprocessableEntityError 422
    │   │   ├── RateLimitError           429
    │   │   └── InternalServerError      5xx
    │   ├── APIConnectionError           no HTTP answer at all
    │   │   ├── APITimeoutError
    │   │   │   └── DeadlineExceededError  the caller's deadline ran out first
    │   │   │       └── SendDeadlineError  a create's write deadline passed: nothing was sent
    │   │   └── BackendUnreachableError  the base URL never answered as Krea; nothing reached Krea
    │   ├── AmbiguousSubmitError         a generation POST or node-app execute may have created jobs
    │   ├── AmbiguousUploadError         an asset upload may or may not have created an asset
    │   └── MalformedPayloadError        a body that is not the documented shape
    ├── RequestValidationError           the request breaks the model's schema; nothing was sent
    ├── InvalidIdentifierError           an id that cannot name a Krea object; nothing was sent
    ├── InvalidUploadError               a file Krea would refuse (type, size); nothing was sent
    ├── UnknownModelError                the model is not in the bundled catalog
    ├── JobOutcomeError                  a job did not end as ``completed``
    │   ├── JobFailedError
    │   ├── JobCancelledError
    │   └── JobTimeoutError
    ├── DownloadError                    a result file could not be fetched or verified
    ├── VideoError                       a video file is not well-formed (api.video)
    └── ConfigurationError               the client is set up wrongly (token shape, base URL)

Messages name the method, the path template, the status, Krea's own message and what to do.
They never contain request headers, request bodies or the API token: exception text ends up in
logs, Dagster event logs and bug reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from krea_dagster.api.redaction import redact

if TYPE_CHECKING:
    from krea_dagster.api.catalog import Problem
    from krea_dagster.api.models import Job

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AmbiguousSubmitError",
    "AmbiguousUploadError",
    "AuthenticationError",
    "BackendUnreachableError",
    "BadRequestError",
    "ConfigurationError",
    "DeadlineExceededError",
    "DownloadError",
    "InsufficientCreditsError",
    "InternalServerError",
    "InvalidIdentifierError",
    "InvalidUploadError",
    "JobCancelledError",
    "JobFailedError",
    "JobOutcomeError",
    "JobTimeoutError",
    "KreaError",
    "MalformedPayloadError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestValidationError",
    "SendDeadlineError",
    "UnknownModelError",
    "UnprocessableEntityError",
    "error_class_for_status",
    "make_status_error",
    "server_message",
]

# Krea's own messages are shown to the user, but only so much of them: a gateway HTML page or a
# huge validation dump would drown the useful part.
_MAX_SERVER_MESSAGE = 300


class KreaError(Exception):
    """Base class of every error raised by krea_dagster.api."""

    #: The client-side id minted by ``submit()``, when the error happened during a submission.
    submission_id: str | None = None


class APIError(KreaError):
    """Something went wrong talking to the Krea API."""


class APIStatusError(APIError):
    """Krea answered with a non-success HTTP status."""

    #: The default advice for this status; subclasses narrow it.
    hint = "see https://docs.krea.ai/api-reference/introduction"

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        method: str,
        path_template: str,
        body: object = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.method = method
        self.path_template = path_template
        #: The parsed JSON body (or text) of the response; kept as evidence, never printed.
        self.body = body
        self.request_id = request_id
        #: Seconds Krea asked us to wait (``Retry-After``), when it said so.
        self.retry_after = retry_after
        #: How many times the request was sent before giving up.
        self.attempts = attempts

    @property
    def server_message(self) -> str | None:
        """Krea's own message from the body (``error`` string or object, then ``message``)."""
        return server_message(self.body)

    @property
    def code(self) -> str | None:
        """A machine-readable code from the body (``error.code`` or ``code``), when Krea sends one."""
        if not isinstance(self.body, Mapping):
            return None
        error = self.body.get("error")
        code = error.get("code") if isinstance(error, Mapping) else self.body.get("code")
        return _shorten(str(code)) if isinstance(code, str | int) and code != "" else None


class BadRequestError(APIStatusError):
    """400: Krea rejected the request body or query."""

    hint = "fix the request; the message above names the problem"


class AuthenticationError(APIStatusError):
    """401: the API token is missing, malformed or revoked."""

    hint = (
        "check the API token: it is the 'id:secret' string created at "
        "https://krea.ai/settings/api-tokens, sent as 'Authorization: Bearer id:secret'"
    )


class InsufficientCreditsError(APIStatusError):
    """402: the workspace's API balance cannot pay for the job."""

    hint = (
        "top up the API balance (it is separate from any web subscription) at "
        "https://krea.ai/settings/api-tokens; failed and cancelled jobs are not billed"
    )


class PermissionDeniedError(APIStatusError):
    """403: the token's identity may not use this resource."""

    hint = "the token's workspace is not allowed to use this resource; ask a workspace admin"


class NotFoundError(APIStatusError):
    """404: no such job, asset, style or node app, or it belongs to another account."""

    hint = "check the id; Krea answers 404 for objects created with another account's token"


class UnprocessableEntityError(APIStatusError):
    """422: Krea understood the request but refused an input (unknown key, unfetchable URL)."""

    hint = "fix the rejected input (unknown fields, or input URLs Krea cannot fetch)"


class RateLimitError(APIStatusError):
    """429: the account reached its concurrent-job cap (or request rate)."""

    hint = (
        "the account is at its concurrency cap: wait for running jobs to finish, submit fewer "
        "jobs at once, or raise the plan's limits"
    )


class InternalServerError(APIStatusError):
    """5xx: Krea (or its gateway) failed; the request may or may not have been processed."""

    hint = "a server-side failure; safe calls are retried automatically, try again later"


_STATUS_CLASSES: Mapping[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_class_for_status(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP status: the one place that maps statuses to classes."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)


def server_message(body: object) -> str | None:
    """Krea's own message: ``error`` (a string or ``{code, message}``), then ``message``."""
    if isinstance(body, str):
        text = body.strip()
        return _shorten(text) if text and not text.startswith("<") else None
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, str) and error.strip():
        return _shorten(error.strip())
    if isinstance(error, Mapping):
        message = error.get("message")
        code = error.get("code")
        if isinstance(message, str) and message.strip():
            prefix = f"[{code}] " if isinstance(code, str) and code else ""
            return _shorten(prefix + message.strip())
        if isinstance(code, str) and code:
            return _shorten(code)
    message = body.get("message")
    if isinstance(message, str) and message.strip():
        return _shorten(message.strip())
    return None


def make_status_error(
    *,
    status_code: int,
    method: str,
    path_template: str,
    body: object,
    request_id: str | None = None,
    retry_after: float | None = None,
    attempts: int = 1,
    note: str | None = None,
) -> APIStatusError:
    """Build the typed error for a non-2xx answer, with a message that says what to do."""
    cls = error_class_for_status(status_code)
    parts = [f"{method} {path_template} returned {status_code}"]
    krea_says = server_message(body)
    if krea_says:
        parts[0] += f": {krea_says}"
    if attempts > 1:
        parts.append(f"after {attempts} attempts")
    if note:
        parts.append(note)
    if request_id:
        parts.append(f"request id {_shorten(request_id)}")
    message = "; ".join(parts) + f". What to do: {cls.hint}."
    return cls(
        message,
        status_code=status_code,
        method=method,
        path_template=path_template,
        body=body,
        request_id=request_id,
        retry_after=retry_after,
        attempts=attempts,
    )


class APIConnectionError(APIError):
    """No HTTP answer: the connection failed or broke before a response arrived."""

    def __init__(self, message: str, *, method: str, path_template: str, attempts: int = 1):
        super().__init__(message)
        self.method = method
        self.path_template = path_template
        self.attempts = attempts


class APITimeoutError(APIConnectionError):
    """A connect, read, write or pool timeout expired."""


class DeadlineExceededError(APITimeoutError):
    """The caller's ``deadline`` (monotonic seconds) ran out before the call could finish."""

    # Raised instead of sending (or retrying) a request with no time left; ``__cause__`` is
    # the failure of the last attempt, if any. ``poll_many`` catches it and returns what it has.


class SendDeadlineError(DeadlineExceededError):
    """A job-creating POST was not sent: the write deadline its ``on_send`` gave had passed."""

    # Checked immediately before the request's bytes are written, so nothing reached Krea and
    # no job exists (the process may have been paused since the deadline was set).

    def __init__(self, message: str, *, path_template: str, submission_id: str) -> None:
        super().__init__(message, method="POST", path_template=path_template, attempts=0)
        self.submission_id = submission_id


class BackendUnreachableError(APIConnectionError):
    """The base URL never answered this client as the Krea API: nothing reached Krea."""

    # Raised for the first calls of a client only, before any answer of the API's origin: no
    # server listening, no such host, or a server that is not Krea's (404 with a web page). A
    # wrong KREA_BASE_URL is a setting to fix, not an outage to wait out; once the API has
    # answered, a lost connection is an ordinary (transient) APIConnectionError again.

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path_template: str,
        base_url: str,
        base_url_source: str,
        attempts: int = 1,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, method=method, path_template=path_template, attempts=attempts)
        self.base_url = base_url
        #: Where the base URL came from: ``KREA_BASE_URL``, ``base_url`` or the default.
        self.base_url_source = base_url_source
        #: The status of a server that answered but is not Krea's, None when none answered.
        self.status_code = status_code


class AmbiguousSubmitError(APIError):
    """A job-creating POST failed after it may have reached Krea: jobs may exist and be billed."""

    def __init__(
        self,
        *,
        submission_id: str,
        model: str,
        kind: str,
        submitted_at: datetime,
        cause: BaseException | str,
        request_timeout: float,
        path: str | None = None,
    ) -> None:
        self.submission_id = submission_id
        #: The model (``openai/gpt-image-2``); for a node-app execute ``node-app/<version id>``.
        self.model = model
        #: The model's kind (``image``...); ``node-app`` for an execute (several jobs at once).
        self.kind = kind
        #: Wall-clock time (aware, UTC) just before the ambiguous attempt was sent.
        self.submitted_at = submitted_at
        #: The transport exception or a short description of the status that made it ambiguous.
        self.cause = cause
        #: How long after ``submitted_at`` Krea could still have created the job.
        self.request_timeout = request_timeout
        #: The path that was posted.
        self.path = path or f"/generate/{kind}/{model}"
        what = type(cause).__name__ if isinstance(cause, BaseException) else cause
        jobs = "jobs" if kind == "node-app" else "a job"
        super().__init__(
            f"POST {self.path} may or may not have created {jobs} ({what} after the "
            f"request was sent; submission {submission_id}, sent at {submitted_at.isoformat()}). "
            "Krea has no idempotency key, so it was not resent. What to do: call "
            f"client.reconcile_submission(error, known_job_ids=...) to look for {jobs} in "
            "GET /jobs before submitting again."
        )


class AmbiguousUploadError(APIError):
    """An upload that may have reached Krea, with no asset of its hash in ``GET /assets`` yet."""

    def __init__(
        self,
        *,
        sha256: str,
        size: int,
        description: str,
        sent_at: datetime,
        cause: BaseException | str,
        request_timeout: float,
    ) -> None:
        #: SHA-256 of the file's bytes, carried in the asset's ``description``.
        self.sha256 = sha256
        self.size = size
        #: The description the upload was sent with (the reconciliation key).
        self.description = description
        #: Wall-clock time (aware, UTC) just before the ambiguous attempt was sent.
        self.sent_at = sent_at
        self.cause = cause
        #: How long after ``sent_at`` Krea could still have stored the asset.
        self.request_timeout = request_timeout
        what = type(cause).__name__ if isinstance(cause, BaseException) else cause
        super().__init__(
            f"POST /assets of {size} bytes (sha256 {sha256[:12]}...) may or may not have created "
            f"an asset ({what} after the request was sent at {sent_at.isoformat()}), and "
            "GET /assets shows none with that hash yet, so it was not resent. What to do: call "
            "client.reconcile_upload(error) again later; upload again only if a duplicate "
            "asset is acceptable."
        )


class MalformedPayloadError(APIError, ValueError):
    """A response or webhook body is not the documented shape (not JSON, not a job...)."""


class RequestValidationError(KreaError, ValueError):
    """The request breaks the model's schema; it was not sent, so nothing was billed."""

    def __init__(self, model: str, problems: Sequence[Problem]) -> None:
        self.model = model
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {problem.message}" for problem in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{model}: {count} {noun} in the request, nothing was sent:\n{lines}")


class InvalidUploadError(KreaError, ValueError):
    """A file Krea would refuse (empty, over 75 MB, a type it does not accept); nothing was sent."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.reason = message
        #: Where the file came from (a path or URI, without query string), when known.
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{message}; nothing was uploaded")


class UnknownModelError(KreaError, LookupError):
    """The model is in no catalog at hand (bundled or live); the message says what to do."""

    def __init__(
        self, model: str, kind: str, close_matches: Sequence[str], *, reason: str | None = None
    ) -> None:
        self.model = model
        self.kind = kind
        self.close_matches = tuple(close_matches)
        suggestion = (
            f" Did you mean {', '.join(repr(m) for m in self.close_matches)}?"
            if self.close_matches
            else ""
        )
        super().__init__(
            f"unknown {kind} model {model!r} ({reason}).{suggestion}"
            if reason
            else f"unknown {kind} model {model!r} (not in the bundled Krea catalog).{suggestion} "
            "List them with krea_dagster.api.image_models()."
        )


class JobOutcomeError(KreaError):
    """A job did not end as ``completed`` (it failed, was cancelled, or the wait ran out)."""


class JobFailedError(JobOutcomeError):
    """The job ended with status ``failed``; ``code`` and ``message`` come from Krea."""

    def __init__(self, job: Job, code: str | None, message: str | None) -> None:
        self.job = job
        self.code = code
        self.message = message
        detail = message or "no error details"
        if code:
            detail = f"[{code}] {detail}"
        super().__init__(f"job {job.job_id} failed: {detail} (failed jobs are not billed)")


class JobCancelledError(JobOutcomeError):
    """The job ended with status ``cancelled`` (by a user or by Krea)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.job_id} was cancelled (cancelled jobs are not billed)")


class JobTimeoutError(JobOutcomeError):
    """``wait()`` reached its deadline before the job became terminal."""

    def __init__(
        self,
        job_id: str,
        last_status: str | None,
        elapsed: float,
        *,
        cancel_requested: bool = False,
    ) -> None:
        self.job_id = job_id
        self.last_status = last_status
        self.elapsed = elapsed
        self.cancel_requested = cancel_requested
        action = (
            "a cancel was requested (DELETE /jobs/{id})"
            if cancel_requested
            else "the job may still complete (and be billed); wait again or cancel it"
        )
        super().__init__(
            f"job {job_id} not terminal after {elapsed:.1f} s (last status "
            f"{last_status or 'unknown'}); {action}"
        )


class DownloadError(KreaError):
    """A result file could not be downloaded or failed verification; nothing was written."""

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        super().__init__(f"{message} (downloading {url})")
        self.reason = message
        #: The URL without its query string (signed CDN URLs carry credentials there).
        self.url = url
        self.status_code = status_code


class InvalidIdentifierError(KreaError, ValueError):
    """An id cannot name a Krea object (empty, too long, not printable); nothing was sent."""


class ConfigurationError(KreaError, ValueError):
    """The client is configured wrongly (missing or malformed token, bad base URL)."""


def _shorten(text: str) -> str:
    # A gateway may quote the rejected Authorization header back; never let it into a message.
    text = redact(" ".join(text.split()))
    if len(text) <= _MAX_SERVER_MESSAGE:
        return text
    return text[: _MAX_SERVER_MESSAGE - 1] + "…"
