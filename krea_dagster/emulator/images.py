"""Result files: deterministic PNG images of the requested size (videos: see ``video.py``).

Size rule (Krea documents none for the emulator to copy):

1. ``width``/``height`` when given, rounded to integers (a missing one of the pair falls back to
   the model default, else to the other side);
2. else ``aspect_ratio`` and/or ``resolution``: the long side is 1024, 2048 or 4096 pixels for
   ``1K``, ``2K``, ``4K`` (the model default resolution, else ``1K``), the short side follows
   the ratio (``1:1`` when absent) rounded to a multiple of 8; a video resolution such as
   ``720p`` fixes the short side instead;
3. else the model's default width/height;
4. else 1024 x 1024.

Images larger than :data:`MAX_PIXELS` (the enhance models accept up to 32000 x 32000) are scaled
down proportionally to fit, to keep the emulator's memory bounded.

Rendering is deterministic in (prompt, seed, width, height, inputs) and visibly different per
prompt and per input file (``inputs`` is the job's input key from ``inputs.render_key``: each
media field with the SHA-256 of what it carried, so the same prompt with another reference
image gives other pixels); the PNG also carries the key in a ``krea-emulator-inputs`` text
chunk, so a test can read which inputs reached the job from the downloaded file:
a palette and a few shapes drawn from a SHA-256 of the inputs on a small canvas, upscaled with
NEAREST, with the prompt written in a bar at the top. A palette ("P" mode) PNG at
``compress_level=1`` keeps a 1024 x 1024 image at about 6 ms and 10 KB; recent renders are
cached.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from collections import OrderedDict
from typing import Any

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from krea_dagster.emulator.catalog import ModelSpec

DEFAULT_SIZE = (1024, 1024)
LONG_SIDE_BY_RESOLUTION = {"1K": 1024, "2K": 2048, "4K": 4096}
MAX_PIXELS = 64 * 1024 * 1024
SMALL_CANVAS = 64  # long side of the canvas drawn before the NEAREST upscale
CACHE_BYTES = 64 * 1024 * 1024
TEXT_BAR_HEIGHT = 14


def _ratio(text: Any) -> float:
    try:
        left, right = str(text).split(":")
        value = float(left) / float(right)
    except (ValueError, ZeroDivisionError):
        return 1.0
    return value if value > 0 else 1.0


def _round8(value: float) -> int:
    return max(8, round(value / 8) * 8)


def _from_ratio(ratio: float, resolution: str) -> tuple[int, int]:
    if resolution.endswith("p") and resolution[:-1].isdigit():
        short = int(resolution[:-1])
        long = _round8(short * max(ratio, 1 / ratio))
        return (long, short) if ratio >= 1 else (short, long)
    long = LONG_SIDE_BY_RESOLUTION.get(resolution, DEFAULT_SIZE[0])
    short = _round8(long * min(ratio, 1 / ratio))
    return (long, short) if ratio >= 1 else (short, long)


def _fit(width: int, height: int) -> tuple[int, int]:
    width, height = max(1, width), max(1, height)
    if width * height <= MAX_PIXELS:
        return width, height
    scale = math.sqrt(MAX_PIXELS / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def output_size(spec: ModelSpec, body: dict[str, Any]) -> tuple[int, int]:
    """Pixel size of the result for a validated request (see the module docstring)."""
    width: Any = body.get("width")
    height: Any = body.get("height")
    if isinstance(width, int | float) or isinstance(height, int | float):
        width = width if width is not None else spec.default("width") or height
        height = height if height is not None else spec.default("height") or width
        return _fit(round(float(width)), round(float(height)))
    aspect, resolution = body.get("aspect_ratio"), body.get("resolution")
    if aspect is not None or resolution is not None:
        resolution = resolution or spec.default("resolution") or "1K"
        return _fit(*_from_ratio(_ratio(aspect or "1:1"), str(resolution)))
    default_w, default_h = spec.default("width"), spec.default("height")
    if isinstance(default_w, int | float) and isinstance(default_h, int | float):
        return _fit(round(default_w), round(default_h))
    return DEFAULT_SIZE


#: The PNG text chunk that names the inputs a result was rendered from.
INPUTS_TEXT_KEY = "krea-emulator-inputs"


def _digest(prompt: str, seed: Any, width: int, height: int, inputs: str = "") -> bytes:
    extra = f"\x00{inputs}" if inputs else ""  # no inputs: the same pixels as before
    return hashlib.sha256(f"{prompt}\x00{seed}\x00{width}x{height}{extra}".encode()).digest()


def _draw(prompt: str, seed: Any, width: int, height: int, inputs: str = "") -> Image.Image:
    digest = _digest(prompt, seed, width, height, inputs)
    block = max(1, math.ceil(max(width, height) / SMALL_CANVAS))
    small_w, small_h = math.ceil(width / block), math.ceil(height / block)
    canvas = Image.new("P", (small_w, small_h), 0)
    # Six colours from the hash, then black and white for the text bar.
    canvas.putpalette([*digest[:18], 0, 0, 0, 255, 255, 255])
    pen = ImageDraw.Draw(canvas)
    for shape in range(5):
        b = digest[18 + shape * 2 : 20 + shape * 2] + digest[shape * 3 : shape * 3 + 3]
        x0, y0 = b[0] * small_w // 256, b[1] * small_h // 256
        x1 = x0 + 1 + b[2] * small_w // 384
        y1 = y0 + 1 + b[3] * small_h // 384
        draw = pen.ellipse if b[4] & 1 else pen.rectangle
        draw((x0, y0, x1, y1), fill=1 + shape)
    image = canvas.resize((width, height), Image.Resampling.NEAREST)
    if width >= 64 and height >= 2 * TEXT_BAR_HEIGHT:
        pen = ImageDraw.Draw(image)
        pen.rectangle((0, 0, width, TEXT_BAR_HEIGHT), fill=6)
        label = f"{prompt} | {width}x{height}" + (f" | seed {seed}" if seed is not None else "")
        pen.text((3, 2), label[: max(8, width // 6)], fill=7)
    return image


def render_png(prompt: str, seed: Any, width: int, height: int, inputs: str = "") -> bytes:
    """PNG bytes of the deterministic result image (``inputs``: the job's input key)."""
    buffer = io.BytesIO()
    info = PngInfo()
    if inputs:
        info.add_text(INPUTS_TEXT_KEY, inputs)
    _draw(prompt, seed, width, height, inputs).save(buffer, "PNG", compress_level=1, pnginfo=info)
    return buffer.getvalue()


class RenderCache:
    """A thread-safe LRU of rendered files, bounded in bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def png(self, prompt: str, seed: Any, width: int, height: int, inputs: str = "") -> bytes:
        """The PNG for these inputs, rendered once while it stays in the cache."""
        key = ("png", prompt, str(seed), width, height, inputs)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = render_png(prompt, seed, width, height, inputs)
        with self._lock:
            if key not in self._items:
                self._items[key] = data
                self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)
        return data
