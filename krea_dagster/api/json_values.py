"""JSON values from outside: one rule for numbers, one bound for every parsed document.

Numbers reach the package from prompt cells, JSON cells, Parquet, the builder's ``defaults``
and Krea's answers, as Python ``int`` (of any size), ``float`` or ``bool``. Python's own
helpers do not treat these alike: ``math.isfinite`` and ``float()`` raise ``OverflowError`` on
an integer too large for a float, ``str()`` raises ``ValueError`` past 4300 digits, and
``True`` is an ``int``. The functions here do, so every check and every message handles an
``int``, a ``float`` and a 400-digit integer the same way:

- ``is_number``, ``is_finite_number``, ``is_whole_number``: JSON's number kinds (``bool`` is
  never a number);
- ``number_problem``: the one rule a number must pass to be sent (finite, and an integer of at
  most ``MAX_NUMBER_DIGITS`` digits: no request field takes anything near that);
- ``show_number``: a short rendering for messages, whatever the size;
- ``string_leaves``: every string of a request or template, however it nests.

Every JSON document parsed from outside (a Krea answer, a JSON cell of a prompt table) goes
through ``load_json``, which bounds its size, its nesting depth and the length of its integers,
and raises ``JSONLimitError`` (a ``ValueError``) that says which bound it broke instead of a
``RecursionError`` or a ``ValueError`` from deep inside ``json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_DIGITS",
    "JSONLimitError",
    "digit_count",
    "is_finite_number",
    "is_number",
    "is_whole_number",
    "json_depth",
    "load_json",
    "number_problem",
    "show_number",
    "string_leaves",
]

#: No request field and no Krea answer takes an integer anywhere near this long.
MAX_NUMBER_DIGITS = 40
#: Krea's answers nest a handful of levels (a job list holds jobs holding results); prompt
#: cells a few more (a list of style objects). Anything deeper is not one of them.
MAX_JSON_DEPTH = 64
# A number longer than this is shown by its length only.
_SHOWN_DIGITS = 40
_LOG10_2 = math.log10(2)


class JSONLimitError(ValueError):
    """A JSON document breaks a bound (size, depth, integer length) or is not JSON at all."""


def is_number(value: Any) -> bool:
    """Whether ``value`` is a JSON number (an int or a float, never a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number that JSON can carry: every int, a float that is neither NaN nor infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    return is_number(value)


def is_whole_number(value: Any) -> bool:
    """An int, or a finite float without a fractional part (exact for any size of int)."""
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    return is_number(value)


def digit_count(value: int) -> int:
    """Decimal digits of ``abs(value)``, without ``str()`` (which refuses very long ints)."""
    magnitude = abs(value)
    if magnitude.bit_length() <= 4000:  # str() is exact and allowed up to 4300 digits
        return len(str(magnitude))
    estimate = int(magnitude.bit_length() * _LOG10_2)  # off by at most one
    return estimate + 1 if magnitude >= 10**estimate else estimate


def show_number(value: int | float) -> str:
    """A number for a message: ``512``, ``0.25``, ``inf`` or ``an integer of 400 digits``."""
    if isinstance(value, int) and not isinstance(value, bool):
        digits = digit_count(value)
        if digits > _SHOWN_DIGITS:
            return f"an integer of {digits} digits"
        return str(value)
    whole = isinstance(value, float) and math.isfinite(value) and value.is_integer()
    if whole and abs(value) < 10**_SHOWN_DIGITS:
        return str(int(value))
    return repr(value)


def number_problem(value: Any) -> str | None:
    """Why a number cannot be sent (not finite, or an integer too long), or None.

    The one rule every number meets whatever carried it (a CSV cell, JSON inside a cell, a
    Parquet column, the defaults); bounds per field come on top of it.
    """
    if not is_number(value):
        return None
    if not is_finite_number(value):
        return f"{value!r} is not a finite number"
    if isinstance(value, int) and digit_count(value) > MAX_NUMBER_DIGITS:
        return (
            f"{show_number(value)} is outside every field's range (no field takes more than "
            f"{MAX_NUMBER_DIGITS} digits)"
        )
    return None


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


def string_leaves(value: Any) -> Iterator[str]:
    """Every string in ``value``, however its mappings, lists and tuples nest, depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from string_leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from string_leaves(item)


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_NUMBER_DIGITS:
        raise JSONLimitError(
            f"holds an integer of {digits} digits (no field takes more than {MAX_NUMBER_DIGITS})"
        )
    return int(text)


def load_json(
    data: str | bytes, *, max_bytes: int | None = None, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse a JSON document from outside, within bounds; ``JSONLimitError`` says which broke.

    ``max_bytes`` bounds the document's length (bytes, or characters for text), ``max_depth``
    how deeply it nests, and integers longer than ``MAX_NUMBER_DIGITS`` digits are refused
    while parsing (Python would otherwise spend quadratic time on them, or refuse them past
    4300 digits with an error that names no place). The error's message is a predicate
    ("nests deeper than 64 levels", "is not JSON (...)") for the caller to put after what the
    document is ("the webhook body ...").
    """
    if max_bytes is not None and len(data) > max_bytes:
        unit = "bytes" if isinstance(data, bytes) else "characters"
        raise JSONLimitError(f"has more than {max_bytes} {unit} ({len(data)})")
    try:
        value = json.loads(data, parse_int=_bounded_int)
    except RecursionError:
        raise JSONLimitError(f"nests deeper than {max_depth} levels") from None
    except JSONLimitError:
        raise
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise JSONLimitError(f"is not JSON ({str(error)[:200]})") from None
    if json_depth(value) > max_depth:
        raise JSONLimitError(f"nests deeper than {max_depth} levels")
    return value
