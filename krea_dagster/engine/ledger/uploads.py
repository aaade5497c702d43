"""Uploaded reference files, by content hash per account, in the ledger database."""

from collections.abc import Iterable
from typing import TYPE_CHECKING

import sqlalchemy as sa

from krea_dagster.engine.ledger.records import utcnow
from krea_dagster.engine.ledger.schema import chunks, uploads_table
from krea_dagster.engine.references import CachedUpload

if TYPE_CHECKING:
    from krea_dagster.engine.ledger.schema import LedgerDatabase

__all__ = ["LedgerUploadCache"]


class LedgerUploadCache:
    """Uploaded reference files of one account, by content hash, in the ledger database.

    ``begin`` writes the intent before the upload (like a submission's): a worker killed during
    an upload leaves it, and the next ``begin`` of the same bytes answers True, so the resolver
    looks for the asset in ``GET /assets`` before uploading again. Nothing is uploaded twice.
    An entry whose asset is gone at Krea (deleted) is forgotten (``forget``): its bytes are
    uploaded again the next time a request needs them.
    """

    def __init__(self, ledger: "LedgerDatabase", account: str) -> None:
        self.ledger = ledger
        self.account = account

    def get(self, sha256: str) -> str | None:
        with self.ledger.engine.connect() as conn:
            url = conn.execute(
                sa.select(uploads_table.c.url).where(
                    uploads_table.c.account == self.account,
                    uploads_table.c.sha256 == sha256,
                    uploads_table.c.url.is_not(None),
                )
            ).scalar_one_or_none()
        return None if url is None else str(url)

    def begin(self, sha256: str) -> bool:
        with self.ledger.transaction() as conn:
            started = conn.execute(
                sa.select(uploads_table.c.started_at).where(
                    uploads_table.c.account == self.account, uploads_table.c.sha256 == sha256
                )
            ).first()
            if started is not None:
                return True
            conn.execute(
                uploads_table.insert().values(
                    account=self.account, sha256=sha256, started_at=utcnow()
                )
            )
        return False

    def put(self, sha256: str, url: str, asset_id: str, size: int) -> None:
        with self.ledger.transaction() as conn:
            done = conn.execute(
                uploads_table.update()
                .where(uploads_table.c.account == self.account, uploads_table.c.sha256 == sha256)
                .values(url=url, asset_id=asset_id, size_bytes=size, uploaded_at=utcnow())
            )
            if done.rowcount == 0:
                conn.execute(
                    uploads_table.insert().values(
                        account=self.account,
                        sha256=sha256,
                        url=url,
                        asset_id=asset_id,
                        size_bytes=size,
                        started_at=utcnow(),
                        uploaded_at=utcnow(),
                    )
                )

    def named(self, urls: Iterable[str]) -> list[CachedUpload]:
        wanted = sorted(set(urls))
        found: list[CachedUpload] = []
        column = uploads_table.c
        with self.ledger.engine.connect() as conn:
            for chunk in chunks(wanted, 500):
                found.extend(
                    CachedUpload(sha256, url, asset_id)
                    for sha256, url, asset_id in conn.execute(
                        sa.select(column.sha256, column.url, column.asset_id).where(
                            column.account == self.account, column.url.in_(chunk)
                        )
                    )
                )
        return found

    def forget(self, sha256: str, url: str) -> bool:
        column = uploads_table.c
        with self.ledger.transaction() as conn:
            # Guarded: a worker that uploaded the bytes again meanwhile keeps its new entry.
            done = conn.execute(
                uploads_table.delete().where(
                    column.account == self.account, column.sha256 == sha256, column.url == url
                )
            )
        return done.rowcount == 1

    def uploads(self) -> int:
        """How many distinct files this account has uploaded through the ledger."""
        with self.ledger.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(
                        uploads_table.c.account == self.account, uploads_table.c.url.is_not(None)
                    )
                ).scalar_one()
            )
