"""Keep the Krea token out of logs.

The client never logs headers or bodies in the first place; this filter is the second line of
defence for everything else that logs on the ``krea_dagster`` loggers (a debug line someone adds
later, an exception message quoting a header). It redacts ``Authorization`` values, anything
after ``Bearer``, strings shaped like a Krea ``uuid:secret`` token, and the exact tokens of the
clients created in this process.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = [
    "REDACTED",
    "SecretRedactingFilter",
    "install_redaction",
    "redact",
    "register_secret",
]

REDACTED = "[REDACTED]"

_PATTERNS = (
    # "Authorization: Bearer x", "'authorization': 'x'", "authorization=x"
    re.compile(
        r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?!\[REDACTED\])(?:bearer\s+)?[^\s'\",}\]]+"
    ),
    re.compile(r"(?i)(bearer\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=:\-]+"),
    # Krea tokens are "<uuid>:<secret>".
    re.compile(
        r"()\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
        r":[A-Za-z0-9._~+/=\-]{6,}"
    ),
)

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(secret: str) -> None:
    """Redact this exact string from every record the filter sees (clients register tokens)."""
    if len(secret) >= 6:  # a very short "secret" would redact ordinary words
        with _lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """``text`` with tokens and authorization values replaced by ``[REDACTED]``."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + REDACTED, text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class SecretRedactingFilter(logging.Filter):
    """A logging filter that rewrites a record's message when it contains a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the handler's problem, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True

    def __repr__(self) -> str:
        return "SecretRedactingFilter()"


_FILTER = SecretRedactingFilter()


def install_redaction(*logger_names: str) -> None:
    """Attach the filter to ``krea_dagster`` and ``krea_dagster.api`` (and any names given).

    Logger filters only see records logged on that very logger (not ones propagated from
    children), so each logger this package writes to gets its own reference.
    """
    for name in ("krea_dagster", "krea_dagster.api", *logger_names):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
