"""Helpers for Krea's webhooks, which are unsigned.

Krea posts the job object to ``X-Webhook-URL`` when a job reaches a terminal status, with no
signature, no secret and possibly more than once. So:

- ``parse_webhook(raw_body)`` checks that the body is a job and builds a ``Job`` (tolerant of
  the older ``result.error`` shape) — it proves nothing about who sent it;
- ``confirm_webhook(client, raw_body)`` re-fetches ``GET /jobs/{id}`` with your token and returns
  the API's answer: the only authenticity check Krea allows. Never act on the posted body alone;
- deliveries can repeat: handle each ``job.dedupe_key`` (``(job_id, status)``) once.

Pass the raw request body (bytes or text), before any framework re-encodes it. A body nested
deeper than ``MAX_WEBHOOK_DEPTH`` (a job object is a few levels deep) or larger than
``MAX_WEBHOOK_BYTES`` is refused as malformed (``json_values.load_json``, the bound every JSON
document from outside is held to).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from krea_dagster.api.errors import MalformedPayloadError
from krea_dagster.api.json_values import JSONLimitError, load_json
from krea_dagster.api.models import Job

if TYPE_CHECKING:
    from krea_dagster.api.client import AsyncKreaClient, KreaClient

__all__ = ["aconfirm_webhook", "confirm_webhook", "parse_webhook"]

#: Deepest JSON nesting accepted; a job body is about four levels deep.
MAX_WEBHOOK_DEPTH = 32
#: Largest body accepted (a job body is a few KB).
MAX_WEBHOOK_BYTES = 1024 * 1024


def parse_webhook(raw_body: bytes | bytearray | str) -> Job:
    """The job a webhook body describes; MalformedPayloadError when it is not a Krea job."""
    if isinstance(raw_body, bytes | bytearray):
        try:
            text = bytes(raw_body).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPayloadError("webhook body is not UTF-8 text") from None
    elif isinstance(raw_body, str):
        text = raw_body
    else:
        raise TypeError(f"pass the raw webhook body as bytes or str, not {type(raw_body).__name__}")
    try:
        data = load_json(text, max_bytes=MAX_WEBHOOK_BYTES, max_depth=MAX_WEBHOOK_DEPTH)
    except JSONLimitError as error:
        raise MalformedPayloadError(f"webhook body {error}: not a Krea job") from None
    if not isinstance(data, dict):
        raise MalformedPayloadError(
            f"webhook body is a JSON {type(data).__name__}, not a Krea job object"
        )
    try:
        return Job.from_api(data)
    except MalformedPayloadError as exc:
        raise MalformedPayloadError(f"webhook body is not a Krea job: {exc}") from exc


def confirm_webhook(client: KreaClient, raw_body: bytes | bytearray | str) -> Job:
    """Parse a webhook and return the job as ``GET /jobs/{id}`` reports it (the trusted copy)."""
    return client.confirm_webhook(raw_body)


async def aconfirm_webhook(client: AsyncKreaClient, raw_body: bytes | bytearray | str) -> Job:
    """The async twin of ``confirm_webhook``."""
    return await client.confirm_webhook(raw_body)
