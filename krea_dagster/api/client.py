"""``KreaClient`` and ``AsyncKreaClient``: the Krea API on httpx.

Both are thin: each public method builds a flow from the shared core (``_core``, ``_jobs``,
``_download``) and runs it, performing the flow's actions with httpx and a sleep function. So
the two clients cannot drift: they differ only in how they send, stream, sleep and call back.

    with KreaClient() as krea:                       # KREA_API_KEY from the environment
        job = krea.submit("openai/gpt-image-2", {"prompt": "a lighthouse at dusk"})
        job = krea.wait(job.job_id, model="openai/gpt-image-2")
        krea.download(job.result_urls[0], "out/")    # -> out/<sha256>.png, verified
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import os
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime
from typing import Any, TypeVar

import httpx

from krea_dagster.api import _assets, _download, _jobs, _node_apps
from krea_dagster.api._core import (
    Action,
    ClientConfig,
    ClientStats,
    Flow,
    Notify,
    Offload,
    RequestCore,
    Send,
    SendAttempt,
    Sleep,
    Stream,
    aread_capped,
    check_api_key,
    check_base_url,
    read_capped,
    run_flow,
    run_flow_async,
    write_guard,
)
from krea_dagster.api.catalog import ModelCatalog
from krea_dagster.api.clock_offset import ClockOffset
from krea_dagster.api.config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_CLOCK_SKEW,
    DEFAULT_LIMITS,
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_POLL_BACKOFF_FACTOR,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUTS,
    Clock,
    DownloadSettings,
    RetryPolicy,
    SubmitRateLimitPolicy,
    SystemClock,
    Timeouts,
)
from krea_dagster.api.errors import AmbiguousSubmitError, AmbiguousUploadError
from krea_dagster.api.models import (
    Asset,
    AssetList,
    DownloadedFile,
    Job,
    JobList,
    JobStatus,
    NodeApp,
)
from krea_dagster.api.reconcile import Reconciliation, SubmissionWindow
from krea_dagster.api.redaction import install_redaction, register_secret
from krea_dagster.api.webhooks import parse_webhook
from krea_dagster.version import __version__

__all__ = ["DEFAULT_USER_AGENT", "AsyncKreaClient", "ClientStats", "KreaClient", "SendAttempt"]

logger = logging.getLogger("krea_dagster.api")
install_redaction()

DEFAULT_USER_AGENT = f"krea-dagster/{__version__}"

T = TypeVar("T")
_KEEP: Any = object()  # "not given" for with_options, where None means "no timeouts"


class _BaseClient:
    """Configuration shared by both clients: token, base URL, timeouts, policies, counters."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        submit_rate_limit: SubmitRateLimitPolicy | None = None,
        download_settings: DownloadSettings | None = None,
        user_agent: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        secret = check_api_key(api_key if api_key is not None else os.environ.get(API_KEY_ENV))
        register_secret(secret.reveal())
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout is None:
            logger.warning("Krea client created with timeout=None: requests may hang forever")
        if base_url:
            source = "base_url"
        elif os.environ.get(BASE_URL_ENV):
            source = BASE_URL_ENV
        else:
            source = "the default"
        config = ClientConfig(
            base_url=check_base_url(base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL),
            base_url_source=source,
            api_key=secret,
            timeouts=Timeouts.coerce(timeout),
            max_retries=max_retries,
            retry_policy=retry_policy or RetryPolicy(),
            submit_rate_limit=submit_rate_limit or SubmitRateLimitPolicy(),
            download=download_settings or DownloadSettings(),
            user_agent=user_agent or DEFAULT_USER_AGENT,
        )
        self._core = RequestCore(
            config, clock=clock or SystemClock(), rng=rng or random.Random(), stats=ClientStats()
        )
        self._owns_http = True

    @property
    def base_url(self) -> str:
        """The API's base URL (the only origin that ever receives the token)."""
        return self._core.config.base_url

    @property
    def timeouts(self) -> Timeouts:
        return self._core.config.timeouts

    @property
    def clock(self) -> Clock:
        """The client's clocks: an ``on_send`` write deadline is on ``clock.monotonic()``."""
        return self._core.clock

    @property
    def clock_offset(self) -> ClockOffset:
        """Krea's clock minus this client's, bounded from the ``Date`` of every answer."""
        return self._core.clock_offset

    @property
    def max_retries(self) -> int:
        return self._core.config.max_retries

    @property
    def stats(self) -> ClientStats:
        """Counters: requests by path template, retries, ambiguous submits, 429 waits, jobs."""
        return self._core.stats

    def _copy_with(
        self,
        *,
        timeout: Any,
        max_retries: int | None,
        retry_policy: RetryPolicy | None,
        submit_rate_limit: SubmitRateLimitPolicy | None,
        download_settings: DownloadSettings | None,
    ) -> Any:
        config = self._core.config
        changes: dict[str, Any] = {}
        if timeout is not _KEEP:
            changes["timeouts"] = Timeouts.coerce(timeout)
        if max_retries is not None:
            changes["max_retries"] = max_retries
        if retry_policy is not None:
            changes["retry_policy"] = retry_policy
        if submit_rate_limit is not None:
            changes["submit_rate_limit"] = submit_rate_limit
        if download_settings is not None:
            changes["download"] = download_settings
        clone = copy.copy(self)
        clone._core = RequestCore(
            config.replace(**changes),
            clock=self._core.clock,
            rng=self._core.rng,
            stats=self.stats,
            clock_offset=self._core.clock_offset,
            api_answered=self._core.api_answered,
        )
        clone._owns_http = False  # the pool belongs to the original client
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


def _http_timeout(config: ClientConfig) -> httpx.Timeout:
    return config.timeouts.for_json()


def _check_transport_choice(transport: object, http_client: object) -> None:
    if transport is not None and http_client is not None:
        raise ValueError(
            "pass transport= or http_client=, not both (set the transport on the client)"
        )


class KreaClient(_BaseClient):
    """The synchronous Krea client; use it as a context manager to close its connection pool."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        submit_rate_limit: SubmitRateLimitPolicy | None = None,
        download_settings: DownloadSettings | None = None,
        user_agent: str | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
        clock: Clock | None = None,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            submit_rate_limit=submit_rate_limit,
            download_settings=download_settings,
            user_agent=user_agent,
            clock=clock,
            rng=rng,
        )
        self._sleep = sleep or time.sleep
        _check_transport_choice(transport, http_client)
        if http_client is not None:
            self._http = http_client
            self._owns_http = False  # the caller manages its lifetime
        else:
            self._http = httpx.Client(
                transport=transport,
                limits=limits,
                timeout=_http_timeout(self._core.config),
                follow_redirects=False,
            )

    # -- plumbing -------------------------------------------------------------------------

    def _run(self, flow: Flow[T]) -> T:
        return run_flow(flow, self._perform)

    def _perform(self, action: Action) -> Any:
        if isinstance(action, Send):
            if action.write_by is not None:
                action.request.extensions["trace"] = write_guard(self._core.clock, action.write_by)
            # auth=None: a user-supplied http_client's own auth must never reach other origins.
            # Streamed and capped: an answer larger than any of Krea's is never held whole.
            response = self._http.send(
                action.request, stream=True, auth=None, follow_redirects=False
            )
            return read_capped(response)
        if isinstance(action, Stream):
            response = self._http.send(
                action.request, stream=True, auth=None, follow_redirects=False
            )
            try:
                if action.sink.accepts_body(response):
                    for chunk in response.iter_bytes(self._core.config.download.chunk_size):
                        action.sink.write(chunk)
            finally:
                response.close()
            return response
        if isinstance(action, Sleep):
            if action.seconds > 0:
                self._sleep(action.seconds)
            return None
        if isinstance(action, Notify):
            return action.callback(action.value)
        if isinstance(action, Offload):
            return action.function()
        raise TypeError(f"unknown action {action!r}")

    def close(self) -> None:
        """Close the connection pool (unless it was passed in as ``http_client``)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> KreaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def with_options(
        self,
        *,
        timeout: Timeouts | float | None = _KEEP,
        max_retries: int | None = None,
        retry_policy: RetryPolicy | None = None,
        submit_rate_limit: SubmitRateLimitPolicy | None = None,
        download_settings: DownloadSettings | None = None,
    ) -> KreaClient:
        """A client with other settings sharing this one's pool and counters."""
        clone: KreaClient = self._copy_with(
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            submit_rate_limit=submit_rate_limit,
            download_settings=download_settings,
        )
        return clone

    # -- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        model: str,
        params: Mapping[str, Any],
        *,
        kind: str = "image",
        zero_data_retention: bool = False,
        webhook_url: str | None = None,
        validate: bool = True,
        max_retries: int | None = None,
        submission_id: str | None = None,
        on_send: Callable[[SendAttempt], object] | None = None,
        catalog: ModelCatalog | None = None,
    ) -> Job:
        """Validate and ``POST /generate/<kind>/<model>``; never resent once it may have arrived.

        ``zero_data_retention=True`` sends ``X-Api-Zero-Data-Retention: 1`` and refuses
        (RequestValidationError, nothing sent) a media input that is not a ``data:`` URI, as
        Krea would with a 422.

        Raises RequestValidationError (nothing sent), AmbiguousSubmitError (a job may exist:
        reconcile, do not resubmit), RateLimitError (still at the concurrency cap after the
        429 budget), or the status error of a refusal (402, 401, ...). ``catalog`` is the
        catalog the body is validated against (default: the bundled one; a live one knows the
        models Krea added since this release); ``validate=False`` sends it unchecked, only for
        a model in no catalog. ``submission_id`` names the
        submission in logs and errors (a ledger passes its own); ``on_send`` is called with a
        ``SendAttempt`` before every POST and every wait, and the POST waits for it.
        """
        return self._run(
            self._core.submit(
                model,
                params,
                kind=kind,
                zero_data_retention=zero_data_retention,
                webhook_url=webhook_url,
                validate=validate,
                max_retries=max_retries,
                submission_id=submission_id,
                on_send=on_send,
                catalog=catalog,
            )
        )

    def get_node_app(self, version_id: str, *, max_retries: int | None = None) -> NodeApp:
        """``GET /node-apps/{id}``: a node-app version (name, input and output schemas...).

        ``version_id`` is the node app's *version* id; an unknown one raises NotFoundError.
        """
        return self._run(_node_apps.get_node_app(self._core, version_id, max_retries=max_retries))

    def execute_node_app(
        self,
        version_id: str,
        inputs: Mapping[str, Any],
        *,
        max_retries: int | None = None,
        submission_id: str | None = None,
        on_send: Callable[[SendAttempt], object] | None = None,
    ) -> list[Job]:
        """``POST /node-apps/{id}/execute`` with the app's inputs; the jobs it created, in order.

        The same care as ``submit``: never resent once it may have arrived (connect failures
        are resent, 429s waited out within the submit rate-limit budget, ``on_send`` called
        before every POST and every wait). Raises AmbiguousSubmitError (jobs may exist:
        reconcile, do not execute again; its ``model`` is ``node-app/<version_id>`` and its
        ``kind`` ``node-app``), RateLimitError, or the status error of a refusal (400 naming
        the input, 401, 402, 404 for an unknown app). The inputs are sent as given: check them
        against ``get_node_app(...).input_schema`` first if you need to.
        """
        return self._run(
            _node_apps.execute_node_app(
                self._core,
                version_id,
                inputs,
                max_retries=max_retries,
                submission_id=submission_id,
                on_send=on_send,
            )
        )

    def get_job(
        self, job_id: str, *, max_retries: int | None = None, deadline: float | None = None
    ) -> Job:
        """``GET /jobs/{id}``; ``deadline`` (monotonic seconds) bounds it and its retries."""
        return self._run(self._core.get_job(job_id, max_retries=max_retries, deadline=deadline))

    def list_jobs(
        self,
        *,
        cursor: str | datetime | None = None,
        limit: int = 100,
        status: JobStatus | str | None = None,
        types: Sequence[str] | str | None = None,
        max_retries: int | None = None,
    ) -> JobList:
        """One page of ``GET /jobs`` (newest first; pass ``next_cursor`` for older jobs)."""
        return self._run(
            self._core.list_jobs(
                cursor=cursor, limit=limit, status=status, types=types, max_retries=max_retries
            )
        )

    def iter_jobs(
        self,
        *,
        limit: int = 1000,
        status: JobStatus | str | None = None,
        types: Sequence[str] | str | None = None,
        created_after: datetime | None = None,
        max_retries: int | None = None,
        created_before: datetime | None = None,
    ) -> Iterator[Job]:
        """Every job, newest first, page by page; stops at jobs older than ``created_after``.

        ``created_before``: start at the jobs created before it instead of the newest.
        """
        pager = _jobs.JobPager(
            limit=limit,
            status=status,
            types=types,
            created_after=created_after,
            cursor=created_before,
        )
        while not pager.done:
            page = self._run(pager.next_page(self._core, max_retries))
            yield from pager.accept(page)

    def cancel_job(
        self, job_id: str, *, max_retries: int | None = None, deadline: float | None = None
    ) -> Job | None:
        """``DELETE /jobs/{id}``; the job when Krea returns it, else None.

        ``deadline`` (monotonic seconds) bounds it and its retries (``DeadlineExceededError``).
        """
        return self._run(self._core.cancel_job(job_id, max_retries=max_retries, deadline=deadline))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        model: str | None = None,
        kind: str = "image",
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        backoff_factor: float = DEFAULT_POLL_BACKOFF_FACTOR,
        on_update: Callable[[Job], object] | None = None,
        cancel_on_timeout: bool = False,
        raise_on_failure: bool = True,
        max_retries: int | None = None,
    ) -> Job:
        """Poll until the job is terminal, on a monotonic deadline.

        ``timeout`` defaults to Krea's automatic-failure limit for ``model`` plus a margin
        (5 min for Krea-hosted models, 2 h 10 min for external providers and unknown models).
        ``on_update(job)`` runs on every status change. Raises JobTimeoutError at the deadline
        (after a best-effort ``DELETE`` when ``cancel_on_timeout``), and JobFailedError or
        JobCancelledError for those outcomes unless ``raise_on_failure=False``.
        """
        return self._run(
            _jobs.wait(
                self._core,
                job_id,
                timeout=timeout,
                model=model,
                kind=kind,
                poll_interval=poll_interval,
                max_interval=max_interval,
                backoff_factor=backoff_factor,
                on_update=on_update,
                cancel_on_timeout=cancel_on_timeout,
                raise_on_failure=raise_on_failure,
                max_retries=max_retries,
            )
        )

    def poll_many(
        self,
        job_ids: Iterable[str],
        *,
        created_after: datetime | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        created_before: datetime | None = None,
    ) -> list[Job]:
        """The current state of every job in ``job_ids`` (in that order), at ~1 request / 1000.

        ``deadline``: a ``time.monotonic()`` value (the client clock's) after which nothing is
        sent; each request's timeouts are clipped to the time left. The list is then partial:
        the jobs polled in time, in ``job_ids`` order, without the others.
        ``created_before``: the newest of these jobs' ``created_at``; the ``GET /jobs`` pages
        start just above it instead of at the account's newest job.
        """
        return self._run(
            _jobs.poll_many(
                self._core,
                job_ids,
                created_after=created_after,
                max_retries=max_retries,
                deadline=deadline,
                created_before=created_before,
            )
        )

    def reconcile_submission(
        self,
        error_or_window: AmbiguousSubmitError | SubmissionWindow,
        *,
        known_job_ids: Iterable[str] = (),
        skew: float = DEFAULT_CLOCK_SKEW,
        types: Sequence[str] | str | None = None,
        max_retries: int | None = None,
    ) -> Reconciliation:
        """Look for the job an ambiguous submission may have created; it never resubmits."""
        return self._run(
            _jobs.reconcile(
                self._core,
                error_or_window,
                known_job_ids=known_job_ids,
                skew=skew,
                types=types,
                max_retries=max_retries,
            )
        )

    def confirm_webhook(
        self, raw_body: bytes | bytearray | str, *, max_retries: int | None = None
    ) -> Job:
        """Parse a webhook body and return the job as ``GET /jobs/{id}`` reports it."""
        claimed = parse_webhook(raw_body)
        return self._run(_jobs.confirm_webhook(self._core, claimed, max_retries))

    # -- assets ---------------------------------------------------------------------------

    def upload_asset(
        self,
        file: bytes | str | os.PathLike[str],
        *,
        filename: str | None = None,
        description: str | None = None,
        skew: float = DEFAULT_CLOCK_SKEW,
        max_retries: int | None = None,
    ) -> Asset:
        """``POST /assets`` the bytes (or the local file at a path); never resent blindly.

        Checked first (InvalidUploadError, nothing sent: empty, over 75 MB, or not JPEG, PNG,
        WebP, HEIC, MP4, MOV, WebM, GLB, WAV, MP3). The description starts with
        ``sha256:<hex>`` of the bytes. A failure after the file may have reached Krea is
        reconciled through ``GET /assets`` by that hash; when no asset is found it raises
        AmbiguousUploadError (see ``reconcile_upload``).
        """
        return self._run(
            _assets.upload_asset(
                self._core,
                file,
                filename=filename,
                description=description,
                skew=skew,
                max_retries=max_retries,
            )
        )

    def list_assets(
        self,
        *,
        cursor: str | datetime | None = None,
        limit: int = 100,
        max_retries: int | None = None,
    ) -> AssetList:
        """One page of ``GET /assets`` (newest first; pass ``next_cursor`` for older assets)."""
        return self._run(
            _assets.list_assets(self._core, cursor=cursor, limit=limit, max_retries=max_retries)
        )

    def iter_assets(
        self,
        *,
        limit: int = 1000,
        uploaded_after: datetime | None = None,
        max_retries: int | None = None,
    ) -> Iterator[Asset]:
        """Every asset, newest first, page by page; stops at assets older than ``uploaded_after``."""
        pager = _assets.AssetPager(limit=limit, uploaded_after=uploaded_after)
        while not pager.done:
            page = self._run(pager.next_page(self._core, max_retries))
            yield from pager.accept(page)

    def get_asset(self, asset_id: str, *, max_retries: int | None = None) -> Asset:
        """``GET /assets/{id}``."""
        return self._run(_assets.get_asset(self._core, asset_id, max_retries=max_retries))

    def delete_asset(self, asset_id: str, *, max_retries: int | None = None) -> bool:
        """``DELETE /assets/{id}``; Krea's ``success`` flag (a 404 raises NotFoundError)."""
        return self._run(_assets.delete_asset(self._core, asset_id, max_retries=max_retries))

    def find_asset(
        self,
        sha256: str,
        *,
        size: int | None = None,
        uploaded_after: datetime | None = None,
        max_retries: int | None = None,
    ) -> Asset | None:
        """The oldest asset uploaded by this client whose description carries ``sha256``."""
        return self._run(
            _assets.find_upload(
                self._core,
                sha256,
                size=size,
                uploaded_after=uploaded_after,
                max_retries=max_retries,
            )
        )

    def reconcile_upload(
        self,
        error: AmbiguousUploadError,
        *,
        skew: float = DEFAULT_CLOCK_SKEW,
        max_retries: int | None = None,
    ) -> Asset | None:
        """Look again for the asset an ambiguous upload may have created; it never uploads."""
        return self._run(
            _assets.reconcile_upload(self._core, error, skew=skew, max_retries=max_retries)
        )

    # -- results --------------------------------------------------------------------------

    def download(
        self,
        url: str,
        dest: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        verify_image: bool = True,
        max_retries: int | None = None,
    ) -> DownloadedFile:
        """Stream a result into ``dest`` (a file, or a directory: ``<sha256>.<ext>``), verified.

        No token is sent unless ``url`` is on the API's own origin.
        """
        return self._run(
            _download.download(
                self._core,
                url,
                dest,
                max_bytes=max_bytes,
                verify_image=verify_image,
                max_retries=max_retries,
            )
        )


class AsyncKreaClient(_BaseClient):
    """The asyncio twin of ``KreaClient``: same methods, awaited; ``async with`` closes the pool."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        submit_rate_limit: SubmitRateLimitPolicy | None = None,
        download_settings: DownloadSettings | None = None,
        user_agent: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            submit_rate_limit=submit_rate_limit,
            download_settings=download_settings,
            user_agent=user_agent,
            clock=clock,
            rng=rng,
        )
        self._sleep = sleep or asyncio.sleep
        _check_transport_choice(transport, http_client)
        if http_client is not None:
            self._http = http_client
            self._owns_http = False
        else:
            self._http = httpx.AsyncClient(
                transport=transport,
                limits=limits,
                timeout=_http_timeout(self._core.config),
                follow_redirects=False,
            )

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, flow: Flow[T]) -> T:
        return await run_flow_async(flow, self._perform)

    async def _perform(self, action: Action) -> Any:
        if isinstance(action, Send):
            if action.write_by is not None:
                check = write_guard(self._core.clock, action.write_by)

                async def trace(event: str, info: Any) -> None:
                    check(event, info)

                action.request.extensions["trace"] = trace
            response = await self._http.send(
                action.request, stream=True, auth=None, follow_redirects=False
            )
            return await aread_capped(response)
        if isinstance(action, Stream):
            response = await self._http.send(
                action.request, stream=True, auth=None, follow_redirects=False
            )
            try:
                if action.sink.accepts_body(response):
                    async for chunk in response.aiter_bytes(self._core.config.download.chunk_size):
                        action.sink.write(chunk)
            finally:
                await response.aclose()
            return response
        if isinstance(action, Sleep):
            if action.seconds > 0:
                await self._sleep(action.seconds)
            return None
        if isinstance(action, Notify):
            result = action.callback(action.value)
            if inspect.isawaitable(result):
                return await result
            return result
        if isinstance(action, Offload):
            # fsync and image verification block; keep them off the event loop.
            return await asyncio.to_thread(action.function)
        raise TypeError(f"unknown action {action!r}")

    async def close(self) -> None:
        """Close the connection pool (unless it was passed in as ``http_client``)."""
        if self._owns_http:
            await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncKreaClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def with_options(
        self,
        *,
        timeout: Timeouts | float | None = _KEEP,
        max_retries: int | None = None,
        retry_policy: RetryPolicy | None = None,
        submit_rate_limit: SubmitRateLimitPolicy | None = None,
        download_settings: DownloadSettings | None = None,
    ) -> AsyncKreaClient:
        """A client with other settings sharing this one's pool and counters."""
        clone: AsyncKreaClient = self._copy_with(
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            submit_rate_limit=submit_rate_limit,
            download_settings=download_settings,
        )
        return clone

    # -- jobs -----------------------------------------------------------------------------

    async def submit(
        self,
        model: str,
        params: Mapping[str, Any],
        *,
        kind: str = "image",
        zero_data_retention: bool = False,
        webhook_url: str | None = None,
        validate: bool = True,
        max_retries: int | None = None,
        submission_id: str | None = None,
        on_send: Callable[[SendAttempt], object] | None = None,
        catalog: ModelCatalog | None = None,
    ) -> Job:
        """See ``KreaClient.submit``."""
        return await self._run(
            self._core.submit(
                model,
                params,
                kind=kind,
                zero_data_retention=zero_data_retention,
                webhook_url=webhook_url,
                validate=validate,
                max_retries=max_retries,
                submission_id=submission_id,
                on_send=on_send,
                catalog=catalog,
            )
        )

    async def get_node_app(self, version_id: str, *, max_retries: int | None = None) -> NodeApp:
        """See ``KreaClient.get_node_app``."""
        return await self._run(
            _node_apps.get_node_app(self._core, version_id, max_retries=max_retries)
        )

    async def execute_node_app(
        self,
        version_id: str,
        inputs: Mapping[str, Any],
        *,
        max_retries: int | None = None,
        submission_id: str | None = None,
        on_send: Callable[[SendAttempt], object] | None = None,
    ) -> list[Job]:
        """See ``KreaClient.execute_node_app``."""
        return await self._run(
            _node_apps.execute_node_app(
                self._core,
                version_id,
                inputs,
                max_retries=max_retries,
                submission_id=submission_id,
                on_send=on_send,
            )
        )

    async def get_job(
        self, job_id: str, *, max_retries: int | None = None, deadline: float | None = None
    ) -> Job:
        """``GET /jobs/{id}``; ``deadline`` (monotonic seconds) bounds it and its retries."""
        return await self._run(
            self._core.get_job(job_id, max_retries=max_retries, deadline=deadline)
        )

    async def list_jobs(
        self,
        *,
        cursor: str | datetime | None = None,
        limit: int = 100,
        status: JobStatus | str | None = None,
        types: Sequence[str] | str | None = None,
        max_retries: int | None = None,
    ) -> JobList:
        """One page of ``GET /jobs``."""
        return await self._run(
            self._core.list_jobs(
                cursor=cursor, limit=limit, status=status, types=types, max_retries=max_retries
            )
        )

    async def iter_jobs(
        self,
        *,
        limit: int = 1000,
        status: JobStatus | str | None = None,
        types: Sequence[str] | str | None = None,
        created_after: datetime | None = None,
        max_retries: int | None = None,
        created_before: datetime | None = None,
    ) -> AsyncIterator[Job]:
        """Every job, newest first; stops at jobs older than ``created_after``.

        ``created_before``: start at the jobs created before it instead of the newest.
        """
        pager = _jobs.JobPager(
            limit=limit,
            status=status,
            types=types,
            created_after=created_after,
            cursor=created_before,
        )
        while not pager.done:
            page = await self._run(pager.next_page(self._core, max_retries))
            for job in pager.accept(page):
                yield job

    async def cancel_job(
        self, job_id: str, *, max_retries: int | None = None, deadline: float | None = None
    ) -> Job | None:
        """``DELETE /jobs/{id}``; see ``KreaClient.cancel_job``."""
        return await self._run(
            self._core.cancel_job(job_id, max_retries=max_retries, deadline=deadline)
        )

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        model: str | None = None,
        kind: str = "image",
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        backoff_factor: float = DEFAULT_POLL_BACKOFF_FACTOR,
        on_update: Callable[[Job], object] | None = None,
        cancel_on_timeout: bool = False,
        raise_on_failure: bool = True,
        max_retries: int | None = None,
    ) -> Job:
        """See ``KreaClient.wait``; ``on_update`` may be a coroutine function."""
        return await self._run(
            _jobs.wait(
                self._core,
                job_id,
                timeout=timeout,
                model=model,
                kind=kind,
                poll_interval=poll_interval,
                max_interval=max_interval,
                backoff_factor=backoff_factor,
                on_update=on_update,
                cancel_on_timeout=cancel_on_timeout,
                raise_on_failure=raise_on_failure,
                max_retries=max_retries,
            )
        )

    async def poll_many(
        self,
        job_ids: Iterable[str],
        *,
        created_after: datetime | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        created_before: datetime | None = None,
    ) -> list[Job]:
        """See ``KreaClient.poll_many``."""
        return await self._run(
            _jobs.poll_many(
                self._core,
                job_ids,
                created_after=created_after,
                max_retries=max_retries,
                deadline=deadline,
                created_before=created_before,
            )
        )

    async def reconcile_submission(
        self,
        error_or_window: AmbiguousSubmitError | SubmissionWindow,
        *,
        known_job_ids: Iterable[str] = (),
        skew: float = DEFAULT_CLOCK_SKEW,
        types: Sequence[str] | str | None = None,
        max_retries: int | None = None,
    ) -> Reconciliation:
        """See ``KreaClient.reconcile_submission``."""
        return await self._run(
            _jobs.reconcile(
                self._core,
                error_or_window,
                known_job_ids=known_job_ids,
                skew=skew,
                types=types,
                max_retries=max_retries,
            )
        )

    async def confirm_webhook(
        self, raw_body: bytes | bytearray | str, *, max_retries: int | None = None
    ) -> Job:
        """See ``KreaClient.confirm_webhook``."""
        claimed = parse_webhook(raw_body)
        return await self._run(_jobs.confirm_webhook(self._core, claimed, max_retries))

    # -- assets ---------------------------------------------------------------------------

    async def upload_asset(
        self,
        file: bytes | str | os.PathLike[str],
        *,
        filename: str | None = None,
        description: str | None = None,
        skew: float = DEFAULT_CLOCK_SKEW,
        max_retries: int | None = None,
    ) -> Asset:
        """See ``KreaClient.upload_asset`` (a path is read in a worker thread)."""
        return await self._run(
            _assets.upload_asset(
                self._core,
                file,
                filename=filename,
                description=description,
                skew=skew,
                max_retries=max_retries,
            )
        )

    async def list_assets(
        self,
        *,
        cursor: str | datetime | None = None,
        limit: int = 100,
        max_retries: int | None = None,
    ) -> AssetList:
        """One page of ``GET /assets``."""
        return await self._run(
            _assets.list_assets(self._core, cursor=cursor, limit=limit, max_retries=max_retries)
        )

    async def iter_assets(
        self,
        *,
        limit: int = 1000,
        uploaded_after: datetime | None = None,
        max_retries: int | None = None,
    ) -> AsyncIterator[Asset]:
        """Every asset, newest first; stops at assets older than ``uploaded_after``."""
        pager = _assets.AssetPager(limit=limit, uploaded_after=uploaded_after)
        while not pager.done:
            page = await self._run(pager.next_page(self._core, max_retries))
            for asset in pager.accept(page):
                yield asset

    async def get_asset(self, asset_id: str, *, max_retries: int | None = None) -> Asset:
        """``GET /assets/{id}``."""
        return await self._run(_assets.get_asset(self._core, asset_id, max_retries=max_retries))

    async def delete_asset(self, asset_id: str, *, max_retries: int | None = None) -> bool:
        """See ``KreaClient.delete_asset``."""
        return await self._run(_assets.delete_asset(self._core, asset_id, max_retries=max_retries))

    async def find_asset(
        self,
        sha256: str,
        *,
        size: int | None = None,
        uploaded_after: datetime | None = None,
        max_retries: int | None = None,
    ) -> Asset | None:
        """See ``KreaClient.find_asset``."""
        return await self._run(
            _assets.find_upload(
                self._core,
                sha256,
                size=size,
                uploaded_after=uploaded_after,
                max_retries=max_retries,
            )
        )

    async def reconcile_upload(
        self,
        error: AmbiguousUploadError,
        *,
        skew: float = DEFAULT_CLOCK_SKEW,
        max_retries: int | None = None,
    ) -> Asset | None:
        """See ``KreaClient.reconcile_upload``."""
        return await self._run(
            _assets.reconcile_upload(self._core, error, skew=skew, max_retries=max_retries)
        )

    # -- results --------------------------------------------------------------------------

    async def download(
        self,
        url: str,
        dest: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        verify_image: bool = True,
        max_retries: int | None = None,
    ) -> DownloadedFile:
        """See ``KreaClient.download``."""
        return await self._run(
            _download.download(
                self._core,
                url,
                dest,
                max_bytes=max_bytes,
                verify_image=verify_image,
                max_retries=max_retries,
            )
        )
