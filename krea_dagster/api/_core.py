"""The request core shared by ``KreaClient`` and ``AsyncKreaClient`` (sans-I/O).

Every operation is a generator, a *flow*, that yields actions and receives their results:
``Send(request)`` -> ``httpx.Response``, ``Stream(request, sink)`` -> a streamed response,
``Sleep(seconds)``, ``Notify(callback, value)`` and ``Offload(function)`` (blocking file work).
Transport exceptions are thrown back into the flow at its ``yield``, so the flow reads like
straight-line code. Request building, response interpretation, the retry loop and backoff live
here once; the two clients only perform actions (``run_flow`` / ``run_flow_async``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from krea_dagster.api.catalog import ModelCatalog, ModelSpec, Problem, bundled_catalog
from krea_dagster.api.clock_offset import ClockOffset
from krea_dagster.api.config import (
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    MAX_ANSWER_BYTES,
    MAX_TEXT_BODY_CHARS,
    RETRY_COUNT_HEADER,
    ZDR_HEADER,
    Clock,
    DownloadSettings,
    RetryPolicy,
    SubmitRateLimitPolicy,
    Timeouts,
)
from krea_dagster.api.errors import (
    AmbiguousSubmitError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BackendUnreachableError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidIdentifierError,
    KreaError,
    MalformedPayloadError,
    RequestValidationError,
    SendDeadlineError,
    make_status_error,
)
from krea_dagster.api.json_values import load_json
from krea_dagster.api.models import Job, JobList, JobStatus, as_aware, identifier_problem
from krea_dagster.api.retries import (
    RequestKind,
    Verdict,
    backoff_delay,
    decide,
    parse_retry_after,
    retry_after_from_body,
)

if TYPE_CHECKING:
    import random

    from krea_dagster.api._download import DownloadSink

__all__: list[str] = []

logger = logging.getLogger("krea_dagster.api")

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    """Send a request and read the whole response.

    ``write_by``: the latest ``clock.monotonic()`` at which the request may still be written;
    the performer checks it immediately before the request's bytes go out (``write_guard``).
    """

    request: httpx.Request
    write_by: float | None = None


class WriteDeadlinePassed(Exception):
    """A ``Send``'s ``write_by`` had passed when its bytes were about to be written."""


#: httpcore trace events right before a request's headers, then its body, are written.
_WRITE_EVENTS = frozenset(
    f"{protocol}.{phase}.started"
    for protocol in ("http11", "http2")
    for phase in ("send_request_headers", "send_request_body")
)


def write_guard(clock: Clock, write_by: float) -> Callable[[str, Any], None]:
    """An httpcore ``trace`` callback that stops a request whose ``write_by`` has passed.

    httpcore calls it before writing the headers and again before writing the body (the
    bytes that complete a request): raising there aborts the request with nothing complete
    on the wire, however long the process was paused since the deadline was set.
    """

    def check(event: str, _info: Any) -> None:
        if event in _WRITE_EVENTS and clock.monotonic() > write_by:
            raise WriteDeadlinePassed(event)

    return check


@dataclass(frozen=True)
class Stream:
    """Send a request and, for a 2xx answer, stream its body into ``sink``."""

    request: httpx.Request
    sink: DownloadSink


@dataclass(frozen=True)
class Sleep:
    """Wait (the client's injectable sleep)."""

    seconds: float


@dataclass(frozen=True)
class Notify:
    """Call a user callback with a value (awaited when it returns an awaitable)."""

    callback: Callable[[Any], object]
    value: Any


@dataclass(frozen=True)
class SendAttempt:
    """What a create is about to do with one POST: send it now, or first wait ``wait`` seconds.

    ``submit(on_send=...)`` and ``execute_node_app(on_send=...)`` call it with one before each
    wait and each send, and the POST goes out only after the callback returns: a caller that
    records ``sent_at`` durably knows the window in which a job can have been created, however
    many 429 waits and connect retries came first. For a send it may return a ``WriteDeadline``.
    """

    submission_id: str
    attempt: int
    sent_at: datetime
    wait: float = 0.0


#: What an ``on_send`` callback may return for a send (not a wait): the latest
#: ``clock.monotonic()`` of the client's clock at which the POST may still be written, or None.
#: Past it the client writes nothing and raises ``SendDeadlineError``: a caller whose right to
#: send expires (a lease) sets it, so a process paused after the callback never sends late.
WriteDeadline: TypeAlias = float | None


@dataclass(frozen=True)
class CreateTarget:
    """A job-creating POST for ``RequestCore.create``: where it goes and how its 2xx is read.

    ``path`` is the concrete path sent, ``path_template`` its name in stats and errors
    (``/node-apps/{id}/execute``); ``model`` and ``kind`` go into ``AmbiguousSubmitError``;
    ``read`` turns the 2xx JSON into the created jobs (MalformedPayloadError otherwise).
    """

    path: str
    path_template: str
    body: Any
    model: str
    kind: str
    read: Callable[[Any], list[Job]]
    extra_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Offload:
    """Run blocking file work (fsync, image verification); async clients use a thread."""

    function: Callable[[], Any]


Action: TypeAlias = Send | Stream | Sleep | Notify | Offload
Flow: TypeAlias = Generator[Action, Any, T]


def run_flow(flow: Flow[T], perform: Callable[[Action], Any]) -> T:
    """Drive a flow with a blocking ``perform``; exceptions go back into the flow."""
    value: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                action = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = perform(action)
            except Exception as exc:  # handed to the flow, which decides what it means
                error = exc
    finally:
        flow.close()  # runs the flow's cleanup (temp files) if we leave early


async def run_flow_async(flow: Flow[T], perform: Callable[[Action], Awaitable[Any]]) -> T:
    """Drive a flow with an awaitable ``perform``; the twin of ``run_flow``."""
    value: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                action = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = await perform(action)
            except Exception as exc:
                error = exc
    finally:
        flow.close()


class Secret:
    """A string that never shows itself in ``repr``/``str`` (the API token)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; only for the Authorization header."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("the Krea API token cannot be pickled")


# Straight and typographic quotes, and backticks: a shell's or an editor's, never a token's.
_QUOTES = frozenset("'\"`\u2018\u2019\u201c\u201d")


def check_api_key(value: str | None) -> Secret:
    """The token as a Secret; its shape is checked (``id:secret``) without ever echoing it."""
    where = "pass api_key=... or set KREA_API_KEY"
    origin = "create one at https://krea.ai/settings/api-tokens"
    if value is None or not value.strip():
        raise ConfigurationError(f"no Krea API token: {where} ({origin})")
    token = value.strip()
    if token[:1] in _QUOTES or token[-1:] in _QUOTES:
        raise ConfigurationError(
            "the Krea API token is wrapped in quotes (as pasted from a shell or a .env file); "
            "remove the quotes: they are not part of the token"
        )
    if token.lower().startswith("bearer "):
        raise ConfigurationError("the Krea API token starts with 'Bearer '; pass the token alone")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ConfigurationError(
            "the Krea API token contains whitespace or non-ASCII characters; copy it again "
            f"({origin})"
        )
    key_id, sep, secret = token.partition(":")
    if not sep or not key_id or not secret:
        raise ConfigurationError(
            f"the Krea API token (length {len(token)}) does not have the shape 'id:secret'; "
            f"{origin} and use the whole string"
        )
    return Secret(token)


def check_base_url(value: str) -> str:
    """The base URL without a trailing slash; it must be an absolute http(s) URL."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"base_url must be an absolute http(s) URL such as https://api.krea.ai, got {value!r}"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError("base_url must not carry credentials, a query or a fragment")
    return value.strip().rstrip("/")


def origin_of(url: str | httpx.URL) -> tuple[str, str, int]:
    """(scheme, host, port) with default ports filled in, to compare origins."""
    parsed = httpx.URL(str(url))
    default = {"http": 80, "https": 443}.get(parsed.scheme, 0)
    return (parsed.scheme, parsed.host.lower(), parsed.port or default)


def display_url(url: str | httpx.URL) -> str:
    """A URL safe to log or show: no query string (signed CDN URLs carry credentials there)."""
    parsed = urlsplit(str(url))
    return f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2]}{parsed.path}"


class ClientStats:
    """Counters of what the client sent, so callers can report API usage.

    ``requests`` counts HTTP requests by ``"METHOD /path/{template}"`` (every attempt counts),
    ``retries`` the repeated requests, ``ambiguous_submits`` the job-creating POSTs (generation
    and node-app execute) whose outcome is unknown, ``rate_limited_waits`` the 429 waits of
    ``submit()`` and ``execute_node_app()``, ``jobs_submitted`` the jobs Krea accepted.
    ``assets_uploaded`` counts the uploads Krea answered, ``ambiguous_uploads`` the ones whose
    outcome was unknown and ``uploads_reconciled`` those of them found again in
    ``GET /assets``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.retries = 0
        self.ambiguous_submits = 0
        self.rate_limited_waits = 0
        self.jobs_submitted = 0
        self.assets_uploaded = 0
        self.ambiguous_uploads = 0
        self.uploads_reconciled = 0

    def record_request(self, method: str, path_template: str) -> None:
        with self._lock:
            self.requests[f"{method} {path_template}"] += 1

    def increment(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    @property
    def total_requests(self) -> int:
        """Every HTTP request sent, retries included."""
        return sum(self.requests.values())

    def as_dict(self) -> dict[str, Any]:
        """A plain snapshot (for metadata and logs)."""
        with self._lock:
            return {
                "requests": dict(self.requests),
                "total_requests": sum(self.requests.values()),
                "retries": self.retries,
                "ambiguous_submits": self.ambiguous_submits,
                "rate_limited_waits": self.rate_limited_waits,
                "jobs_submitted": self.jobs_submitted,
                "assets_uploaded": self.assets_uploaded,
                "ambiguous_uploads": self.ambiguous_uploads,
                "uploads_reconciled": self.uploads_reconciled,
            }

    def __repr__(self) -> str:
        return f"ClientStats({self.as_dict()})"


@dataclass(frozen=True)
class ClientConfig:
    """Everything the core needs to build and judge requests; immutable, copied by with_options."""

    base_url: str
    api_key: Secret = field(repr=False)
    timeouts: Timeouts
    max_retries: int
    retry_policy: RetryPolicy
    submit_rate_limit: SubmitRateLimitPolicy
    download: DownloadSettings
    user_agent: str
    #: Where ``base_url`` came from, for messages: ``KREA_BASE_URL``, ``base_url`` or default.
    base_url_source: str = "base_url"

    def replace(self, **changes: Any) -> ClientConfig:
        return replace(self, **changes)


class RequestCore:
    """Builds requests, runs the retry loops and interprets answers; performs no I/O."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        clock: Clock,
        rng: random.Random,
        stats: ClientStats,
        clock_offset: ClockOffset | None = None,
        api_answered: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng
        self.stats = stats
        self.clock_offset = clock_offset or ClockOffset()
        self._api_origin = origin_of(config.base_url)
        #: Set once the API's origin has answered as Krea does (JSON, or a success); shared
        #: with ``with_options`` copies. Until then a connection failure or a web server's
        #: 404 page means the base URL is wrong (``BackendUnreachableError``).
        self.api_answered = api_answered or threading.Event()

    def send(self, request: httpx.Request, write_by: float | None = None) -> Flow[httpx.Response]:
        """One API request (``Send``), its answer's ``Date`` taken into ``clock_offset``.

        Also notes whether the API's origin has answered as Krea does: the evidence
        ``final_error`` needs to tell a wrong base URL from a lost connection.
        """
        sent = self.clock.now()
        response: httpx.Response = yield Send(request, write_by)
        self.clock_offset.observe(response.headers.get("date"), sent, self.clock.now())
        if self.is_api_origin(request.url) and _answers_like_krea(response):
            self.api_answered.set()
        return response

    # -- building -------------------------------------------------------------------------

    def url_for(self, path_template: str, path_params: Mapping[str, str] | None = None) -> str:
        """The absolute URL; path parameters are percent-encoded so an id cannot add segments."""
        return self.config.base_url + path_for(path_template, path_params)

    def is_api_origin(self, url: str | httpx.URL) -> bool:
        """Whether ``url`` is on the API's origin: the only place the token may go."""
        return origin_of(url) == self._api_origin

    def build_request(
        self,
        method: str,
        url: str,
        *,
        timeout: httpx.Timeout,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        extra_headers: Mapping[str, str] | None = None,
        retries_taken: int = 0,
        accept: str = "application/json",
        files: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        """One request with an explicit timeout; the bearer token only on the API's origin.

        ``files``/``data`` make a multipart body (``POST /assets``) instead of ``json_body``.
        """
        headers = {
            "Accept": accept,
            "User-Agent": self.config.user_agent,
            RETRY_COUNT_HEADER: str(retries_taken),
        }
        if self.is_api_origin(url):
            headers["Authorization"] = f"Bearer {self.config.api_key.reveal()}"
        headers.update(extra_headers or {})
        query = {key: value for key, value in (params or {}).items() if value is not None}
        try:
            return httpx.Request(
                method,
                url,
                params=query or None,
                json=json_body,
                files=files,
                data=data,
                headers=headers,
                extensions={"timeout": timeout.as_dict()},
            )
        except httpx.InvalidURL as error:  # a value no URL can carry; nothing was sent
            raise InvalidIdentifierError(
                f"{method} {display_url(url)[:200]}: cannot build the request URL "
                f"({str(error)[:200]}); nothing was sent"
            ) from None

    # -- interpreting ---------------------------------------------------------------------

    def status_error(
        self,
        response: httpx.Response,
        method: str,
        path_template: str,
        *,
        attempts: int,
        note: str | None = None,
        retry_after: float | None = None,
    ) -> APIStatusError:
        return make_status_error(
            status_code=response.status_code,
            method=method,
            path_template=path_template,
            body=decode_body(response),
            request_id=request_id_of(response),
            retry_after=retry_after,
            attempts=attempts,
            note=note,
        )

    @staticmethod
    def connection_error(
        exc: BaseException, method: str, path_template: str, *, attempts: int, note: str = ""
    ) -> APIConnectionError:
        cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        what = "timed out" if cls is APITimeoutError else "failed"
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        suffix = f"; {note}" if note else ""
        return cls(
            f"{method} {path_template} {what} ({detail}){suffix}",
            method=method,
            path_template=path_template,
            attempts=attempts,
        )

    def parse(
        self, build: Callable[[Any], T], response: httpx.Response, method: str, path_template: str
    ) -> T:
        """Decode JSON and build a record; a wrong shape names the call that returned it."""
        try:
            return build(read_json(response))
        except (ValueError, MalformedPayloadError) as exc:
            raise MalformedPayloadError(
                f"{method} {path_template} returned {response.status_code} with an unexpected "
                f"body: {exc}"
            ) from exc

    def max_retries_for(self, override: int | None) -> int:
        value = self.config.max_retries if override is None else override
        if value < 0:
            raise ValueError("max_retries must be >= 0")
        return value

    def unreachable_error(
        self,
        outcome: httpx.Response | BaseException,
        method: str,
        path_template: str,
        attempts: int,
    ) -> BackendUnreachableError | None:
        """``BackendUnreachableError`` when ``outcome`` shows the base URL is not Krea's API.

        Only before the API's origin ever answered: then a connection failure (nothing
        listening, no such host) or a 404/405 web page (another kind of server) is a wrong
        ``base_url``, never a passing outage. None otherwise.
        """
        if self.api_answered.is_set() or not self._from_api_origin(outcome):
            return None
        config = self.config
        where = f"{config.base_url} (from {config.base_url_source})"
        fix = _BASE_URL_FIXES.get(config.base_url_source, _BASE_URL_FIXES["base_url"])
        if isinstance(outcome, httpx.Response):
            # At Krea's own address a 404 page is a retired path, not another server.
            if (
                outcome.status_code not in (404, 405)
                or _answers_like_krea(outcome)
                or config.base_url_source == "the default"
            ):
                return None
            kind = outcome.headers.get("content-type", "no content type").split(";")[0]
            message = (
                f"the server at {where} is not the Krea API: it answered {method} "
                f"{path_template} with {outcome.status_code} and {kind[:60]}, where Krea answers "
                f"JSON. Nothing was sent to Krea. {fix}"
            )
            status: int | None = outcome.status_code
        elif isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout):
            detail = (
                f"{type(outcome).__name__}: {outcome}" if str(outcome) else type(outcome).__name__
            )
            message = (
                f"the Krea API at {where} never answered {method} {path_template} "
                f"({detail[:300]}, {attempts} attempt(s)). Nothing was sent to Krea. {fix}"
            )
            status = None
        else:
            return None
        logger.error("%s", message)
        error = BackendUnreachableError(
            message,
            method=method,
            path_template=path_template,
            base_url=config.base_url,
            base_url_source=config.base_url_source,
            attempts=attempts,
            status_code=status,
        )
        if isinstance(outcome, BaseException):
            error.__cause__ = outcome
        return error

    def _from_api_origin(self, outcome: httpx.Response | BaseException) -> bool:
        """Whether an answer or a transport error is of a request to the API (not the CDN)."""
        try:
            request = outcome.request  # type: ignore[union-attr]
        except (AttributeError, RuntimeError):  # no request attached: taken to be the API's
            return True
        return self.is_api_origin(request.url)

    # -- the safe-request loop ------------------------------------------------------------

    def request(
        self,
        method: str,
        path_template: str,
        *,
        path_params: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
    ) -> Flow[httpx.Response]:
        """A GET or DELETE, retried per ``retries.decide`` (a safe request cannot bill twice).

        ``deadline`` (the clock's monotonic seconds): each attempt's timeouts are clipped to
        the time left, and no attempt or retry starts once it has passed
        (``DeadlineExceededError``).
        """
        url = self.url_for(path_template, path_params)
        allowed = self.max_retries_for(max_retries)
        retries = 0
        outcome: httpx.Response | Exception | None = None
        while True:
            timeout = self.config.timeouts.for_json()
            if deadline is not None:
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    raise self.deadline_error(method, path_template, retries, outcome)
                timeout = clip_timeout(timeout, left)
            request = self.build_request(
                method,
                url,
                params=params,
                timeout=timeout,
                retries_taken=retries,
            )
            self.stats.record_request(method, path_template)
            try:
                outcome = yield from self.send(request)
            except httpx.TransportError as exc:
                outcome = exc
            decision = decide(RequestKind.SAFE, outcome)
            if decision.verdict is Verdict.DONE:
                if isinstance(outcome, httpx.Response) and outcome.is_success:
                    logger.debug("%s %s -> %s", method, path_template, outcome.status_code)
                    return outcome
                raise self.final_error(outcome, method, path_template, retries + 1, decision.reason)
            if deadline is not None and deadline - self.clock.monotonic() <= 0:
                raise self.deadline_error(method, path_template, retries + 1, outcome)
            delay = self.retry_delay(
                outcome, method, path_template, retries, allowed, decision.reason
            )
            if deadline is not None and delay >= deadline - self.clock.monotonic():
                raise self.deadline_error(method, path_template, retries + 1, outcome)
            yield Sleep(delay)
            retries += 1

    def deadline_error(
        self,
        method: str,
        path_template: str,
        attempts: int,
        last: httpx.Response | BaseException | None,
    ) -> DeadlineExceededError:
        """The error of a call stopped by its caller's deadline (the last failure as cause)."""
        if last is None:
            detail = "before it was sent"
        elif isinstance(last, httpx.Response):
            detail = f"after {attempts} attempt(s), the last answered {last.status_code}"
        else:
            detail = f"after {attempts} attempt(s), the last failed ({type(last).__name__})"
        error = DeadlineExceededError(
            f"{method} {path_template}: the caller's deadline passed {detail}",
            method=method,
            path_template=path_template,
            attempts=attempts,
        )
        if isinstance(last, BaseException):
            error.__cause__ = last
        return error

    def final_error(
        self,
        outcome: httpx.Response | BaseException,
        method: str,
        path_template: str,
        attempts: int,
        reason: str,
        note: str | None = None,
    ) -> KreaError:
        """The error that ends a call, logged once with its reason."""
        unreachable = self.unreachable_error(outcome, method, path_template, attempts)
        if unreachable is not None:
            return unreachable
        if isinstance(outcome, httpx.Response):
            logger.warning(
                "%s %s -> %s, not retried: %s",
                method,
                path_template,
                outcome.status_code,
                note or reason,
                extra={"krea_status": outcome.status_code, "krea_attempts": attempts},
            )
            return self.status_error(outcome, method, path_template, attempts=attempts, note=note)
        logger.warning(
            "%s %s failed, not retried: %s",
            method,
            path_template,
            note or reason,
            extra={"krea_attempts": attempts},
        )
        error = self.connection_error(
            outcome, method, path_template, attempts=attempts, note=note or ""
        )
        error.__cause__ = outcome
        return error

    def retry_delay(
        self,
        outcome: httpx.Response | BaseException,
        method: str,
        path_template: str,
        retries: int,
        allowed: int,
        reason: str,
    ) -> float:
        """Seconds to wait before retrying a safe request, or the final error when giving up."""
        if retries >= allowed:
            note = f"gave up after {retries} retries ({reason})" if retries else None
            raise self.final_error(outcome, method, path_template, retries + 1, reason, note)
        retry_after = None
        if isinstance(outcome, httpx.Response):
            retry_after = parse_retry_after(outcome.headers, now=self.clock.now())
            ceiling = self.config.retry_policy.max_retry_after
            if retry_after is not None and retry_after > ceiling:
                note = (
                    f"Krea asked to wait {retry_after:.0f} s (Retry-After), more than the "
                    f"{ceiling:.0f} s this client waits, so it did not retry early"
                )
                logger.warning("%s %s -> %s: %s", method, path_template, outcome.status_code, note)
                raise self.status_error(
                    outcome,
                    method,
                    path_template,
                    attempts=retries + 1,
                    note=note,
                    retry_after=retry_after,
                )
        policy = self.config.retry_policy
        delay = (
            retry_after
            if retry_after is not None
            else backoff_delay(
                retries,
                initial=policy.initial_backoff,
                maximum=policy.max_backoff,
                jitter=policy.jitter,
                rng=self.rng,
            )
        )
        source = "Retry-After" if retry_after is not None else "backoff"
        logger.info(
            "retrying %s %s in %.2f s (%s; retry %d of %d): %s",
            method,
            path_template,
            delay,
            source,
            retries + 1,
            allowed,
            reason,
            extra={"krea_retry": retries + 1},
        )
        self.stats.increment("retries")
        return delay

    # -- operations -----------------------------------------------------------------------

    def get_job(
        self, job_id: str, *, max_retries: int | None = None, deadline: float | None = None
    ) -> Flow[Job]:
        response = yield from self.request(
            "GET",
            "/jobs/{id}",
            path_params={"id": job_id},
            max_retries=max_retries,
            deadline=deadline,
        )
        return self.parse(Job.from_api, response, "GET", "/jobs/{id}")

    def list_jobs(
        self,
        *,
        cursor: str | datetime | None = None,
        limit: int = 100,
        status: JobStatus | str | None = None,
        types: Sequence[str] | str | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
    ) -> Flow[JobList]:
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        params = {
            "limit": limit,
            "cursor": as_aware(cursor).isoformat() if isinstance(cursor, datetime) else cursor,
            "status": JobStatus(status).value if status is not None else None,
            "types": types if isinstance(types, str) or types is None else ",".join(types),
        }
        response = yield from self.request(
            "GET", "/jobs", params=params, max_retries=max_retries, deadline=deadline
        )
        return self.parse(JobList.from_api, response, "GET", "/jobs")

    def cancel_job(
        self, job_id: str, *, max_retries: int | None = None, deadline: float | None = None
    ) -> Flow[Job | None]:
        response = yield from self.request(
            "DELETE",
            "/jobs/{id}",
            path_params={"id": job_id},
            max_retries=max_retries,
            deadline=deadline,
        )
        logger.info("cancel requested for job %s", job_id, extra={"krea_job_id": job_id})
        # The spec documents no body for a 200; some deployments return the job.
        body = decode_body(response)
        if isinstance(body, Mapping) and body.get("job_id") and body.get("status"):
            return Job.from_api(body)
        return None

    # -- the create loop ------------------------------------------------------------------

    def submit(
        self,
        model: str,
        params: Mapping[str, Any],
        *,
        kind: str = "image",
        zero_data_retention: bool = False,
        webhook_url: str | None = None,
        validate: bool = True,
        today: date | None = None,
        max_retries: int | None = None,
        submission_id: str | None = None,
        on_send: Callable[[SendAttempt], object] | None = None,
        catalog: ModelCatalog | None = None,
    ) -> Flow[Job]:
        """POST /generate/<kind>/<model>: validated first, never resent once it may have arrived."""
        submission_id = submission_id or str(uuid.uuid4())
        try:
            path, body, spec = self._submission_body(
                model, params, kind, validate, today, catalog or bundled_catalog()
            )
            if zero_data_retention:
                check_zero_data_retention(spec, body, kind)
        except KreaError as error:
            error.submission_id = submission_id
            raise
        extra_headers = {"X-Webhook-URL": webhook_url} if webhook_url else {}
        if zero_data_retention:
            extra_headers[ZDR_HEADER] = "1"
        target = CreateTarget(
            path, path, body, model, kind, lambda data: [Job.from_api(data)], extra_headers
        )
        jobs = yield from self.create(
            target, max_retries=max_retries, submission_id=submission_id, on_send=on_send
        )
        return jobs[0]

    def create(
        self,
        target: CreateTarget,
        *,
        max_retries: int | None = None,
        submission_id: str | None = None,
        on_send: Callable[[SendAttempt], object] | None = None,
    ) -> Flow[list[Job]]:
        """POST a job-creating request, never resent once it may have arrived; its jobs.

        Resent only after a connect failure (nothing left this machine) or a 429 (waited out
        within the submit rate-limit budget); ``on_send`` gets a ``SendAttempt`` before every
        POST and every wait. An outcome after which jobs may exist (a read failure, a dropped
        connection, a 5xx, a 2xx whose body ``target.read`` cannot read) raises
        ``AmbiguousSubmitError``; a refusal raises its status error.
        """
        submission_id = submission_id or str(uuid.uuid4())
        allowed = self.max_retries_for(max_retries)
        policy = self.config.submit_rate_limit
        path = target.path
        log_extra = {"krea_submission_id": submission_id, "krea_path": path}
        logger.info("submitting %s (submission %s)", path, submission_id, extra=log_extra)
        started = self.clock.monotonic()
        attempts = connect_retries = capacity_waits = 0
        while True:
            attempts += 1
            submitted_at = self.clock.now()
            write_by: WriteDeadline = None
            if on_send is not None:
                write_by = yield Notify(on_send, SendAttempt(submission_id, attempts, submitted_at))
            request = self.build_request(
                "POST",
                self.config.base_url + path,
                json_body=target.body,
                extra_headers=target.extra_headers,
                timeout=self.config.timeouts.for_json(),
                retries_taken=attempts - 1,
            )
            self.stats.record_request("POST", target.path_template)
            outcome: httpx.Response | Exception
            try:
                if write_by is not None and self.clock.monotonic() > write_by:
                    raise WriteDeadlinePassed("before the request was handed to the transport")
                outcome = yield from self.send(request, write_by)
            except httpx.TransportError as exc:
                outcome = exc
            except WriteDeadlinePassed as passed:
                raise self._not_sent(target, submission_id, write_by, str(passed)) from None
            decision = decide(RequestKind.CREATE, outcome)
            try:
                if decision.verdict is Verdict.DONE:
                    return self._accepted_jobs(
                        outcome, target, attempts, decision.reason, submission_id, submitted_at
                    )
                if decision.verdict is Verdict.AMBIGUOUS:
                    raise self._ambiguous(
                        outcome, submission_id, target, submitted_at, decision.reason
                    )
                if decision.verdict is Verdict.RETRY:  # never reached Krea: resending is safe
                    delay = self.retry_delay(
                        outcome,
                        "POST",
                        target.path_template,
                        connect_retries,
                        allowed,
                        decision.reason,
                    )
                    connect_retries += 1
                else:  # Verdict.RETRY_CAPACITY
                    assert isinstance(outcome, httpx.Response)
                    delay = self._capacity_delay(
                        outcome, target.path_template, policy, capacity_waits, attempts, started
                    )
                    capacity_waits += 1
            except KreaError as error:
                error.submission_id = submission_id
                raise
            if on_send is not None:
                now = self.clock.now()
                yield Notify(on_send, SendAttempt(submission_id, attempts + 1, now, delay))
            yield Sleep(delay)

    def _not_sent(
        self, target: CreateTarget, submission_id: str, write_by: WriteDeadline, where: str
    ) -> SendDeadlineError:
        late = self.clock.monotonic() - (write_by or 0.0)
        logger.warning(
            "POST %s not sent (submission %s): its write deadline passed %.3f s ago (%s)",
            target.path,
            submission_id,
            late,
            where,
            extra={"krea_submission_id": submission_id},
        )
        return SendDeadlineError(
            f"POST {target.path_template} was not sent: its write deadline passed {late:.3f} s "
            f"before the request could be written ({where}); nothing reached Krea",
            path_template=target.path_template,
            submission_id=submission_id,
        )

    def _submission_body(
        self,
        model: str,
        params: Mapping[str, Any],
        kind: str,
        validate: bool,
        today: date | None,
        models: ModelCatalog,
    ) -> tuple[str, dict[str, Any], ModelSpec | None]:
        spec = models.get(model, kind) if validate else None
        if spec is None or not spec.validated:
            # A model in no catalog, sent unvalidated on purpose: the caller takes the risk.
            return f"/generate/{kind}/{model.strip('/')}", dict(params), None
        result = models.validate(
            spec.model, params, kind=spec.kind, today=today or self.clock.now().date()
        )
        for warning in result.warnings:
            logger.warning(
                "%s: deprecated field %s (%s)",
                spec.path,
                warning.field,
                warning.rule,
                extra={"krea_path": spec.path},
            )
        if result.problems:
            raise RequestValidationError(spec.key, result.problems)
        return spec.path, dict(result.params), spec

    def _accepted_jobs(
        self,
        outcome: httpx.Response | BaseException,
        target: CreateTarget,
        attempts: int,
        reason: str,
        submission_id: str,
        submitted_at: datetime,
    ) -> list[Job]:
        if not (isinstance(outcome, httpx.Response) and outcome.is_success):
            raise self.final_error(outcome, "POST", target.path_template, attempts, reason)
        try:
            jobs = target.read(read_json(outcome))
        except (ValueError, MalformedPayloadError) as exc:
            # A 2xx means Krea created jobs, but we cannot read their ids: that is ambiguous too.
            raise self._ambiguous(
                f"{outcome.status_code} answer with an unreadable body ({exc})",
                submission_id,
                target,
                submitted_at,
                f"the 2xx body is not what {target.path_template} answers ({exc})",
            ) from exc
        self.stats.increment("jobs_submitted", len(jobs))
        ids = ", ".join(job.job_id for job in jobs)
        logger.info(
            "POST %s -> %s: job %s (%s, submission %s)",
            target.path,
            outcome.status_code,
            ids,
            ", ".join(job.status.value for job in jobs),
            submission_id,
            extra={"krea_job_id": ids, "krea_submission_id": submission_id},
        )
        return jobs

    def _ambiguous(
        self,
        cause: httpx.Response | BaseException | str,
        submission_id: str,
        target: CreateTarget,
        submitted_at: datetime,
        reason: str,
    ) -> AmbiguousSubmitError:
        self.stats.increment("ambiguous_submits")
        logger.error(
            "POST %s outcome unknown, not resent (submission %s): %s",
            target.path,
            submission_id,
            reason,
            extra={"krea_submission_id": submission_id},
        )
        if isinstance(cause, httpx.Response):
            cause = f"status {cause.status_code}"
        error = AmbiguousSubmitError(
            submission_id=submission_id,
            model=target.model,
            kind=target.kind,
            submitted_at=submitted_at,
            cause=cause,
            request_timeout=self.config.timeouts.request_window or float("inf"),
            path=target.path,
        )
        if isinstance(cause, BaseException):
            error.__cause__ = cause
        return error

    def _capacity_delay(
        self,
        response: httpx.Response,
        path: str,
        policy: SubmitRateLimitPolicy,
        waits: int,
        attempts: int,
        started: float,
    ) -> float:
        """How long to wait out a 429 on a create, or RateLimitError when the budget is spent."""
        retry_after = parse_retry_after(response.headers, now=self.clock.now())
        if retry_after is None:
            retry_after = retry_after_from_body(decode_body(response))
        delay = (
            retry_after
            if retry_after is not None
            else backoff_delay(
                waits,
                initial=policy.initial_delay,
                maximum=policy.max_delay,
                multiplier=policy.multiplier,
                jitter=policy.jitter,
                rng=self.rng,
            )
        )
        elapsed = self.clock.monotonic() - started
        if elapsed + delay > policy.budget:
            note = (
                f"still at the concurrency cap after {attempts} attempts over {elapsed:.0f} s "
                f"(the 429 budget is {policy.budget:.0f} s)"
            )
            logger.warning("POST %s -> 429, giving up: %s", path, note)
            raise self.status_error(
                response, "POST", path, attempts=attempts, note=note, retry_after=retry_after
            )
        logger.info(
            "POST %s -> 429 (concurrency cap), waiting %.1f s (%s) before attempt %d",
            path,
            delay,
            "Retry-After" if retry_after is not None else "backoff",
            attempts + 1,
        )
        self.stats.increment("rate_limited_waits")
        return delay


def path_for(path_template: str, path_params: Mapping[str, str] | None = None) -> str:
    """The path with its parameters percent-encoded, so an id cannot add segments.

    An id that cannot name a Krea object (empty, longer than ``MAX_ID_CHARS``, or holding
    spaces or control characters) is refused here: nothing is sent.
    """
    path = path_template
    for name, value in (path_params or {}).items():
        if (problem := identifier_problem(value)) is not None:
            raise InvalidIdentifierError(
                f"{path_template}: {name} {problem}; nothing was sent (pass the id Krea "
                "answered, e.g. a job's job_id)"
            )
        path = path.replace("{" + name + "}", quote(str(value), safe=""))
    return path


def check_zero_data_retention(
    model: str | ModelSpec | None, body: Mapping[str, Any], kind: str
) -> None:
    """RequestValidationError unless every media input is a ``data:`` URI (Krea answers 422)."""
    from krea_dagster.api.media import find_media, is_data_uri

    problems = [
        Problem(
            item.path,
            "zero_data_retention",
            f"{item.path}: zero-data-retention requests must carry media as data: URIs, not "
            f"{display_url(item.value)!r}; resolve references with zero_data_retention=True",
        )
        for item in find_media(model, body, kind)
        if not is_data_uri(item.value)
    ]
    if problems:
        name = model.key if isinstance(model, ModelSpec) else model
        raise RequestValidationError(name or "(unvalidated model)", problems)


def clip_timeout(timeout: httpx.Timeout, seconds: float) -> httpx.Timeout:
    """``timeout`` with every phase at most ``seconds`` (a phase without a limit gets it)."""

    def clip(phase: float | None) -> float:
        return seconds if phase is None else min(phase, seconds)

    return httpx.Timeout(
        connect=clip(timeout.connect),
        read=clip(timeout.read),
        write=clip(timeout.write),
        pool=clip(timeout.pool),
    )


def read_json(response: httpx.Response) -> Any:
    """An answer's JSON, within ``MAX_ANSWER_BYTES`` and ``MAX_JSON_DEPTH`` (``load_json``).

    A hostile or broken answer (a huge body, deep nesting, an integer of 5,000 digits) raises
    ``JSONLimitError``, a ``ValueError`` the callers turn into ``MalformedPayloadError``.
    """
    return load_json(response.content, max_bytes=MAX_ANSWER_BYTES)


def decode_body(response: httpx.Response) -> Any:
    """The response body as JSON when it is JSON within bounds, else text (None when empty).

    Text is cut to ``MAX_TEXT_BODY_CHARS``: an error body is evidence and a source of
    Krea's message, never a document to keep whole.
    """
    try:
        content = response.content
    except httpx.ResponseNotRead:  # a streamed error response whose body we chose not to read
        return None
    if not content:
        return None
    try:
        return read_json(response)
    except ValueError:
        return content[:MAX_TEXT_BODY_CHARS].decode("utf-8", errors="replace")


def _answers_like_krea(response: httpx.Response) -> bool:
    """Whether an answer can be Krea's API: a success, or a JSON body (Krea's errors are JSON)."""
    return response.is_success or "json" in response.headers.get("content-type", "").lower()


#: What a message tells the user to check, by where the base URL came from.
_BASE_URL_FIXES = {
    BASE_URL_ENV: (
        f"Check {BASE_URL_ENV}: unset it to use Krea ({DEFAULT_BASE_URL}), or start the "
        "emulator it points at (krea-emulator serve --port <port>)"
    ),
    "base_url": (
        "Check the base_url setting (KreaResource base_url, or krea: base_url: in defs.yaml); "
        f"leave it out to use Krea ({DEFAULT_BASE_URL})"
    ),
    "the default": "Check this machine's network connection to Krea",
}

_STRIPPED_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _capped_response(response: httpx.Response, chunks: list[bytes]) -> httpx.Response:
    """The answer with the body read so far (decoded), as a plain, fully read response."""
    return httpx.Response(
        response.status_code,
        headers=[
            (key, value)
            for key, value in response.headers.multi_items()
            if key.lower() not in _STRIPPED_HEADERS
        ],
        content=b"".join(chunks),
        request=response.request,
        extensions=response.extensions,
    )


def read_capped(response: httpx.Response) -> httpx.Response:
    """Read a streamed answer up to one byte past ``MAX_ANSWER_BYTES`` and close it.

    A body larger than any Krea answer is never held in memory: what was read is enough for
    ``read_json`` to refuse it by its size.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                break
    finally:
        response.close()
    return _capped_response(response, chunks)


async def aread_capped(response: httpx.Response) -> httpx.Response:
    """The async twin of ``read_capped``."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                break
    finally:
        await response.aclose()
    return _capped_response(response, chunks)


def request_id_of(response: httpx.Response) -> str | None:
    """A request id header, when the server or its gateway sends one."""
    for name in ("x-request-id", "request-id", "cf-ray"):
        if value := response.headers.get(name):
            return value
    return None
