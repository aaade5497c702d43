"""The live model catalog of each backend, cached in the ledger database.

Every process of a deployment (run workers, the sensor daemon, the ``krea-dagster`` command)
shares the ledger database, so one fetch of a backend's ``/openapi.json`` serves them all until
it is no longer fresh. A row holds the derived catalog, the document's ETag and SHA-256, when
it was fetched, and when the backend was last asked (``checked_at``) with the cause of that
check's failure, if it failed.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from krea_dagster.engine.ledger.records import aware, utcnow
from krea_dagster.engine.ledger.schema import catalogs_table

if TYPE_CHECKING:
    from krea_dagster.engine.ledger.schema import LedgerDatabase

__all__ = ["CachedCatalog", "LedgerCatalogCache"]


@dataclass(frozen=True)
class CachedCatalog:
    """One backend's cached catalog row; ``catalog_json`` is None until a fetch succeeded."""

    base_url: str
    etag: str | None
    sha256: str | None
    derivation: int | None
    catalog_json: str | None
    fetched_at: datetime | None
    checked_at: datetime
    error: str | None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> "CachedCatalog":
        """Build the record from a ``krea_model_catalogs`` row."""
        return cls(
            base_url=row["base_url"],
            etag=row["etag"],
            sha256=row["sha256"],
            derivation=row["derivation"],
            catalog_json=row["catalog_json"],
            fetched_at=aware(row["fetched_at"]) if row["fetched_at"] else None,
            checked_at=aware(row["checked_at"]) or utcnow(),
            error=row["error"],
        )


class LedgerCatalogCache:
    """Read and write the cached catalogs (one row per backend URL)."""

    def __init__(self, ledger: "LedgerDatabase") -> None:
        self.ledger = ledger

    def get(self, base_url: str) -> CachedCatalog | None:
        """The cached row of ``base_url``, if any process ever asked it."""
        with self.ledger.engine.connect() as conn:
            row = (
                conn.execute(sa.select(catalogs_table).where(catalogs_table.c.base_url == base_url))
                .mappings()
                .first()
            )
        return None if row is None else CachedCatalog.from_row(row)

    def store(
        self, base_url: str, *, etag: str | None, sha256: str, derivation: int, catalog_json: str
    ) -> CachedCatalog:
        """A newly fetched and derived document."""
        now = utcnow()
        return self._upsert(
            base_url,
            etag=etag,
            sha256=sha256,
            derivation=derivation,
            catalog_json=catalog_json,
            fetched_at=now,
            checked_at=now,
            error=None,
        )

    def confirm(self, base_url: str, *, etag: str | None) -> None:
        """The backend confirmed the cached document (304, or the same bytes): fresh again."""
        with self.ledger.transaction() as conn:
            conn.execute(
                catalogs_table.update()
                .where(catalogs_table.c.base_url == base_url)
                .values(etag=etag, checked_at=utcnow(), error=None)
            )

    def record_failure(self, base_url: str, cause: str) -> None:
        """The backend was asked and the document could not be used; the cached copy stays."""
        with self.ledger.transaction() as conn:
            updated = conn.execute(
                catalogs_table.update()
                .where(catalogs_table.c.base_url == base_url)
                .values(checked_at=utcnow(), error=cause)
            )
            if updated.rowcount == 0:
                conn.execute(
                    catalogs_table.insert().values(
                        base_url=base_url, checked_at=utcnow(), error=cause
                    )
                )

    def _upsert(self, base_url: str, **values: object) -> CachedCatalog:
        with self.ledger.transaction() as conn:
            updated = conn.execute(
                catalogs_table.update()
                .where(catalogs_table.c.base_url == base_url)
                .values(**values)
            )
            if updated.rowcount == 0:
                conn.execute(catalogs_table.insert().values(base_url=base_url, **values))
        found = self.get(base_url)
        assert found is not None
        return found
