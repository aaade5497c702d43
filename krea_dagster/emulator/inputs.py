"""The media inputs of a job: found from the model's schema, identified by content.

A request's media inputs are the string values at schema positions with ``format: uri`` (and
string arrays named like media, such as gpt-image-2's ``image_urls``), walked through
``properties``, ``items``, ``anyOf`` and ``oneOf``. Each becomes one record of the job::

    {"field": "style_images[0].url", "kind": "asset", "sha256": "...", "asset_id": "...",
     "size_bytes": 1234}

``kind`` is ``asset`` (an upload of this emulator, identified by the SHA-256 of its bytes),
``result`` (the result file of an earlier completed job of this emulator, with its ``job_id``:
how a chained step shows where its input came from), ``data`` (a ``data:`` URI, by the hash
of its decoded bytes) or ``url`` (any other URL, by the hash of the URL string: the emulator
does not fetch the internet). CDN URLs need no token, so any account may use them; one that
names nothing the CDN would serve (a deleted asset, a job not completed, a wrong key) is
refused with 422 "Input file rejected", as Krea refuses inputs it cannot fetch, and a job
accepted while its asset existed fails when it starts processing if the asset was deleted
meanwhile (``fetch_refusal``). With ``X-Api-Zero-Data-Retention: 1`` any media input that is
not a ``data:`` URI is a 422 (Krea's ZDR rule, krea-api.md section 3). Results are rendered
from the prompt *and* these hashes, so a test can tell which inputs reached the job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from krea_dagster.emulator import lifecycle, views
from krea_dagster.emulator.errors import EmulatorError
from krea_dagster.emulator.lifecycle import JobStatus

if TYPE_CHECKING:
    from krea_dagster.emulator.records import Job
    from krea_dagster.emulator.state import EmulatorState

_MEDIA_NAME = re.compile(r"(^|_)(urls?|uri|images?|videos?|audio|mask)\Z")


class InputRejected(EmulatorError):
    """422: an input file the emulator cannot fetch."""

    status_code = 422


def _is_media(schema: dict[str, Any], name: str) -> bool:
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or ())
    if "string" not in kinds or "enum" in schema:
        return False
    return schema.get("format") == "uri" or bool(_MEDIA_NAME.search(name))


def _walk(schema: Any, value: Any, name: str, path: str) -> Iterator[tuple[str, str]]:
    if not isinstance(schema, dict):
        return
    if isinstance(value, str) and _is_media(schema, name):
        yield path, value
        return
    for alternative in (*schema.get("anyOf", ()), *schema.get("oneOf", ())):
        if isinstance(value, dict | list):
            yield from _walk(alternative, value, name, path)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _walk(schema["items"], item, name, f"{path}[{index}]")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                yield from _walk(sub, value[key], key, f"{path}.{key}" if path else key)


def media_values(schema: dict[str, Any], body: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field path, value)`` of every media input of a validated body, without repeats."""
    found: list[tuple[str, str]] = []
    for item in _walk(schema, body, "", ""):
        if item not in found:
            found.append(item)
    return found


def require_data_uris(schema: dict[str, Any], body: dict[str, Any]) -> None:
    """422 unless every media input is a ``data:`` URI (``X-Api-Zero-Data-Retention: 1``)."""
    others = [path for path, value in media_values(schema, body) if value[:5].lower() != "data:"]
    if others:
        raise InputRejected(
            "Zero data retention requires all media inputs to be base64 data: URIs; not a data "
            f"URI: {', '.join(others)}"
        )


def _data_bytes(value: str) -> bytes:
    header, _, payload = value.partition(",")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InputRejected("Input file rejected: the data: URI is not valid base64") from None
    return unquote(payload).encode("latin-1", errors="replace")


def describe(
    state: EmulatorState, schema: dict[str, Any], body: dict[str, Any]
) -> list[dict[str, Any]]:
    """The input records of a job (422 for an asset URL of this emulator that is gone)."""
    prefix = f"{state.cdn_url}/assets/"
    results = f"{state.cdn_url}/results/"
    records: list[dict[str, Any]] = []
    for path, value in media_values(schema, body):
        record: dict[str, Any] = {"field": path}
        if value.startswith(results):
            job = state.jobs.get(value[len(results) :].split("/")[0])
            if (
                job is None
                or job.status is not JobStatus.COMPLETED
                or value.split("?")[0] != views.result_url(job, state.cdn_url)
            ):
                raise InputRejected(f"Input file rejected: {path}: no such result {value!r}")
            record.update(
                kind="result", sha256=hashlib.sha256(value.encode()).hexdigest(), job_id=job.id
            )
        elif value.startswith(prefix):
            name = value[len(prefix) :].split("?")[0]
            asset = state.assets.get(name.split(".")[0])
            if asset is None or asset.filename != name:
                raise InputRejected(f"Input file rejected: {path}: no such asset {value!r}")
            record.update(
                kind="asset",
                sha256=hashlib.sha256(asset.data).hexdigest(),
                asset_id=asset.id,
                size_bytes=asset.size_bytes,
            )
        elif value[:5].lower() == "data:":
            data = _data_bytes(value)
            record.update(
                kind="data", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
            )
        else:
            record.update(kind="url", sha256=hashlib.sha256(value.encode()).hexdigest(), url=value)
        records.append(record)
    return records


#: ``error.code`` of a job whose input file was gone when it started processing: Krea documents
#: none (its 422 for the same cause says "Input file rejected"), so a permanent code is used.
INPUT_REJECTED_CODE = "invalid_request"


def fetch_refusal(state: EmulatorState, job: Job, phase: int) -> tuple[str, str] | None:
    """The ``(code, message)`` a job fails with on entering ``phase``, where it fetches its
    inputs (``lifecycle.FETCH``), when an uploaded asset it names was deleted; else None."""
    if phase >= len(lifecycle.PHASES) or lifecycle.PHASES[phase] is not lifecycle.FETCH:
        return None
    gone = [
        record
        for record in job.inputs
        if record.get("kind") == "asset" and record.get("asset_id") not in state.assets
    ]
    if not gone:
        return None
    names = ", ".join(f"{record['field']} (asset {record['asset_id']})" for record in gone)
    message = f"Input file rejected: {names}: the asset was deleted before the job fetched it"
    return INPUT_REJECTED_CODE, message


def render_key(inputs: list[dict[str, Any]]) -> str:
    """The part of a result's identity that comes from its inputs (field and content hash)."""
    return ",".join(f"{record['field']}={record['sha256']}" for record in inputs)
