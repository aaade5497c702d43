"""Which request fields carry media (image, video, audio inputs), derived from the catalog.

A field is a media input when its schema is a string with ``format: uri`` (every image and
video input of Krea's document: ``image_url``, ``style_images[].url``, ``start_image``...), or a
string whose name says so (``image_urls`` of ``openai/gpt-image-2`` is a plain string array in
the document). Nothing here is a hand list of field names: a model added to the catalog gets
its media fields found the same way.

Paths use ``[]`` for "every item": ``image_urls[]``, ``style_images[].url``. ``find_media`` lists
the values of a concrete request as ``MediaValue(path="style_images[0].url", ...)`` and
``replace_media`` returns a copy of the request with some of them replaced (the reference
resolver uses it to put asset URLs in place of local paths).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from krea_dagster.api import catalog
from krea_dagster.api.catalog import FieldSpec, ModelSpec
from krea_dagster.api.errors import UnknownModelError

__all__ = [
    "MediaValue",
    "find_media",
    "is_data_uri",
    "media_paths",
    "replace_media",
]

# A string leaf named like a media input, for schemas that omit ``format: uri``.
_MEDIA_NAME = re.compile(r"(^|_)(urls?|uri|images?|videos?|audio|mask)\Z")

Location = tuple[str | int, ...]


@dataclass(frozen=True)
class MediaValue:
    """One media input of a request: its display path, its location, and the string given."""

    path: str
    location: Location
    value: str


def is_data_uri(value: str) -> bool:
    """Whether ``value`` is a ``data:`` URI (what zero-data-retention requests must carry)."""
    return value[:5].lower() == "data:"


def _is_media_leaf(spec: FieldSpec) -> bool:
    if "string" not in spec.types and not any(_is_media_leaf(alt) for alt in spec.any_of):
        return False
    if spec.format == "uri":
        return True
    name = spec.name.removesuffix("[]").rsplit(".", 1)[-1]
    return bool(_MEDIA_NAME.search(name)) and spec.enum is None


def _field_paths(spec: FieldSpec, path: str) -> Iterator[str]:
    if _is_media_leaf(spec):
        yield path
    if spec.items is not None:
        yield from _field_paths(spec.items, f"{path}[]")
    for name, sub in spec.properties.items():
        yield from _field_paths(sub, f"{path}.{name}")
    for alt in spec.any_of:
        if alt.properties or alt.items is not None:
            for found in _field_paths(alt, path):
                if found != path:
                    yield found


def media_paths(model: str | ModelSpec, kind: str = "image") -> tuple[str, ...]:
    """The media input paths of a model, e.g. ``("image_urls[]", "style_images[].url")``."""
    spec = model if isinstance(model, ModelSpec) else catalog.get_model(model, kind)
    found: list[str] = []
    for name, field in spec.fields.items():
        for path in _field_paths(field, name):
            if path not in found:
                found.append(path)
    return tuple(found)


def _display(location: Location) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _walk(value: Any, pattern: list[str], location: Location) -> Iterator[MediaValue]:
    if not pattern:
        if isinstance(value, str):
            yield MediaValue(_display(location), location, value)
        return
    head, rest = pattern[0], pattern[1:]
    if head == "[]":
        if isinstance(value, list | tuple):
            for index, item in enumerate(value):
                yield from _walk(item, rest, (*location, index))
    elif isinstance(value, Mapping) and head in value:
        yield from _walk(value[head], rest, (*location, head))


def _split(path: str) -> list[str]:
    return [part for part in re.split(r"(\[\])|\.", path) if part]


def _heuristic_walk(value: Any, location: Location, name: str) -> Iterator[MediaValue]:
    """Without a catalog entry: every string under a key named like a media input."""
    if isinstance(value, str):
        if name and _MEDIA_NAME.search(name):
            yield MediaValue(_display(location), location, value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _heuristic_walk(item, (*location, str(key)), str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _heuristic_walk(item, (*location, index), name)


def find_media(
    model: str | ModelSpec | None, params: Mapping[str, Any], kind: str = "image"
) -> list[MediaValue]:
    """Every media input given in ``params``, in field order.

    ``model=None`` (or a model missing from the catalog) falls back to the field names alone,
    so requests for models newer than the catalog are still covered.
    """
    paths: tuple[str, ...] | None = None
    if model is not None:
        try:
            paths = media_paths(model, kind)
        except UnknownModelError:
            paths = None
    if paths is None:
        return list(_heuristic_walk(params, (), ""))
    found: list[MediaValue] = []
    for path in paths:
        found.extend(_walk(params, _split(path), ()))
    return found


def replace_media(
    params: Mapping[str, Any],
    replacements: Mapping[Location, str] | Callable[[MediaValue], str],
    media: list[MediaValue],
) -> dict[str, Any]:
    """A deep copy of ``params`` with the media values at the given locations replaced."""

    def copy(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: copy(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [copy(item) for item in value]
        return value

    result: Any = copy(params)
    for item in media:
        new = replacements(item) if callable(replacements) else replacements.get(item.location)
        if new is None:
            continue
        target = result
        for part in item.location[:-1]:
            target = target[part]
        target[item.location[-1]] = new
    return dict(result)
