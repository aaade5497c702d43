"""A guard against paying twice after the ledger moved: an empty ledger next to a full store.

The ledger is what makes a re-run free. If it is replaced by a new, empty one (a relative
SQLite path that now resolves elsewhere, a new database URL, a deleted file) while the image
store still holds the images of earlier runs, the next run submits every prompt again and pays
for it. ``forgotten_images_warning`` notices that state before anything is submitted.
"""

import itertools
from typing import Any

__all__ = ["forgotten_images_warning"]

SAMPLE = 1000  # files counted at most (the warning needs "some", not an exact number)


def forgotten_images_warning(ledger: Any, store: Any, scope: str, prefix: str) -> str | None:
    """A warning when ``ledger`` knows no batch of ``scope`` but ``store`` holds its images.

    ``ledger`` is a ``Ledger`` and ``store`` an ``ImageStore`` (typed loosely so this module
    imports neither).
    """
    if ledger.batches(scope):
        return None
    images = store.batch_uri(prefix)
    try:
        folder = store._path(prefix, "images")
        if not folder.exists():
            return None
        found = sum(
            1 for _ in itertools.islice((p for p in folder.rglob("*") if p.is_file()), SAMPLE)
        )
    except OSError:
        return None
    if not found:
        return None
    count = f"{found}+" if found >= SAMPLE else str(found)
    return (
        f"the ledger {ledger!r} has no record of {scope!r}, but the image store already holds "
        f"{count} image(s) of it under {images}: if the ledger moved or was deleted, every prompt "
        "is submitted and paid for again. Point `ledger` at the earlier ledger (relative "
        "sqlite:/// paths resolve against the project root or $KREA_DAGSTER_ROOT) before "
        "running; if this is on purpose, ignore this warning."
    )
