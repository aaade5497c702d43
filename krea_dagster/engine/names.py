"""Names a user gives: batches, instance prefixes, workflow steps. One full-match rule each.

Each rule is a pattern that must match the *whole* name (``re.fullmatch``): with ``match`` and
``$``, a name ending in a newline passes (``$`` also matches before a final ``\\n``), and
``str.isalnum`` admits letters and digits of every script, which Dagster's names refuse.
"""

import re

from krea_dagster.api.catalog import shorten

__all__ = [
    "BATCH_NAME",
    "DAGSTER_NAME",
    "batch_name_problem",
    "dagster_name_problem",
    "is_full_match",
]

#: A batch is a dynamic partition key: also a file name and a path segment in the store.
BATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
#: What Dagster accepts in asset key parts, job, sensor and partitions names.
DAGSTER_NAME = re.compile(r"[A-Za-z0-9_]+")


def is_full_match(pattern: re.Pattern[str], name: object) -> bool:
    """Whether ``name`` is a string the pattern matches from its first to its last character."""
    return isinstance(name, str) and pattern.fullmatch(name) is not None


def batch_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a batch (a dynamic partition key), or None when it can."""
    if is_full_match(BATCH_NAME, name):
        return None
    return (
        f"batch name {shorten(str(name))!r} is not a valid partition key: use letters, digits, "
        "'_', '-' or '.' (at most 128 characters, not starting with a symbol; no spaces or "
        "line breaks) in the file name or batch column"
    )


def dagster_name_problem(name: object, what: str) -> str | None:
    """Why ``name`` cannot name Dagster objects (``what`` says which setting), or None."""
    if is_full_match(DAGSTER_NAME, name):
        return None
    return (
        f"{what} {shorten(str(name))!r} must use only ASCII letters, digits and '_' (no "
        "spaces or line breaks): it names asset keys, partitions, sensors and ledger scopes"
    )
