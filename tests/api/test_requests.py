"""Safe requests (GET, DELETE) through the client: retries, headers, timeouts, parsing, stats."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from krea_dagster.api import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    InternalServerError,
    Job,
    KreaClient,
    MalformedPayloadError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    Timeouts,
    UnprocessableEntityError,
)
from krea_dagster.api.client import DEFAULT_USER_AGENT
from krea_dagster.api.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DOWNLOAD_READ_TIMEOUT,
    DEFAULT_MAX_RETRIES,
)
from krea_dagster.version import __version__

from .support import TEST_BASE_URL, TEST_JOB_ID, FakeClock, FakeKrea, make_client, make_job

JOB_PATH = f"/jobs/{TEST_JOB_ID}"
OK_JOB = httpx.Response(200, json=make_job())

CALLS: dict[str, tuple[str, Callable[[KreaClient], Any]]] = {
    "GET": ("GET", lambda krea: krea.get_job(TEST_JOB_ID)),
    "DELETE": ("DELETE", lambda krea: krea.cancel_job(TEST_JOB_ID)),
}

# failure reply, then whether it is retried (success on the 2nd call) or the error raised at once
RETRY_TABLE: list[tuple[str, Any, type[Exception] | None]] = [
    ("408", httpx.Response(408), None),
    ("409", httpx.Response(409), None),
    ("429", httpx.Response(429, json={"error": "slow down"}), None),
    ("500", httpx.Response(500), None),
    ("502", httpx.Response(502, text="<html>Bad Gateway</html>"), None),
    ("503", httpx.Response(503), None),
    ("504", httpx.Response(504), None),
    ("ConnectError", httpx.ConnectError, None),
    ("ConnectTimeout", httpx.ConnectTimeout, None),
    ("ReadTimeout", httpx.ReadTimeout, None),
    ("ReadError", httpx.ReadError, None),
    ("RemoteProtocolError", httpx.RemoteProtocolError, None),
    ("PoolTimeout", httpx.PoolTimeout, None),
    ("400", httpx.Response(400, json={"error": "bad"}), BadRequestError),
    ("401", httpx.Response(401, json={"message": "Unauthorized"}), AuthenticationError),
    ("402", httpx.Response(402, json={"error": "no credits"}), InsufficientCreditsError),
    ("403", httpx.Response(403, json={"error": "forbidden"}), PermissionDeniedError),
    ("404", httpx.Response(404, json={"error": "Job not found"}), NotFoundError),
    ("422", httpx.Response(422, json={"error": "unknown keys"}), UnprocessableEntityError),
]


@pytest.mark.parametrize("method", list(CALLS))
@pytest.mark.parametrize(
    ("failure", "reply", "raises"), RETRY_TABLE, ids=[row[0] for row in RETRY_TABLE]
)
def test_safe_retry_policy(
    fake: FakeKrea,
    clock: FakeClock,
    method: str,
    failure: str,
    reply: Any,
    raises: type[Exception] | None,
) -> None:
    """GET and DELETE retry 408/409/429/5xx and transport errors once, and fail fast on 4xx."""
    verb, call = CALLS[method]
    fake.on(verb, JOB_PATH, reply, OK_JOB)
    with make_client(fake, clock) as krea:
        if raises is None:
            call(krea)
            assert fake.count(verb, JOB_PATH) == 2
            assert krea.stats.retries == 1
        else:
            with pytest.raises(raises):
                call(krea)
            assert fake.count(verb, JOB_PATH) == 1
            assert clock.sleeps == []


def test_retries_give_up_after_max_retries(fake: FakeKrea, clock: FakeClock) -> None:
    """A persistent 503 is tried 1 + max_retries times, then raised with the attempt count."""
    fake.on("GET", JOB_PATH, httpx.Response(503, json={"error": "overloaded"}))
    with make_client(fake, clock) as krea, pytest.raises(InternalServerError) as caught:
        krea.get_job(TEST_JOB_ID)
    assert fake.count("GET", JOB_PATH) == DEFAULT_MAX_RETRIES + 1
    assert caught.value.attempts == DEFAULT_MAX_RETRIES + 1
    assert "gave up after 3 retries" in str(caught.value)


def test_connection_failures_give_up_as_typed_errors(fake: FakeKrea, clock: FakeClock) -> None:
    """Persistent timeouts end in APITimeoutError, other transport failures in APIConnectionError."""
    fake.on("GET", JOB_PATH, httpx.ReadTimeout)
    fake.on("GET", "/jobs/other", httpx.ConnectError)
    with make_client(fake, clock) as krea:
        with pytest.raises(APITimeoutError):
            krea.get_job(TEST_JOB_ID)
        with pytest.raises(APIConnectionError) as caught:
            krea.get_job("other")
    assert not isinstance(caught.value, APITimeoutError)
    assert caught.value.attempts == DEFAULT_MAX_RETRIES + 1


@pytest.mark.parametrize(
    ("client_retries", "call_retries", "expected_calls"),
    [(0, None, 1), (5, None, 6), (5, 0, 1), (0, 2, 3)],
    ids=["client-0", "client-5", "call-overrides-to-0", "call-overrides-to-2"],
)
def test_max_retries_per_client_and_per_call(
    fake: FakeKrea,
    clock: FakeClock,
    client_retries: int,
    call_retries: int | None,
    expected_calls: int,
) -> None:
    """max_retries is set per client and overridden per call."""
    fake.on("GET", JOB_PATH, httpx.Response(502))
    with (
        make_client(fake, clock, max_retries=client_retries) as krea,
        pytest.raises(APIStatusError),
    ):
        krea.get_job(TEST_JOB_ID, max_retries=call_retries)
    assert fake.count("GET", JOB_PATH) == expected_calls


def test_retry_after_is_honoured(fake: FakeKrea, clock: FakeClock) -> None:
    """A Retry-After under the ceiling is the exact wait before the retry."""
    fake.on("GET", JOB_PATH, httpx.Response(429, headers={"Retry-After": "7"}), OK_JOB)
    with make_client(fake, clock) as krea:
        krea.get_job(TEST_JOB_ID)
    assert clock.sleeps == [7.0]


def test_retry_after_ms_is_honoured(fake: FakeKrea, clock: FakeClock) -> None:
    """retry-after-ms wins over Retry-After."""
    fake.on(
        "GET",
        JOB_PATH,
        httpx.Response(503, headers={"retry-after-ms": "1250", "Retry-After": "9"}),
        OK_JOB,
    )
    with make_client(fake, clock) as krea:
        krea.get_job(TEST_JOB_ID)
    assert clock.sleeps == [1.25]


def test_retry_after_over_the_ceiling_raises_instead_of_retrying_early(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """A Retry-After above the ceiling ends the call with a typed error carrying the wait."""
    fake.on("GET", JOB_PATH, httpx.Response(429, headers={"Retry-After": "600"}), OK_JOB)
    with make_client(fake, clock) as krea, pytest.raises(RateLimitError) as caught:
        krea.get_job(TEST_JOB_ID)
    assert fake.count("GET", JOB_PATH) == 1
    assert caught.value.retry_after == 600.0
    assert "did not retry early" in str(caught.value)
    assert clock.sleeps == []


def test_garbage_retry_after_falls_back_to_backoff(fake: FakeKrea, clock: FakeClock) -> None:
    """An unparseable Retry-After is ignored and the jittered backoff (at most 1 s) is used."""
    fake.on("GET", JOB_PATH, httpx.Response(503, headers={"Retry-After": "soon"}), OK_JOB)
    with make_client(fake, clock) as krea:
        krea.get_job(TEST_JOB_ID)
    assert len(clock.sleeps) == 1 and 0.0 <= clock.sleeps[0] <= 1.0


def test_x_should_retry_false_stops_a_retry(fake: FakeKrea, clock: FakeClock) -> None:
    """x-should-retry: false makes a 503 final."""
    fake.on("GET", JOB_PATH, httpx.Response(503, headers={"x-should-retry": "false"}), OK_JOB)
    with make_client(fake, clock) as krea, pytest.raises(InternalServerError):
        krea.get_job(TEST_JOB_ID)
    assert fake.count("GET", JOB_PATH) == 1


def test_x_should_retry_true_forces_a_retry(fake: FakeKrea, clock: FakeClock) -> None:
    """x-should-retry: true retries even a status that is otherwise final."""
    fake.on("GET", JOB_PATH, httpx.Response(400, headers={"x-should-retry": "true"}), OK_JOB)
    with make_client(fake, clock) as krea:
        krea.get_job(TEST_JOB_ID)
    assert fake.count("GET", JOB_PATH) == 2


def test_retry_count_header_counts_attempts(fake: FakeKrea, clock: FakeClock) -> None:
    """Every attempt says which retry it is (0 for the first)."""
    fake.on("GET", JOB_PATH, httpx.Response(502), httpx.Response(502), OK_JOB)
    with make_client(fake, clock) as krea:
        krea.get_job(TEST_JOB_ID)
    assert [r.headers["X-Retry-Count"] for r in fake.requests] == ["0", "1", "2"]


def test_standard_headers(fake: FakeKrea, clock: FakeClock) -> None:
    """Requests carry the bearer token, JSON accept and the krea-dagster user agent."""
    fake.on("GET", JOB_PATH, OK_JOB)
    with make_client(fake, clock) as krea:
        krea.get_job(TEST_JOB_ID)
    request = fake.requests[0]
    assert request.headers["User-Agent"] == DEFAULT_USER_AGENT == f"krea-dagster/{__version__}"
    assert request.headers["Authorization"].startswith("Bearer ")
    assert request.headers["Accept"] == "application/json"


def test_every_request_has_explicit_layered_timeouts(fake: FakeKrea, clock: FakeClock) -> None:
    """JSON calls carry connect 5 / read 30 / write 30 / pool 10 seconds unless overridden."""
    fake.on("GET", JOB_PATH, OK_JOB)
    with make_client(fake, clock) as krea:
        krea.get_job(TEST_JOB_ID)
        assert krea.timeouts.download_read == DEFAULT_DOWNLOAD_READ_TIMEOUT
    assert fake.requests[0].extensions["timeout"] == {
        "connect": DEFAULT_CONNECT_TIMEOUT,
        "read": 30.0,
        "write": 30.0,
        "pool": 10.0,
    }


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        (12.0, {"connect": 12.0, "read": 12.0, "write": 12.0, "pool": 12.0}),
        (Timeouts(read=90.0), {"connect": 5.0, "read": 90.0, "write": 30.0, "pool": 10.0}),
        (None, {"connect": None, "read": None, "write": None, "pool": None}),
    ],
    ids=["one-number", "object", "explicit-opt-out"],
)
def test_timeout_configuration(
    fake: FakeKrea, clock: FakeClock, timeout: Any, expected: dict[str, Any]
) -> None:
    """A number sets every phase, an object sets phases, None is the only way to disable them."""
    fake.on("GET", JOB_PATH, OK_JOB)
    with make_client(fake, clock, timeout=timeout) as krea:
        krea.get_job(TEST_JOB_ID)
    assert fake.requests[0].extensions["timeout"] == expected


def test_with_options_overrides_per_call_settings(fake: FakeKrea, clock: FakeClock) -> None:
    """with_options gives a client with other timeouts/retries sharing the pool and counters."""
    fake.on("GET", JOB_PATH, httpx.Response(502))
    with make_client(fake, clock) as krea:
        quick = krea.with_options(timeout=2.0, max_retries=0)
        with pytest.raises(InternalServerError):
            quick.get_job(TEST_JOB_ID)
        assert quick.stats is krea.stats
        assert krea.max_retries == DEFAULT_MAX_RETRIES
    assert fake.count("GET", JOB_PATH) == 1
    assert fake.requests[0].extensions["timeout"]["read"] == 2.0


def test_path_parameters_are_percent_encoded(fake: FakeKrea, clock: FakeClock) -> None:
    """A job id cannot add path segments or a query."""
    with make_client(fake, clock) as krea, pytest.raises(NotFoundError):
        krea.get_job("../assets?x=1")
    assert fake.requests[0].url.raw_path == b"/jobs/..%2Fassets%3Fx%3D1"


def test_empty_job_id_is_refused_locally(fake: FakeKrea, clock: FakeClock) -> None:
    """An empty id is a programming error, not a request to GET /jobs/."""
    with make_client(fake, clock) as krea, pytest.raises(ValueError):
        krea.get_job("")
    assert fake.requests == []


def test_list_jobs_query(fake: FakeKrea, clock: FakeClock) -> None:
    """list_jobs sends limit, cursor, status and comma-joined types."""
    fake.on("GET", "/jobs", httpx.Response(200, json={"items": [make_job()], "next_cursor": None}))
    with make_client(fake, clock) as krea:
        page = krea.list_jobs(
            cursor=datetime(2026, 6, 1, tzinfo=UTC),
            limit=50,
            status="completed",
            types=["flux", "externalImage"],
        )
        with pytest.raises(ValueError):
            krea.list_jobs(limit=1001)
    params = fake.requests[0].url.params
    assert params["limit"] == "50"
    assert params["cursor"] == "2026-06-01T00:00:00+00:00"
    assert params["status"] == "completed"
    assert params["types"] == "flux,externalImage"
    assert [job.job_id for job in page.items] == [TEST_JOB_ID]
    assert page.next_cursor is None


def test_iter_jobs_walks_every_page_and_stops_at_created_after(
    fake: FakeKrea, clock: FakeClock
) -> None:
    """iter_jobs pages newest first and stops once jobs are older than created_after."""
    fake.jobs = [
        make_job(f"job-{n:03d}", created_at=datetime(2026, 6, 1, 12, 0, n, tzinfo=UTC))
        for n in range(25)
    ]
    with make_client(fake, clock) as krea:
        everything = list(krea.iter_jobs(limit=10))
        recent = list(
            krea.iter_jobs(limit=10, created_after=datetime(2026, 6, 1, 12, 0, 20, tzinfo=UTC))
        )
    assert [job.job_id for job in everything] == [f"job-{n:03d}" for n in reversed(range(25))]
    assert [job.job_id for job in recent] == [f"job-{n:03d}" for n in (24, 23, 22, 21, 20)]
    assert fake.count("GET", "/jobs") == 3 + 1


def test_cancel_job_returns_the_job_when_krea_sends_one(fake: FakeKrea, clock: FakeClock) -> None:
    """DELETE /jobs/{id} returns None for the documented empty 200, a Job when one is sent."""
    fake.on("DELETE", JOB_PATH, httpx.Response(200))
    fake.on("DELETE", "/jobs/other", httpx.Response(200, json=make_job("other", "cancelled")))
    with make_client(fake, clock) as krea:
        assert krea.cancel_job(TEST_JOB_ID) is None
        cancelled = krea.cancel_job("other")
    assert isinstance(cancelled, Job) and cancelled.is_cancelled


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, text="<html>maintenance</html>"),
        httpx.Response(200, json={"unexpected": True}),
    ],
    ids=["not-json", "not-a-job"],
)
def test_malformed_responses_raise_a_typed_error(
    fake: FakeKrea, clock: FakeClock, reply: httpx.Response
) -> None:
    """A 200 that is not a job raises MalformedPayloadError naming the call."""
    fake.on("GET", JOB_PATH, reply)
    with (
        make_client(fake, clock) as krea,
        pytest.raises(MalformedPayloadError, match=re.escape("GET /jobs/{id}")),
    ):
        krea.get_job(TEST_JOB_ID)


def test_stats_count_requests_by_path_template(fake: FakeKrea, clock: FakeClock) -> None:
    """client.stats counts requests per path template (retries included) and retries."""
    fake.on("GET", JOB_PATH, httpx.Response(502), OK_JOB)
    fake.on("GET", "/jobs/b", OK_JOB)
    with make_client(fake, clock) as krea:
        krea.get_job(TEST_JOB_ID)
        krea.get_job("b")
        snapshot = krea.stats.as_dict()
    assert snapshot["requests"] == {"GET /jobs/{id}": 3}
    assert snapshot["total_requests"] == 3
    assert snapshot["retries"] == 1
    assert snapshot["ambiguous_submits"] == 0


def test_context_manager_closes_the_pool(fake: FakeKrea, clock: FakeClock) -> None:
    """Leaving the with block closes the client's own connection pool."""
    with make_client(fake, clock) as krea:
        http = krea._http
        assert not http.is_closed
    assert http.is_closed


def test_injected_http_client_is_used_and_left_open(fake: FakeKrea, clock: FakeClock) -> None:
    """An http_client passed in is used for requests and not closed by the Krea client."""
    fake.on("GET", JOB_PATH, OK_JOB)
    http = httpx.Client(transport=httpx.MockTransport(fake.handler))
    with make_client(fake, clock, transport=None, http_client=http) as krea:
        krea.get_job(TEST_JOB_ID)
    assert not http.is_closed
    assert fake.count("GET", JOB_PATH) == 1
    http.close()


def test_base_url_may_carry_a_path_prefix(fake: FakeKrea, clock: FakeClock) -> None:
    """A base URL with a path (a proxy or the emulator behind a prefix) prefixes every path."""
    fake.on("GET", f"/krea{JOB_PATH}", OK_JOB)
    with make_client(fake, clock, base_url=f"{TEST_BASE_URL}/krea/") as krea:
        krea.get_job(TEST_JOB_ID)
        assert krea.base_url == f"{TEST_BASE_URL}/krea"
    assert fake.requests[0].url.path == f"/krea{JOB_PATH}"


def test_naive_datetimes_are_taken_as_utc(fake: FakeKrea, clock: FakeClock) -> None:
    """A naive created_after or cursor is read as UTC instead of failing to compare."""
    fake.jobs = [make_job("recent", created_at=datetime(2026, 6, 1, 12, 0, tzinfo=UTC))]
    with make_client(fake, clock) as krea:
        recent = list(krea.iter_jobs(created_after=datetime(2026, 6, 1, 11, 0)))
        krea.list_jobs(cursor=datetime(2026, 6, 1, 13, 0))
    assert [job.job_id for job in recent] == ["recent"]
    assert fake.requests[-1].url.params["cursor"] == "2026-06-01T13:00:00+00:00"


def test_transport_and_http_client_are_exclusive(fake: FakeKrea, clock: FakeClock) -> None:
    """Passing both a transport and an http_client is refused rather than ignoring one."""
    with pytest.raises(ValueError, match="not both"):
        make_client(fake, clock, http_client=httpx.Client())
