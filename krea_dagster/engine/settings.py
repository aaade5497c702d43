"""What the engine needs to know of a Krea account and how to use it.

``KreaResource`` (the Dagster resource) satisfies ``KreaAccount``; so does any object with these
attributes, which is how the engine runs in tests and scripts without Dagster.
"""

from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Literal, Protocol

from krea_dagster.api import AsyncKreaClient, KreaClient
from krea_dagster.engine.catalogs import CatalogSettings

__all__ = ["KreaAccount"]


class KreaAccount(Protocol):
    """A Krea account's clients and the settings the engine's steps read."""

    max_concurrent_submits: int
    submit_lanes: int
    max_concurrent_downloads: int
    poll_interval: float
    poll_timeout: float
    on_poll_timeout: Literal["report", "cancel"]

    @property
    def account_id(self) -> str:
        """The Krea account: the token's key id (the part before ``:``), never the secret."""
        ...

    @property
    def catalog_settings(self) -> CatalogSettings:
        """Which backend's live catalog to use, whether at all, and what to send unvalidated."""
        ...

    @property
    def request_window(self) -> float:
        """Longest a POST can be in flight: bounds the creation window of an unknown row."""
        ...

    def client(self) -> AbstractContextManager[KreaClient]:
        """A fresh synchronous client, closed on exit."""
        ...

    def async_client(self) -> AbstractAsyncContextManager[AsyncKreaClient]:
        """A fresh asynchronous client for one event loop."""
        ...
