"""Typed records of the Krea API: jobs, job lists, assets, node apps, downloaded files.

Each record is a frozen dataclass built by one ``from_api`` classmethod, so raw
``Mapping[str, Any]`` never travels past the client. Shapes follow Krea's OpenAPI document
(``GET /jobs/{id}``, ``GET /jobs``, ``POST /assets``, ``GET /node-apps/{id}``) and stay
tolerant where Krea's own documents disagree: the failure details moved from ``result.error``
to a top-level ``error`` object, ``completed_at`` is ``null`` on fresh jobs (and absent from
the jobs ``POST /node-apps/{id}/execute`` answers), and statuses may be added later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from krea_dagster.api.catalog import shorten
from krea_dagster.api.errors import MalformedPayloadError

__all__ = [
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_ID_CHARS",
    "MAX_URL_CHARS",
    "TERMINAL_STATUSES",
    "Asset",
    "AssetList",
    "DownloadedFile",
    "Job",
    "JobError",
    "JobList",
    "JobStatus",
    "NodeApp",
    "as_aware",
    "identifier_problem",
    "parse_datetime",
]

#: Krea's ids are UUIDs (36 characters); an id of more than this is not one of Krea's.
MAX_ID_CHARS = 256
#: Result URLs are signed CDN URLs of a few hundred characters.
MAX_URL_CHARS = 16 * 1024
#: A job's error message is a sentence or two; the rest of a longer one is cut.
MAX_ERROR_MESSAGE_CHARS = 2000
# Statuses and error codes are short words (``intermediate-complete``, ``safety_filter``).
_MAX_WORD_CHARS = 100


def identifier_problem(value: object) -> str | None:
    """Why ``value`` cannot be the id of a Krea object (a job, asset, node app), or None.

    Ids go into URL paths and the ledger: one that is empty, longer than ``MAX_ID_CHARS``, or
    holds spaces or control characters is refused, whether a caller or an answer gave it.
    """
    if not isinstance(value, str) or not value:
        return "is empty" if value in ("", None) else f"is a {type(value).__name__}, not text"
    if len(value) > MAX_ID_CHARS:
        return f"has {len(value)} characters, more than any Krea id ({MAX_ID_CHARS})"
    if not value.isprintable() or any(char.isspace() for char in value):
        return f"{_short(value)!r} holds spaces or control characters"
    return None


def _short(text: str, limit: int = 60) -> str:
    return shorten(text, limit)


def _identifier(value: object, what: str) -> str:
    """An id read from an answer; MalformedPayloadError when it cannot be one."""
    text = value if isinstance(value, str) else str(value) if isinstance(value, int) else value
    if (problem := identifier_problem(text)) is not None:
        raise MalformedPayloadError(f"{what} {problem}")
    assert isinstance(text, str)
    return text


def _word(value: object, what: str) -> str:
    """A status or code from an answer: short text."""
    text = str(value)
    if len(text) > _MAX_WORD_CHARS or not text.isprintable():
        raise MalformedPayloadError(
            f"{what} {_short(text)!r} is not a status or code (at most {_MAX_WORD_CHARS} "
            "printable characters)"
        )
    return text


class JobStatus(StrEnum):
    """The status of a Krea job; an unknown future status parses and keeps its raw string."""

    BACKLOGGED = "backlogged"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    SAMPLING = "sampling"
    INTERMEDIATE_COMPLETE = "intermediate-complete"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def _missing_(cls, value: object) -> JobStatus | None:
        # A status Krea adds later must not crash a poller; it becomes a pseudo-member named
        # UNKNOWN whose value is the raw string, and it is never terminal (only the three
        # documented outcomes end a wait).
        if not isinstance(value, str) or not value:
            return None
        member = str.__new__(cls, value)
        member._name_ = "UNKNOWN"
        member._value_ = value
        return member

    @property
    def is_known(self) -> bool:
        """Whether the status is one of the nine documented values."""
        return self._name_ != "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """Whether the job can no longer change (completed, failed or cancelled)."""
        return self in TERMINAL_STATUSES


#: The only statuses after which a job never changes again.
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
)

# Python 3.11's fromisoformat accepts "Z" but at most 6 fractional digits; some servers send 9.
_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_datetime(value: object, *, what: str = "timestamp") -> datetime:
    """An aware datetime from an ISO 8601 string (naive values are taken as UTC)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()))
        except ValueError:
            raise MalformedPayloadError(
                f"{what} {_short(value)!r} is not an ISO 8601 date-time"
            ) from None
    else:
        raise MalformedPayloadError(f"{what} is missing or not a string")
    return as_aware(parsed)


def as_aware(moment: datetime) -> datetime:
    """``moment`` with a timezone: naive datetimes are taken as UTC (Krea's timestamps are UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _optional_datetime(value: object, *, what: str) -> datetime | None:
    return None if value is None or value == "" else parse_datetime(value, what=what)


@dataclass(frozen=True)
class JobError:
    """Why a job failed: Krea's ``code`` (e.g. ``safety_filter``) and human ``message``."""

    code: str | None
    message: str | None

    @classmethod
    def from_api(cls, job: Mapping[str, Any]) -> JobError | None:
        """Read ``error`` (object or string), then ``result.error``, then a failed job's ``message``."""
        found = _error_from(job.get("error"))
        if found is None and isinstance(job.get("result"), Mapping):
            found = _error_from(job["result"].get("error"))
        if found is None and job.get("status") == JobStatus.FAILED.value:
            found = _error_from(job.get("message"))
        return found


def _error_from(value: object) -> JobError | None:
    # Krea's words, shortened: they reach the ledger, the manifest, logs and the gallery.
    if isinstance(value, str) and value.strip():
        return JobError(code=None, message=_short(value.strip(), MAX_ERROR_MESSAGE_CHARS))
    if isinstance(value, Mapping):
        code, message = value.get("code"), value.get("message")
        code = _short(str(code), _MAX_WORD_CHARS) if code not in (None, "") else None
        message = (
            _short(str(message), MAX_ERROR_MESSAGE_CHARS) if message not in (None, "") else None
        )
        if code or message:
            return JobError(code=code, message=message)
    return None


@dataclass(frozen=True)
class Job:
    """One Krea job as returned by ``POST /generate/...``, ``GET /jobs/{id}`` or a webhook."""

    job_id: str
    status: JobStatus
    created_at: datetime
    completed_at: datetime | None = None
    result_urls: tuple[str, ...] = ()
    #: Set on completed LoRA-training jobs (``POST /styles/train``).
    style_id: str | None = None
    error: JobError | None = None
    #: The body as received; kept for fields this record does not model.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: object) -> Job:
        """Build a job from its JSON object; a body that is not a job raises MalformedPayloadError."""
        if not isinstance(data, Mapping):
            raise MalformedPayloadError(f"expected a Krea job object, got {type(data).__name__}")
        missing = [name for name in ("job_id", "status", "created_at") if not data.get(name)]
        if missing:
            raise MalformedPayloadError(
                f"not a Krea job: missing {', '.join(missing)} (keys present: "
                f"{', '.join(sorted(map(str, data))) or 'none'})"
            )
        status = data["status"]
        if not isinstance(status, str):
            raise MalformedPayloadError(f"job status must be a string, got {type(status).__name__}")
        result = data.get("result")
        result = result if isinstance(result, Mapping) else {}
        urls = result.get("urls") or ()
        if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
            raise MalformedPayloadError("job result.urls must be a list of strings")
        if any(len(url) > MAX_URL_CHARS for url in urls):
            raise MalformedPayloadError(
                f"a job result URL has more than {MAX_URL_CHARS} characters; not a result URL"
            )
        style_id = result.get("style_id")
        return cls(
            job_id=_identifier(data["job_id"], "job_id"),
            status=JobStatus(_word(status, "job status")),
            created_at=parse_datetime(data["created_at"], what="created_at"),
            completed_at=_optional_datetime(data.get("completed_at"), what="completed_at"),
            result_urls=tuple(urls),
            style_id=_identifier(style_id, "style_id") if style_id else None,
            error=JobError.from_api(data),
            raw=dict(data),
        )

    @property
    def is_terminal(self) -> bool:
        """Whether the job can no longer change."""
        return self.status.is_terminal

    @property
    def is_completed(self) -> bool:
        """Whether the job completed (and was billed)."""
        return self.status is JobStatus.COMPLETED

    @property
    def is_failed(self) -> bool:
        """Whether the job failed (not billed)."""
        return self.status is JobStatus.FAILED

    @property
    def is_cancelled(self) -> bool:
        """Whether the job was cancelled (not billed)."""
        return self.status is JobStatus.CANCELLED

    @property
    def is_pending(self) -> bool:
        """Whether the job may still change, including under a status unknown to this client."""
        return not self.status.is_terminal

    @property
    def dedupe_key(self) -> tuple[str, str]:
        """``(job_id, status)``: Krea may deliver a webhook twice, handle each key once."""
        return (self.job_id, self.status.value)


@dataclass(frozen=True)
class JobList:
    """One page of ``GET /jobs``: newest first; ``next_cursor`` is None on the last page."""

    items: tuple[Job, ...]
    next_cursor: str | None

    @classmethod
    def from_api(cls, data: object) -> JobList:
        """Build a page from ``{items: Job[], next_cursor: string | null}``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("items"), list):
            raise MalformedPayloadError("expected a job list object with an 'items' array")
        cursor = data.get("next_cursor")
        return cls(
            items=tuple(Job.from_api(item) for item in data["items"]),
            next_cursor=_identifier(cursor, "next_cursor") if cursor else None,
        )


@dataclass(frozen=True)
class Asset:
    """An uploaded asset (``POST /assets``); ``image_url`` is what generation inputs take."""

    id: str
    image_url: str
    uploaded_at: datetime
    width: float | None = None
    height: float | None = None
    size_bytes: int | None = None
    mime_type: str | None = None
    description: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: object) -> Asset:
        """Build an asset from its JSON object."""
        if not isinstance(data, Mapping) or not data.get("id") or not data.get("image_url"):
            raise MalformedPayloadError("not a Krea asset: 'id' and 'image_url' are required")
        size = data.get("size_bytes")
        image_url = str(data["image_url"])
        if len(image_url) > MAX_URL_CHARS:
            raise MalformedPayloadError(
                f"an asset image_url has more than {MAX_URL_CHARS} characters"
            )
        return cls(
            id=_identifier(data["id"], "asset id"),
            image_url=image_url,
            uploaded_at=parse_datetime(data.get("uploaded_at"), what="uploaded_at"),
            width=data.get("width"),
            height=data.get("height"),
            size_bytes=int(size) if isinstance(size, int | float) else None,
            mime_type=data.get("mime_type"),
            description=data.get("description"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class AssetList:
    """One page of ``GET /assets``: newest first; ``next_cursor`` is None on the last page."""

    items: tuple[Asset, ...]
    next_cursor: str | None

    @classmethod
    def from_api(cls, data: object) -> AssetList:
        """Build a page from ``{items: Asset[], next_cursor: string | null}``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("items"), list):
            raise MalformedPayloadError("expected an asset list object with an 'items' array")
        cursor = data.get("next_cursor")
        return cls(
            items=tuple(Asset.from_api(item) for item in data["items"]),
            next_cursor=_identifier(cursor, "next_cursor") if cursor else None,
        )


@dataclass(frozen=True)
class NodeApp:
    """A node-app version (``GET /node-apps/{id}``): a saved workflow run by one execute call.

    ``input_schema`` is Krea's ``input_openapi_schema`` (``{}`` when null): the flat object
    ``execute_node_app`` takes; ``output_schema`` the ``output_openapi_schema`` (None when null).
    The key mappings tie those names to the workflow's internal node keys.
    """

    id: str
    name: str
    slug: str
    description: str
    scope: str
    version: float | None
    last_version_id: str | None
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    input_key_mapping: dict[str, str]
    output_key_mapping: dict[str, str]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: object) -> NodeApp:
        """Build a node app from its JSON object; only ``id`` is required, extra fields are kept."""
        if not isinstance(data, Mapping) or not data.get("id"):
            raise MalformedPayloadError("not a Krea node app: 'id' is required")
        schemas = {}
        for name in ("input_openapi_schema", "output_openapi_schema"):
            value = data.get(name)
            if value is not None and not isinstance(value, Mapping):
                raise MalformedPayloadError(f"node app {name} must be an object or null")
            schemas[name] = dict(value) if value is not None else None
        version = data.get("version")
        last = data.get("last_version_id")
        return cls(
            id=_identifier(data["id"], "node app id"),
            name=str(data.get("name") or ""),
            slug=str(data.get("slug") or ""),
            description=str(data.get("description") or ""),
            scope=str(data.get("scope") or ""),
            version=version if isinstance(version, int | float) else None,
            last_version_id=str(last) if last else None,
            input_schema=schemas["input_openapi_schema"] or {},
            output_schema=schemas["output_openapi_schema"],
            input_key_mapping=_string_mapping(data.get("input_key_mapping")),
            output_key_mapping=_string_mapping(data.get("output_key_mapping")),
            raw=dict(data),
        )


def _string_mapping(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(key): str(item) for key, item in value.items()}


@dataclass(frozen=True)
class DownloadedFile:
    """A verified result file written atomically by ``download()``."""

    path: Path
    size: int
    sha256: str
    content_type: str
    width: int | None
    height: int | None
