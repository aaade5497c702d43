"""Errors that become HTTP responses: each carries its status code and the ``error`` message.

Tree::

    EmulatorError                 any error answered as {"error": message}
    ├── BadRequest           400  invalid body, query, upload or header
    ├── Unauthorized         401  missing, malformed or unknown token (admin token for /_emulator)
    ├── PaymentRequired      402  insufficient API balance
    ├── NotFound             404  unknown route, model, job or asset, or another account's
    ├── TooManyRequests      429  backlog full (or an injected 429)
    └── InjectedServerError  5xx  an injected 500/502/503

:class:`DropConnection` is not an HTTP error: it tells the app to close the connection without a
response (the accept-then-drop fault).
"""

from __future__ import annotations


class EmulatorError(Exception):
    """An error answered with ``status_code`` and ``{"error": message}``."""

    status_code = 500

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code

    def to_json(self) -> dict[str, str]:
        """The documented error body."""
        return {"error": self.message}


class BadRequest(EmulatorError):
    """400: the request body, query, upload or a header is invalid."""

    status_code = 400


class Unauthorized(EmulatorError):
    """401: no valid bearer token."""

    status_code = 401


class PaymentRequired(EmulatorError):
    """402: the account balance cannot cover the job."""

    status_code = 402


class NotFound(EmulatorError):
    """404: the resource does not exist or belongs to another account."""

    status_code = 404


class TooManyRequests(EmulatorError):
    """429: the account reached its maximum number of concurrent jobs and its backlog is full."""

    status_code = 429


class InjectedServerError(EmulatorError):
    """500/502/503 injected by the ``error_5xx_rate`` fault before any state change."""


class DropConnection(Exception):
    """Close the connection without answering (the job, if any, was already created)."""
