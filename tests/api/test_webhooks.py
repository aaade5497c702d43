"""Unsigned webhooks: parse the body, confirm with GET /jobs/{id}."""

from __future__ import annotations

import json

import httpx
import pytest

from krea_dagster.api import (
    JobStatus,
    MalformedPayloadError,
    aconfirm_webhook,
    confirm_webhook,
    parse_webhook,
)

from .support import (
    SAMPLE_JOB_COMPLETED,
    SAMPLE_JOB_FAILED,
    TEST_JOB_ID,
    FakeClock,
    FakeKrea,
    make_async_client,
    make_client,
    make_job,
)

JOB_PATH = f"/jobs/{TEST_JOB_ID}"


@pytest.mark.parametrize(
    "raw",
    [json.dumps(SAMPLE_JOB_COMPLETED).encode(), json.dumps(SAMPLE_JOB_COMPLETED)],
    ids=["bytes", "str"],
)
def test_parse_webhook_accepts_the_raw_body(raw: bytes | str) -> None:
    """The raw body (bytes or text) parses into the job it describes."""
    job = parse_webhook(raw)
    assert job.job_id == TEST_JOB_ID
    assert job.is_completed
    assert job.result_urls == tuple(SAMPLE_JOB_COMPLETED["result"]["urls"])


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (SAMPLE_JOB_FAILED, "safety_filter", "The prompt was flagged by moderation"),
        (make_job(status="failed", result={"error": "provider timeout"}), None, "provider timeout"),
        (make_job(status="failed", error="plain string"), None, "plain string"),
    ],
    ids=["error-object", "result-error", "error-string"],
)
def test_parse_webhook_tolerates_error_shapes(
    body: dict[str, object], code: str | None, message: str
) -> None:
    """Failure details are read from error or result.error, whichever the sender used."""
    job = parse_webhook(json.dumps(body))
    assert job.error is not None
    assert (job.error.code, job.error.message) == (code, message)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON list"),
        (json.dumps({"event": "ping"}).encode(), "not a Krea job: missing job_id"),
        (b"\xff\xfe", "UTF-8"),
    ],
    ids=["not-json", "array", "not-a-job", "not-utf8"],
)
def test_parse_webhook_rejects_non_job_bodies(raw: bytes, match: str) -> None:
    """Bodies that are not Krea jobs are refused with a clear reason."""
    with pytest.raises(MalformedPayloadError, match=match):
        parse_webhook(raw)


def test_parse_webhook_wants_the_raw_body() -> None:
    """A parsed dict is refused: verification and parsing need the body as received."""
    with pytest.raises(TypeError, match="raw webhook body"):
        parse_webhook(SAMPLE_JOB_COMPLETED)  # type: ignore[arg-type]


def test_confirm_webhook_trusts_the_api_not_the_post(fake: FakeKrea, clock: FakeClock) -> None:
    """confirm_webhook re-fetches the job and returns the API's state, even if the post claims otherwise."""
    forged = json.dumps(make_job(status="completed")).encode()
    fake.on("GET", JOB_PATH, httpx.Response(200, json=make_job(status="processing")))
    with make_client(fake, clock) as krea:
        job = confirm_webhook(krea, forged)
    assert job.status is JobStatus.PROCESSING
    assert fake.paths() == [f"GET {JOB_PATH}"]


def test_confirm_webhook_of_an_unknown_job_fails(fake: FakeKrea, clock: FakeClock) -> None:
    """A webhook naming a job the token cannot see ends in NotFoundError, not a Job."""
    with make_client(fake, clock) as krea, pytest.raises(Exception, match="404"):
        krea.confirm_webhook(json.dumps(make_job("someone-elses")))


@pytest.mark.anyio
async def test_aconfirm_webhook(fake: FakeKrea, clock: FakeClock) -> None:
    """The async twin confirms the same way."""
    fake.on("GET", JOB_PATH, httpx.Response(200, json=SAMPLE_JOB_COMPLETED))
    async with make_async_client(fake, clock) as krea:
        job = await aconfirm_webhook(krea, json.dumps(SAMPLE_JOB_COMPLETED))
    assert job.is_completed


def test_duplicate_deliveries_share_a_dedupe_key() -> None:
    """Two deliveries of one terminal state have the same (job_id, status) key."""
    first = parse_webhook(json.dumps(SAMPLE_JOB_COMPLETED))
    second = parse_webhook(json.dumps(SAMPLE_JOB_COMPLETED).encode())
    assert first.dedupe_key == second.dedupe_key == (TEST_JOB_ID, "completed")


def _nested_job(depth: int) -> str:
    """A job body whose ``result.extra`` holds ``depth`` nested lists."""
    job = json.dumps(make_job(status="completed"))
    return job[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        _nested_job(200),
        _nested_job(5_000).encode(),
    ],
    ids=["unclosed-lists", "closed-lists", "objects", "job-200-deep", "job-5000-deep-bytes"],
)
def test_deeply_nested_webhook_bodies_are_malformed_not_a_recursion_error(raw: str | bytes) -> None:
    """A body nested deeper than a job can be raises MalformedPayloadError, never RecursionError."""
    with pytest.raises(MalformedPayloadError, match=r"nests deeper|not JSON") as raised:
        parse_webhook(raw)
    assert len(str(raised.value)) < 300


def test_a_job_with_modest_nesting_still_parses() -> None:
    """A job body with a few nested levels (well under the limit) parses as before."""
    assert parse_webhook(_nested_job(10)).job_id == TEST_JOB_ID


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """Brackets and escaped quotes inside JSON strings are text, not nesting."""
    body = make_job(status="completed", error={"message": '[{"\\' * 5_000})
    assert parse_webhook(json.dumps(body)).job_id == TEST_JOB_ID


def test_an_oversized_webhook_body_is_malformed() -> None:
    """A body far larger than any job is refused before parsing, with a short message."""
    body = make_job(status="completed", error={"message": "x" * 2_000_000})
    with pytest.raises(MalformedPayloadError, match="more than 1048576 characters") as raised:
        parse_webhook(json.dumps(body))
    assert len(str(raised.value)) < 300


def test_confirm_webhook_refuses_an_answer_about_another_job(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """When GET /jobs/{id} answers with a different job id, the webhook is not confirmed."""
    claimed = json.dumps(make_job(status="completed")).encode()
    other = make_job("99999999-0000-4000-8000-000000000000", status="completed")
    fake.on("GET", JOB_PATH, httpx.Response(200, json=other))
    with (
        make_client(fake, clock) as krea,
        pytest.raises(MalformedPayloadError, match="answered with another job"),
    ):
        confirm_webhook(krea, claimed)


@pytest.mark.anyio
async def test_aconfirm_webhook_refuses_an_answer_about_another_job(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """The async twin compares the confirmed job's id with the claimed one too."""
    other = make_job("99999999-0000-4000-8000-000000000000", status="completed")
    fake.on("GET", JOB_PATH, httpx.Response(200, json=other))
    async with make_async_client(fake, clock) as krea:
        with pytest.raises(MalformedPayloadError, match="answered with another job"):
            await aconfirm_webhook(krea, json.dumps(SAMPLE_JOB_COMPLETED))
