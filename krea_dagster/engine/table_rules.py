"""Rules for prompt-table cells and columns that the model's JSON Schema does not state.

The catalog validator checks what Krea's schema says. A table can still be wrong in ways the
schema is silent about, and each such way has one rule here, applied to every row of every
batch (and to the builder's defaults):

- a column may not take a name the package itself writes (``RESERVED_COLUMNS``): it would
  replace a computed value (the prompt key, the request, the estimate);
- numbers are read exactly (``parse_number_text``, ``exact_float``): integers never go
  through ``float()``, and a float too large to hold a whole number exactly is refused;
- a field with no bound in the schema still has the bound Krea's service needs
  (``IMPLIED_BOUNDS``): seeds are whole numbers from 0 to 4294967295 (the widest seed range
  Krea's schemas declare), sizes in pixels and step counts are positive whole numbers;
- a prompt must have visible text (``prompt_text_problem``);
- every image reference of a prompt-file instance must be a URL Krea can fetch
  (``check_image_reference``): local paths and ``s3://`` objects are refused, and the message
  points at workflow nodes, which upload them.

Nothing here imports Dagster.
"""

import math
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from krea_dagster.api.catalog import FieldSpec, shorten

__all__ = [
    "IMPLIED_BOUNDS",
    "RESERVED_COLUMNS",
    "ImpliedBound",
    "check_image_reference",
    "exact_float",
    "image_reference_problems",
    "implied_bound_problems",
    "parse_number_text",
    "prompt_text_problem",
    "quoted",
]

#: Columns the prompts table and the manifest write themselves. A prompt table column with one
#: of these names (unless it is a request field of the model) would overwrite a computed value.
RESERVED_COLUMNS = frozenset(
    {
        "prompt_key",
        "row",
        "request_json",
        "estimated_usd",
        "batch",
        "generation",
        "job_id",
        "status",
        "uri",
        "width",
        "height",
        "sha256",
        "cost_usd",
        "error_code",
        "error_message",
        # Written by a node's steps: why a row is skipped, the files it names, a node app's
        # outputs, the step of a manifest and its version.
        "skip_reason",
        "references_json",
        "outputs",
        "step",
        "step_version",
    }
)

#: Longest numeric text read at all: no request field takes a number anywhere near this long.
MAX_NUMBER_CHARS = 40
#: Largest whole number a float holds exactly.
MAX_EXACT_FLOAT_INTEGER = 2**53
SEED_MAX = 2**32 - 1

_INTEGER_TEXT = re.compile(r"^[+-]?[0-9]+$")
_DECIMAL_TEXT = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_NON_FINITE_TEXT = frozenset(
    sign + word for sign in ("", "+", "-") for word in ("nan", "inf", "infinity")
)


def quoted(value: Any) -> str:
    """``repr`` of a value cut to a message-sized length (see ``catalog.shorten``)."""
    return repr(shorten(value if isinstance(value, str) else str(value)))


# -- numbers --------------------------------------------------------------------------------


def parse_number_text(text: str) -> tuple[int | float | None, str | None]:
    """A cell's text as an exact number: ``(value, None)``, ``(None, problem)`` or ``(None, None)``.

    ``(None, None)`` means the text is not a number at all. Integers are parsed with ``int``
    (exact at any size); decimals and exponents with ``Decimal``, so a whole value written
    ``1e3`` or ``512.0`` is the integer it denotes and only a true fraction becomes a float.
    """
    if text.lower() in _NON_FINITE_TEXT:
        return None, f"{quoted(text)} is not a finite number"
    if len(text) > MAX_NUMBER_CHARS:
        if _INTEGER_TEXT.match(text) or _DECIMAL_TEXT.match(text):
            return None, (
                f"a number of {len(text)} characters is outside every field's range "
                f"(at most {MAX_NUMBER_CHARS} characters are read)"
            )
        return None, None
    if _INTEGER_TEXT.match(text):
        return int(text), None
    if not _DECIMAL_TEXT.match(text):
        return None, None
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        return None, None
    if number.adjusted() > MAX_NUMBER_CHARS:
        return None, f"{quoted(text)} is outside every field's range"
    if number == number.to_integral_value():
        return int(number), None
    result = float(number)
    if Decimal(repr(result)) != number:
        return None, (
            f"{quoted(text)} has more significant digits than a number keeps exactly "
            f"(it would be sent as {result!r}); round it"
        )
    return result, None


def exact_float(value: float) -> tuple[int | float | None, str | None]:
    """A float cell (Parquet, or a float-typed column) as an exact number, or a problem."""
    if not math.isfinite(value):
        return None, f"{value!r} is not a finite number"
    if value.is_integer():
        if abs(value) > MAX_EXACT_FLOAT_INTEGER:
            return None, (
                f"{value!r} is a float too large to hold a whole number exactly; store the "
                "column as integers (int64) or as text"
            )
        return int(value), None
    return value, None


# -- bounds the schema leaves out -----------------------------------------------------------


@dataclass(frozen=True)
class ImpliedBound:
    """What a field needs when its schema gives no bound of its own."""

    minimum: float
    maximum: float | None
    whole: bool
    exclusive_minimum: bool
    reason: str


_POSITIVE_SIZE = ImpliedBound(1, None, True, False, "a size in pixels is a positive whole number")
_POSITIVE_COUNT = ImpliedBound(1, None, True, False, "a count is a positive whole number")

#: Applied only where the model's schema has no minimum (or, for the seed, no maximum).
IMPLIED_BOUNDS: Mapping[str, ImpliedBound] = {
    "seed": ImpliedBound(
        0,
        SEED_MAX,
        True,
        False,
        f"Krea's seeds are whole numbers from 0 to {SEED_MAX}",
    ),
    "width": _POSITIVE_SIZE,
    "height": _POSITIVE_SIZE,
    "steps": _POSITIVE_COUNT,
    "num_inference_steps": _POSITIVE_COUNT,
    "frame_num": _POSITIVE_COUNT,
    "duration": ImpliedBound(0, None, False, True, "a duration is a positive number of seconds"),
}


def implied_bound_problems(
    params: Mapping[str, Any], fields: Mapping[str, FieldSpec]
) -> Iterator[tuple[str, str, str]]:
    """``(field, rule, message)`` for every value outside the bound its schema leaves out."""
    for name, bound in IMPLIED_BOUNDS.items():
        value = params.get(name)
        spec = fields.get(name)
        if spec is None or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        has_minimum = spec.minimum is not None or spec.exclusive_minimum is not None
        has_maximum = spec.maximum is not None or spec.exclusive_maximum is not None
        hint = f"{bound.reason}; fix the value"
        shown = _shown_number(value)
        if bound.whole and not (has_minimum and has_maximum) and not float(value).is_integer():
            yield name, "type", f"{shown} is not a whole number ({hint})"
            continue
        if not has_minimum:
            low = value <= bound.minimum if bound.exclusive_minimum else value < bound.minimum
            if low:
                relation = "at most" if bound.exclusive_minimum else "below"
                yield (
                    name,
                    "minimum",
                    f"{shown} is {relation} {_shown_number(bound.minimum)} ({hint})",
                )
                continue
        if bound.maximum is not None and not has_maximum and value > bound.maximum:
            yield name, "maximum", f"{shown} is above {_shown_number(bound.maximum)} ({hint})"


def _shown_number(value: float) -> str:
    text = str(int(value)) if isinstance(value, int) else repr(value)
    return shorten(text)


# -- prompt text ----------------------------------------------------------------------------


def prompt_text_problem(text: str) -> str | None:
    """Why a prompt can never work (no visible character), or None."""
    if any(not unicodedata.category(char).startswith(("C", "Z")) for char in text):
        return None
    return (
        "the prompt has no visible character (only control characters or spaces); "
        "write the prompt text in the cell"
    )


# -- image references -----------------------------------------------------------------------

_UPLOAD_LATER = (
    "a prompt-file instance sends cells as they are, and Krea cannot read local files or cloud "
    "objects (s3://, gs://). Build the step with build_krea_workflow (its table's image "
    "columns may hold local paths and s3:// URIs: each file is uploaded once), or put a public "
    "https:// URL of the image in the cell"
)
_OBJECT_STORE_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "file", "hf"}
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|webp|gif|heic|heif|avif|bmp|tiff?)$", re.IGNORECASE)


def check_image_reference(value: str) -> str | None:
    """Why Krea cannot fetch this image reference, or None when it can.

    The one place that decides what an image cell may hold: an ``http(s)`` URL with a host, or
    a ``data:image/...`` URI. Local paths and object-store URIs are refused here with a message
    that points at workflow nodes, which upload them (``krea_dagster.engine.references``).
    """
    shown = quoted(value)
    if value != value.strip() or any(char.isspace() for char in value):
        return f"{shown} contains spaces; an image URL has none (encode them as %20)"
    if _WINDOWS_PATH.match(value) or value.startswith(("/", "./", "../", "~", "\\")):
        return f"{shown} is a local path; {_UPLOAD_LATER}"
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            return f"{shown} has no host name; write the whole URL (https://host/path)"
        return None
    if scheme == "data":
        if not value[5:].lower().startswith("image/"):
            return f"{shown} is a data URI but not an image; use data:image/png;base64,..."
        return None
    if scheme in _OBJECT_STORE_SCHEMES:
        return f"{shown} is a {scheme}:// location; {_UPLOAD_LATER}"
    if not scheme and ("/" in value or "\\" in value or _IMAGE_SUFFIX.search(value)):
        return f"{shown} is a local path; {_UPLOAD_LATER}"
    return f"{shown} is not an image URL; use an https:// URL (or a data:image/... URI)"


def _is_image_field(name: str) -> bool:
    # image_url, image_urls, character_reference_images[], style_images[].url, ...
    return name == "url" or name.endswith(("_url", "_urls", "_images"))


def image_reference_problems(params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(path, message)`` for every image reference of a request Krea cannot fetch."""
    for name, value in params.items():
        yield from _walk_references(value, name, name)


def _walk_references(value: Any, name: str, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if _is_image_field(name):
            problem = check_image_reference(value)
            if problem is not None:
                yield path, problem
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk_references(item, name, f"{path}[{index}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk_references(item, str(key), f"{path}.{key}")
