"""Prompt templates: a step's prompt and request fields rendered from a table row's columns.

A template is a ``str.format`` string over the row's columns: ``"Studio photo of {name}, {color}"``.
Placeholders are strict: a column the row does not have, or an empty cell, is a validation
error naming the row and the column, raised before anything is paid. Non-string values (lists,
dicts) are rendered element by element, so ``{"image_urls": ["{photo}"]}`` works; a value that
is exactly one placeholder keeps the cell's own type (a list cell stays a list).
"""

import hashlib
import json
import os
import string
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["TemplateError", "placeholders", "render", "render_value", "template_version"]

_FORMATTER = string.Formatter()
_MAX_SHOWN = 80


class TemplateError(ValueError):
    """A placeholder has no value in the row: names the column and why."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"column {column!r}: {reason}")
        self.column = column
        self.reason = reason


def placeholders(template: str) -> list[str]:
    """The column names a template refers to, in order (``TemplateError`` for a bad template)."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as error:
        raise TemplateError(
            "", f"the template {template[:_MAX_SHOWN]!r} is malformed: {error}"
        ) from None
    names = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or not field.replace("_", "a").replace(".", "a").isalnum():
            raise TemplateError(
                field,
                f"placeholders name a column, like {{name}}; {{{field}}} does not "
                f"(in {template[:_MAX_SHOWN]!r})",
            )
        if spec or conversion:
            raise TemplateError(field, "format specs and conversions are not supported")
        names.append(field)
    return names


def _cell(row: Mapping[str, Any], column: str) -> Any:
    if column not in row:
        known = ", ".join(sorted(map(str, row))[:20])
        raise TemplateError(column, f"the table has no such column (it has: {known})")
    value = row[column]
    if isinstance(value, np.ndarray):
        value = value.tolist()  # a Parquet list cell: a list, like any other
    if value is None or (not isinstance(value, list | tuple | dict) and pd.isna(value)):
        raise TemplateError(column, "the cell is empty; fill it or change the template")
    if isinstance(value, str) and not value.strip():
        raise TemplateError(column, "the cell is blank; fill it or change the template")
    return value


def render(template: str, row: Mapping[str, Any]) -> str:
    """The template with every placeholder replaced by the row's cell (strictly).

    A placeholder is a column's whole name: ``{a.b}`` is the column ``a.b`` and ``{0}`` the
    column ``0``, never an attribute or a position, as ``str.format`` would read them.
    """
    placeholders(template)  # refuses a malformed template, naming it
    parts: list[str] = []
    for literal, field, _spec, _conversion in _FORMATTER.parse(template):
        parts.append(literal)
        if field is not None:
            cell = _cell(row, field)
            parts.append(cell if isinstance(cell, str) else str(_plain_path(cell)))
    return "".join(parts)


def _plain_path(value: Any) -> Any:
    """A path object as its text (a table may hold ``pathlib.Path`` cells)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def render_value(value: Any, row: Mapping[str, Any]) -> Any:
    """Render a request field's template: strings, and lists or dicts of them."""
    if isinstance(value, str):
        names = placeholders(value)
        if len(names) == 1 and value == "{" + names[0] + "}":
            cell = _plain_path(_cell(row, names[0]))  # the cell itself: a list stays a list
            return list(cell) if isinstance(cell, tuple) else cell
        return render(value, row)
    if isinstance(value, list | tuple):
        return [render_value(item, row) for item in value]
    if isinstance(value, dict):
        return {key: render_value(item, row) for key, item in value.items()}
    return value


def template_version(*parts: Any) -> str:
    """A short, stable hash of a step's templates and settings (shown in the manifest)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
