"""The error tree, the status-to-class mapping and messages that say what to do."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

import httpx
import pytest

from krea_dagster.api import errors
from krea_dagster.api.errors import (
    AmbiguousSubmitError,
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    InternalServerError,
    JobTimeoutError,
    KreaError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    error_class_for_status,
    make_status_error,
    server_message,
)

from .support import FakeClock, FakeKrea, make_client


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, APIStatusError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (503, InternalServerError),
        (599, InternalServerError),
    ],
    ids=lambda value: str(value) if isinstance(value, int) else value.__name__,
)
def test_error_class_for_status(status: int, cls: type[APIStatusError]) -> None:
    """One function maps every status to its class."""
    assert error_class_for_status(status) is cls


def test_hierarchy_matches_the_documented_tree() -> None:
    """Status errors are APIErrors are KreaErrors; timeouts are connection errors."""
    for cls in (BadRequestError, RateLimitError, InternalServerError):
        assert issubclass(cls, APIStatusError)
    assert issubclass(APIStatusError, APIError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(AmbiguousSubmitError, APIError)
    assert issubclass(APIError, KreaError)


def test_every_error_class_is_in_the_tree_and_has_a_one_line_docstring() -> None:
    """The module docstring draws every class, and each class has a one-line docstring."""
    classes = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, KreaError)
    ]
    assert errors.__doc__ is not None
    for cls in classes:
        assert cls.__name__ in errors.__doc__
        doc = cls.__doc__ or ""
        assert doc and "\n" not in doc.strip(), cls.__name__


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "Insufficient API balance"}, "Insufficient API balance"),
        ({"error": {"code": "nsfw", "message": "flagged"}}, "[nsfw] flagged"),
        ({"error": {"code": "nsfw"}}, "nsfw"),
        ({"message": "Unauthorized"}, "Unauthorized"),
        ({"error": "", "message": "fallback"}, "fallback"),
        ("upstream connect error", "upstream connect error"),
        ("<html>502 Bad Gateway</html>", None),
        (None, None),
        ({"detail": "other shape"}, None),
    ],
    ids=[
        "error-string",
        "error-object",
        "error-code-only",
        "message",
        "empty-error-then-message",
        "text",
        "html-ignored",
        "none",
        "unknown-shape",
    ],
)
def test_server_message(body: object, expected: str | None) -> None:
    """Krea's message is read from error (string or object), then message."""
    assert server_message(body) == expected


@pytest.mark.parametrize(
    ("status", "body", "must_say"),
    [
        (
            401,
            {"message": "Unauthorized"},
            ["401", "Unauthorized", "id:secret", "krea.ai/settings/api-tokens"],
        ),
        (
            402,
            {"error": "You have run out of credits."},
            ["402", "run out of credits", "top up the API balance"],
        ),
        (429, {"error": "maximum number of concurrent jobs"}, ["429", "concurrency cap"]),
    ],
    ids=["401", "402", "429"],
)
def test_messages_say_what_to_do(status: int, body: object, must_say: list[str]) -> None:
    """401, 402 and 429 messages name method, path, status, Krea's text and the fix."""
    error = make_status_error(
        status_code=status, method="POST", path_template="/generate/image/bfl/flux-1-dev", body=body
    )
    text = str(error)
    assert "POST /generate/image/bfl/flux-1-dev" in text
    for phrase in must_say:
        assert phrase in text


def test_status_error_keeps_the_evidence() -> None:
    """A status error carries status, method, path template, body, request id and attempts."""
    error = make_status_error(
        status_code=503,
        method="GET",
        path_template="/jobs/{id}",
        body={"error": "overloaded"},
        request_id="req-123",
        attempts=4,
    )
    assert isinstance(error, InternalServerError)
    assert (error.status_code, error.method, error.path_template) == (503, "GET", "/jobs/{id}")
    assert error.body == {"error": "overloaded"}
    assert error.request_id == "req-123"
    assert error.attempts == 4
    assert error.server_message == "overloaded"
    assert "after 4 attempts" in str(error)
    assert "req-123" in str(error)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"error": {"code": "zdr_requires_data_uri", "message": "x"}}, "zdr_requires_data_uri"),
        ({"error": "plain", "code": "rate_limited"}, "rate_limited"),
        ({"error": "plain"}, None),
        ("text", None),
    ],
    ids=["error-object", "top-level", "none", "text-body"],
)
def test_status_error_code(body: object, code: str | None) -> None:
    """A code in the error body is exposed as ``code``."""
    error = make_status_error(status_code=422, method="POST", path_template="/x", body=body)
    assert error.code == code


def test_long_server_messages_are_shortened() -> None:
    """A huge body does not become a huge exception message."""
    error = make_status_error(
        status_code=400, method="GET", path_template="/jobs", body={"error": "x" * 5000}
    )
    assert len(str(error)) < 600


def test_ambiguous_submit_error_names_submission_and_remedy() -> None:
    """AmbiguousSubmitError carries submission id, model and time, and says to reconcile."""
    sent = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    error = AmbiguousSubmitError(
        submission_id="sub-1",
        model="bfl/flux-1-dev",
        kind="image",
        submitted_at=sent,
        cause=httpx.ReadTimeout("read timed out"),
        request_timeout=65.0,
    )
    assert error.submission_id == "sub-1"
    assert error.submitted_at == sent
    assert "ReadTimeout" in str(error)
    assert "reconcile_submission" in str(error)


def test_job_timeout_error_attributes() -> None:
    """JobTimeoutError keeps the job id, last status and elapsed seconds."""
    error = JobTimeoutError("job-1", "processing", 301.5)
    assert (error.job_id, error.last_status, error.elapsed) == ("job-1", "processing", 301.5)
    assert "301.5" in str(error)


def test_request_id_header_reaches_the_error(fake: FakeKrea, clock: FakeClock) -> None:
    """A request id sent by the server (or its gateway) is kept on the error."""
    fake.on(
        "GET",
        "/jobs/x",
        httpx.Response(404, json={"error": "Job not found"}, headers={"x-request-id": "rq-9"}),
    )
    with make_client(fake, clock) as krea, pytest.raises(NotFoundError) as caught:
        krea.get_job("x")
    assert caught.value.request_id == "rq-9"
    assert caught.value.path_template == "/jobs/{id}"
    assert "Job not found" in str(caught.value)
