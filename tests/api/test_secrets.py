"""The API token never appears in reprs, exception text, logs, or requests to other origins."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import httpx
import pytest

from krea_dagster.api import AsyncKreaClient, ConfigurationError, KreaClient, KreaError
from krea_dagster.api.redaction import redact

from .support import (
    TEST_API_KEY,
    TEST_BASE_URL,
    TEST_CDN_URL,
    TEST_JOB_ID,
    TEST_MODEL,
    FakeClock,
    FakeKrea,
    make_client,
    make_job,
    png_bytes,
)

SECRET_PART = TEST_API_KEY.split(":", 1)[1]


def assert_clean(text: str) -> None:
    assert TEST_API_KEY not in text
    assert SECRET_PART not in text


def test_reprs_show_the_base_url_only(fake: FakeKrea, clock: FakeClock) -> None:
    """repr/str of the client and its config never include the token."""
    with make_client(fake, clock) as krea:
        assert repr(krea) == f"KreaClient(base_url='{TEST_BASE_URL}')"
        for text in (
            repr(krea),
            str(krea),
            repr(krea._core.config),
            repr(vars(krea)),
            repr(krea.stats),
        ):
            assert_clean(text)


def test_async_repr_hides_the_token() -> None:
    """The async client's repr is as clean."""
    krea = AsyncKreaClient(TEST_API_KEY, base_url=TEST_BASE_URL)
    assert repr(krea) == f"AsyncKreaClient(base_url='{TEST_BASE_URL}')"
    assert_clean(repr(vars(krea)))


def test_the_token_cannot_be_pickled(fake: FakeKrea, clock: FakeClock) -> None:
    """Pickling the token (into a cache, a run config) is refused."""
    with make_client(fake, clock) as krea, pytest.raises(TypeError):
        pickle.dumps(krea._core.config.api_key)


def test_no_token_in_errors_or_logs_across_a_run_with_failures(
    fake: FakeKrea, clock: FakeClock, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A run hitting 401, 402, 429, 5xx, timeouts, an ambiguous submit and a bad download logs no token."""
    generate = f"/generate/image/{TEST_MODEL}"
    fake.on("POST", generate, httpx.Response(401, json={"message": f"bad token {TEST_API_KEY}"}))
    fake.on(
        "GET",
        f"/jobs/{TEST_JOB_ID}",
        httpx.Response(502),
        httpx.ReadTimeout,
        httpx.Response(402, json={"error": "no credits"}),
    )
    fake.on("GET", "/jobs/limited", httpx.Response(429, headers={"Retry-After": "9999"}))
    fake.on("GET", "/results/x.png", httpx.Response(200, content=b"<html/>"))
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="krea_dagster"), make_client(fake, clock) as krea:
        logging.getLogger("krea_dagster.api").debug(
            "sending Authorization: Bearer %s", TEST_API_KEY
        )
        logging.getLogger("krea_dagster").info(
            "headers %s", {"authorization": f"Bearer {TEST_API_KEY}"}
        )
        for call in (
            lambda: krea.submit(TEST_MODEL, {"prompt": "a"}),
            lambda: krea.get_job(TEST_JOB_ID),
            lambda: krea.get_job("limited"),
            lambda: krea.download(f"{TEST_CDN_URL}/results/x.png", tmp_path),
        ):
            with pytest.raises(KreaError) as caught:
                call()
            errors.append(f"{caught.value!s} {caught.value!r}")
        fake.on("POST", generate, httpx.RemoteProtocolError)
        with pytest.raises(KreaError) as caught:
            krea.submit(TEST_MODEL, {"prompt": "a"})
        errors.append(f"{caught.value!s} {caught.value!r}")
    assert len(caplog.records) > 5
    for record in caplog.records:
        assert_clean(record.getMessage())
    for text in errors:
        assert_clean(text)


def test_redaction_filter_catches_tokens_on_any_krea_dagster_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records on the krea_dagster loggers are scrubbed of Authorization and bearer values."""
    with caplog.at_level(logging.INFO, logger="krea_dagster"):
        logging.getLogger("krea_dagster").info("Authorization: Bearer abc.def-ghi")
        logging.getLogger("krea_dagster").info(
            "token=%s", "7c9e6679-7425-40de-944b-e07fc1f90ae7:sk-xyz123"
        )
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["Authorization: [REDACTED]", "token=[REDACTED]"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer abc123", "Bearer [REDACTED]"),
        ("{'Authorization': 'Bearer x:y'}", "{'Authorization': '[REDACTED]'}"),
        ("key 0f8fad5b-d9cb-469f-a165-70867728950e:s3cr3t-value", "key [REDACTED]"),
        ("GET /jobs/{id} -> 200", "GET /jobs/{id} -> 200"),
    ],
    ids=["bearer", "header-dict", "uuid-token", "harmless"],
)
def test_redact(text: str, expected: str) -> None:
    """redact() replaces bearer values, authorization values and id:secret tokens only."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "no-colon-token-value",
        ":secret-only",
        "id-only:",
        f"Bearer {TEST_API_KEY}",
        "id:sec ret",
        "id:sécret",
        "   ",
    ],
    ids=["no-colon", "no-id", "no-secret", "bearer-prefix", "inner-space", "non-ascii", "blank"],
)
def test_malformed_tokens_are_refused_without_echo(bad: str) -> None:
    """A token of the wrong shape raises ConfigurationError that never repeats the token."""
    with pytest.raises(ConfigurationError) as caught:
        KreaClient(bad, base_url=TEST_BASE_URL)
    message = str(caught.value)
    if bad.strip():
        assert bad.strip() not in message
    assert "secret-only" not in message and "sec ret" not in message and SECRET_PART not in message


def test_missing_token_says_where_to_get_one() -> None:
    """Without api_key or KREA_API_KEY the error names both and the token page."""
    with pytest.raises(ConfigurationError, match="KREA_API_KEY") as caught:
        KreaClient()
    assert "krea.ai/settings/api-tokens" in str(caught.value)


def test_environment_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """KREA_API_KEY and KREA_BASE_URL are read when no argument is given."""
    monkeypatch.setenv("KREA_API_KEY", f"  {TEST_API_KEY}\n")
    monkeypatch.setenv("KREA_BASE_URL", "http://127.0.0.1:8787/")
    krea = KreaClient()
    assert krea.base_url == "http://127.0.0.1:8787"
    assert krea._core.config.api_key.reveal() == TEST_API_KEY  # surrounding whitespace stripped


@pytest.mark.parametrize(
    "url",
    # Refused while parsing the configuration: no request is ever made to these.
    [
        "ftp://api.example.test",
        "api.example.test",
        "https://user:pw@api.example.test",
        "https://api.example.test?x=1",
    ],
    ids=["ftp", "no-scheme", "userinfo", "query"],
)
def test_bad_base_urls_are_refused(url: str) -> None:
    """Only absolute http(s) base URLs without credentials or query are accepted."""
    with pytest.raises(ConfigurationError):
        KreaClient(TEST_API_KEY, base_url=url)


def test_token_never_reaches_another_origin(
    fake: FakeKrea, clock: FakeClock, tmp_path: Path
) -> None:
    """Across API calls, a CDN download and a redirect, only the API origin sees the token."""
    fake.on("GET", f"/jobs/{TEST_JOB_ID}", httpx.Response(200, json=make_job(status="completed")))
    fake.on("GET", "/go", httpx.Response(307, headers={"Location": f"{TEST_CDN_URL}/r.png"}))
    fake.on("GET", "/r.png", httpx.Response(200, content=png_bytes()))
    with make_client(fake, clock) as krea:
        krea.get_job(TEST_JOB_ID)
        krea.download(f"{TEST_CDN_URL}/r.png", tmp_path / "a.png")
        krea.download(f"{TEST_BASE_URL}/go", tmp_path / "b.png")
    for request in fake.requests:
        has_token = "Authorization" in request.headers
        assert has_token == (request.url.host == "api.krea.test"), request.url
