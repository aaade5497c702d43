"""``KreaResource``: the Krea account, its settings, and the clients built from them.

Declare it once per Krea account (the assets find it under the key you give the builder,
``"krea"`` by default)::

    import dagster as dg
    from krea_dagster import KreaResource

    krea = KreaResource(api_key=dg.EnvVar("KREA_API_KEY"))

With no ``api_key`` and no ``base_url``, the client reads ``KREA_API_KEY`` and ``KREA_BASE_URL``
from the environment of the process that calls Krea (``KreaResource()`` is enough). If you pass
the token, use ``dg.EnvVar``: Dagster then stores and displays the variable's *name*, never its
value. The resource's repr, its errors and everything it logs leave the token out.

Clients are built lazily, when an asset or a sensor first needs one, so loading a code location
never needs the token.
"""

import os
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import dagster as dg
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from krea_dagster.version import __version__

# The Dagster layer of krea-dagster starts here: tell Dagster which library version it runs with.
dg.DagsterLibraryRegistry.register("krea-dagster", __version__, is_dagster_package=False)

from krea_dagster.api import (  # noqa: E402
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    AsyncKreaClient,
    KreaClient,
    SubmitRateLimitPolicy,
    Timeouts,
)
from krea_dagster.api._core import check_api_key  # noqa: E402
from krea_dagster.api.config import (  # noqa: E402
    API_KEY_ENV,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_SUBMIT_429_BUDGET,
    DEFAULT_WRITE_TIMEOUT,
)
from krea_dagster.engine.catalogs import DEFAULT_CATALOG_MAX_AGE, CatalogSettings  # noqa: E402

__all__ = ["KreaResource"]


#: The most POSTs of one account ``submit_lanes`` keeps in flight.
MAX_SUBMIT_LANES = 16


class KreaResource(dg.ConfigurableResource):
    """A Krea API account and how krea-dagster uses it.

    Example::

        KreaResource(api_key=dg.EnvVar("KREA_API_KEY"), max_concurrent_submits=50)
    """

    api_key: str | None = Field(
        default=None,
        description=(
            "Krea API token `id:secret` from krea.ai/settings/api-tokens. Default: the "
            "KREA_API_KEY environment variable of the process that calls Krea. If you pass "
            'it, pass dg.EnvVar("KREA_API_KEY") so only the variable name is stored.'
        ),
        repr=False,
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "API base URL. Default: the KREA_BASE_URL environment variable when set, else "
            f"{DEFAULT_BASE_URL}; point it at a krea-emulator for tests and demos."
        ),
    )
    connect_timeout: float = Field(default=DEFAULT_CONNECT_TIMEOUT, description="Seconds.")
    read_timeout: float = Field(default=DEFAULT_READ_TIMEOUT, description="Seconds.")
    write_timeout: float = Field(default=DEFAULT_WRITE_TIMEOUT, description="Seconds.")
    max_retries: int = Field(
        default=DEFAULT_MAX_RETRIES,
        description="Retries of safe calls (GET, DELETE) on 408/409/429/5xx and transport errors.",
    )
    rate_limit_budget: float = Field(
        default=DEFAULT_SUBMIT_429_BUDGET,
        description="Seconds one submission may spend waiting out 429 (concurrency cap) answers.",
    )
    max_concurrent_submits: int = Field(
        default=0,
        description=(
            "Most jobs of one batch kept live (submitted, not finished) at Krea at once; "
            "0 submits everything and lets Krea backlog the excess. Set it below your "
            "account's backlog size to avoid 429s."
        ),
    )
    submit_lanes: int = Field(
        default=1,
        description=(
            "POSTs of this account in flight at once, across every worker sharing the ledger. "
            "1 suits most accounts (one POST takes a round trip; a batch waits on renders). "
            "On a big account over a slow network (concurrency / render seconds above about "
            "8 POSTs per second per 100 ms of latency) 4 keeps up; a worker killed with several "
            "POSTs in flight may then leave a prompt reported."
        ),
    )
    poll_interval: float = Field(
        default=2.0, description="Seconds between polls of pending jobs (Krea advises 2-5)."
    )
    poll_timeout: float = Field(
        default=0.0,
        description=(
            "Seconds the images asset waits for pending jobs; 0 means the model's default "
            "(a margin beyond Krea's 3-minute limit for Krea-hosted models, 2 hours for others)."
        ),
    )
    on_poll_timeout: Literal["report", "cancel"] = Field(
        default="report",
        description="Jobs still pending after poll_timeout: report them, or cancel them (unbilled).",
    )
    cancel_on_termination: bool = Field(
        default=True,
        description="Cancel the run's pending Krea jobs when the Dagster run is terminated.",
    )
    max_concurrent_downloads: int = Field(default=8, description="Parallel downloads.")
    live_catalog: bool = Field(
        default=True,
        description=(
            "Validate against the models the backend serves now: its GET /openapi.json, "
            "cached in the ledger database (catalog_max_age). False validates against the "
            "catalog bundled with this release only."
        ),
    )
    catalog_max_age: float = Field(
        default=DEFAULT_CATALOG_MAX_AGE,
        description=(
            "Seconds the cached live catalog is used before the backend is asked again "
            "(a conditional request; `krea-dagster catalog --refresh` asks now)."
        ),
    )
    unvalidated_models: list[str] = Field(
        default_factory=list,
        description=(
            "Models sent without validation when no catalog lists them, at your own risk "
            "(e.g. ['krea/krea-3'] before the backend's document lists it). Their prompts "
            "tables and manifests say 'unvalidated'; under max_usd_per_run they need price_usd."
        ),
    )

    # A validation error must never quote the token back: pydantic's messages show the input.
    model_config = ConfigDict(hide_input_in_errors=True)

    _client: KreaClient | None = PrivateAttr(default=None)

    # Ranges are checked here rather than with Field(ge=...): constrained (Annotated) field
    # types cannot be embedded in a YAML component's schema.
    @model_validator(mode="before")
    @classmethod
    def _check_api_key_shape(cls, data: Any) -> Any:
        """A malformed token fails here, when the resource is built, not in the jobs step.

        A ``dg.EnvVar`` is checked once Dagster has read the variable (at resource
        initialization, before any step uses it); an empty key is left for first use, where
        the message names KREA_API_KEY (a YAML component whose variable is unset still loads).
        """
        api_key = data.get("api_key") if isinstance(data, dict) else None
        if isinstance(api_key, str) and api_key and not isinstance(api_key, dg.EnvVar):
            check_api_key(api_key)  # ConfigurationError; the message never shows the token
        return data

    @model_validator(mode="after")
    def _check_ranges(self) -> "KreaResource":
        minimums = {
            "max_concurrent_submits": 0,
            "submit_lanes": 1,
            "max_concurrent_downloads": 1,
            "max_retries": 0,
            "poll_timeout": 0,
            "catalog_max_age": 0,
        }
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be at least {minimum}, got {getattr(self, name)}")
        if self.submit_lanes > MAX_SUBMIT_LANES:
            raise ValueError(
                f"submit_lanes must be at most {MAX_SUBMIT_LANES}, got {self.submit_lanes}: "
                "more POSTs in flight do not make Krea render faster, and each is one more a "
                "killed worker may leave undecidable"
            )
        for name in ("poll_interval", "connect_timeout", "read_timeout", "write_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"{name} must be a positive number of seconds, got {getattr(self, name)}"
                )
        return self

    @property
    def effective_base_url(self) -> str:
        """The API this resource calls: ``base_url``, else ``$KREA_BASE_URL``, else Krea's."""
        return self.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL

    def __repr__(self) -> str:
        return f"KreaResource(base_url={self.effective_base_url!r})"

    __str__ = __repr__

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "timeout": Timeouts(
                connect=self.connect_timeout, read=self.read_timeout, write=self.write_timeout
            ),
            "max_retries": self.max_retries,
            "submit_rate_limit": SubmitRateLimitPolicy(budget=self.rate_limit_budget),
        }

    @property
    def account_id(self) -> str:
        """The Krea account: the token's key id (before ``:``); the secret never leaves."""
        key = self.api_key or os.environ.get(API_KEY_ENV, "")
        return key.split(":", 1)[0].strip()

    @property
    def catalog_settings(self) -> CatalogSettings:
        """The live-catalog settings of this resource (``krea_dagster.engine.catalogs``)."""
        return CatalogSettings(
            base_url=self.effective_base_url,
            live=self.live_catalog,
            max_age=self.catalog_max_age,
            unvalidated_models=tuple(self.unvalidated_models),
        )

    @property
    def request_window(self) -> float:
        """Longest a POST can be in flight: bounds the creation window of an unknown row."""
        return self.connect_timeout + self.write_timeout + self.read_timeout

    def get_client(self) -> KreaClient:
        """A synchronous client, built on first use and reused (sensors, scripts)."""
        if self._client is None:
            self._client = KreaClient(**self._client_kwargs())
        return self._client

    @contextmanager
    def client(self) -> Iterator[KreaClient]:
        """A fresh synchronous client, closed on exit."""
        with KreaClient(**self._client_kwargs()) as client:
            yield client

    @asynccontextmanager
    async def async_client(self) -> Any:
        """A fresh asynchronous client for one event loop (httpx pools are per loop)."""
        async with AsyncKreaClient(**self._client_kwargs()) as client:
            yield client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
