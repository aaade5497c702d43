"""A batch's gallery: one static HTML page with every image, its prompt, status, cost and error.

The page is written to the image store beside the batch's other files::

    <root>/<prefix>/batches/<batch>/index.html       the gallery (this module)
    <root>/<prefix>/batches/<batch>/manifest.parquet the manifest it was made from

Images are linked, not copied: the store keeps each image once under its content hash
(``<root>/<prefix>/images/ab/<sha256>.png``) and the page points at it with a path relative to
the page (``../../images/ab/<sha256>.png``), so the page works wherever the store is opened
from: a local directory in a browser, a synced copy, or a bucket served over HTTP.

No Dagster here: the page is plain HTML and CSS, no script, and every piece of text on it
(prompts are user text, error messages are Krea's) goes through ``html.escape``.
"""

import html
import io
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import pandas as pd

from krea_dagster.engine.manifest import OUTPUTS_COLUMN
from krea_dagster.engine.store import ImageStore

__all__ = [
    "GALLERY_FILE",
    "MANIFEST_FILE",
    "BatchFiles",
    "GalleryItem",
    "gallery_items",
    "relative_href",
    "render_gallery",
    "write_batch_gallery",
]

GALLERY_FILE = "index.html"
MANIFEST_FILE = "manifest.parquet"
COMPLETED = "completed"


@dataclass(frozen=True)
class GalleryItem:
    """One prompt of the batch as the gallery shows it."""

    row: int
    prompt_key: str
    prompt: str
    status: str
    href: str | None = None  # the image, relative to the page (None: no image)
    width: int | None = None
    height: int | None = None
    cost_usd: float = 0.0
    job_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    variant: str | None = None
    #: A node app's further outputs (its other jobs' images), relative to the page.
    more: tuple[str, ...] = ()


def _text(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value)


def _int(value: Any) -> int | None:
    if value is None or pd.isna(value):
        return None
    return int(value)


def gallery_items(manifest: pd.DataFrame, href: Callable[[str], str]) -> list[GalleryItem]:
    """The manifest's rows as gallery items; ``href`` turns an image URI into the page's link."""
    items = []
    for record in manifest.to_dict(orient="records"):
        uri = _text(record.get("uri"))
        cost = record.get("cost_usd")
        outputs = record.get(OUTPUTS_COLUMN)
        completed = record["status"] == COMPLETED
        more = (
            tuple(href(str(out)) for out in list(outputs)[1:])
            if completed and _listed(outputs)
            else ()
        )
        items.append(
            GalleryItem(
                row=_int(record.get("row")) or 0,  # a workflow's skipped row has none
                prompt_key=_text(record.get("prompt_key")) or "",
                prompt=_text(record.get("prompt")) or "",
                status=str(record["status"]),
                href=href(uri) if uri and record["status"] == COMPLETED else None,
                width=_int(record.get("width")),
                height=_int(record.get("height")),
                cost_usd=0.0 if cost is None or pd.isna(cost) else float(cost),
                job_id=_text(record.get("job_id")),
                error_code=_text(record.get("error_code")),
                error_message=_text(record.get("error_message")),
                variant=_text(record.get("variant")),
                more=more,
            )
        )
    return items


def _listed(value: Any) -> TypeGuard[Sequence[Any]]:
    """Whether a manifest cell holds a list of outputs (a node app's row)."""
    return value is not None and not isinstance(value, str) and hasattr(value, "__len__")


def relative_href(page_dir: str, uri: str) -> str:
    """A link from the page's folder to an image; both local paths or both URLs of one store.

    Two local paths give a relative path; URLs of the same scheme and bucket too; anything else
    (an image in another bucket) stays as given.
    """
    if "://" not in uri and "://" not in page_dir:
        return posixpath.relpath(Path(uri).as_posix(), Path(page_dir).as_posix())
    if "://" in uri and "://" in page_dir:
        uri_scheme, uri_path = uri.split("://", 1)
        page_scheme, page_path = page_dir.split("://", 1)
        same_bucket = uri_path.split("/", 1)[0] == page_path.split("/", 1)[0]
        if uri_scheme == page_scheme and same_bucket:
            return posixpath.relpath(uri_path, page_path)
    return uri


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


STYLE = """
:root { color-scheme: light; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --muted: #59636e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1f2328; background: #f6f8fa; }
header { padding: 20px 28px 12px; background: #fff; border-bottom: 1px solid #d1d9e0; }
h1 { margin: 0 0 6px; font-size: 22px; }
.summary { margin: 0; color: var(--muted); }
.summary b { color: #1f2328; }
.summary .bad { color: var(--bad); }
main { display: grid; gap: 16px; padding: 20px 28px 40px;
       grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); }
figure { margin: 0; background: #fff; border: 1px solid #d1d9e0; border-radius: 8px;
         overflow: hidden; display: flex; flex-direction: column; }
figure.failed { border-color: var(--bad); }
.frame { aspect-ratio: 1 / 1; background: #eaeef2; display: flex; align-items: center;
         justify-content: center; }
.frame img, .frame video { width: 100%; height: 100%; object-fit: contain; display: block; }
.frame .none { color: var(--bad); font-weight: 600; padding: 16px; text-align: center; }
.frame.many { display: grid; grid-template-columns: repeat(2, 1fr); gap: 2px; }
.frame.many img { height: auto; aspect-ratio: 1 / 1; }
figcaption { padding: 10px 12px 12px; display: flex; flex-direction: column; gap: 6px; }
.prompt { margin: 0; font-size: 15px; overflow-wrap: anywhere; }
.facts { margin: 0; font-size: 12.5px; color: var(--muted); display: flex; flex-wrap: wrap;
         gap: 4px 12px; }
.status { font-weight: 600; }
.status.completed { color: var(--ok); }
.status.failed, .status.cancelled, .status.image_error, .status.not_submitted { color: var(--bad); }
.status.pending, .status.unresolved { color: var(--warn); }
.error { margin: 0; font-size: 13px; color: var(--bad); overflow-wrap: anywhere; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
"""


def render_gallery(
    items: Sequence[GalleryItem],
    *,
    title: str,
    subtitle: str = "",
    cost_label: str = "est. cost",
) -> str:
    """The gallery page: a summary line, then one card per prompt in batch order."""
    total = len(items)
    completed = sum(1 for item in items if item.status == COMPLETED)
    failed = total - completed
    cost = sum(item.cost_usd for item in items)
    summary = (
        f"<b>{completed}</b> of <b>{total}</b> prompts have an image"
        + (f', <b class="bad">{failed} without</b>' if failed else "")
        + f" &middot; {_e(cost_label)} <b>${cost:.4f}</b>"
        + (f" &middot; {_e(subtitle)}" if subtitle else "")
    )
    cards = "\n".join(_card(item) for item in items)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<header><h1>{_e(title)}</h1><p class="summary">{summary}</p></header>\n'
        f'<main id="gallery">\n{cards}\n</main>\n</body>\n</html>\n'
    )


def _card(item: GalleryItem) -> str:
    failed = item.status != COMPLETED
    if item.href and item.href.lower().endswith((".mp4", ".mov", ".webm")):
        size = f' width="{item.width}" height="{item.height}"' if item.width and item.height else ""
        frame = (
            f'<video src="{_e(item.href)}" title="{_e(item.prompt)}"{size} controls muted '
            'loop playsinline preload="metadata"></video>'
        )
    elif item.href:
        size = f' width="{item.width}" height="{item.height}"' if item.width and item.height else ""
        frame = (
            f'<img src="{_e(item.href)}" alt="{_e(item.prompt)}"{size} loading="lazy" '
            'decoding="async">'
        )
    else:
        frame = f'<div class="none">no image: {_e(item.status)}</div>'
    for href in item.more:
        frame += f'<img class="more" src="{_e(href)}" alt="{_e(item.prompt)}" decoding="async">'

    facts = [
        f'<span class="status {_e(item.status)}">{_e(item.status)}</span>',
        f"<span>row {item.row}</span>",
    ]
    if item.variant:
        facts.append(f"<span>variant {_e(item.variant)}</span>")
    if item.width and item.height and not failed:
        facts.append(f"<span>{item.width}&times;{item.height}</span>")
    facts.append(f'<span class="cost">${item.cost_usd:.4f}</span>')
    if item.job_id:
        facts.append(f"<span>job <code>{_e(item.job_id)}</code></span>")
    error = ""
    if failed and (item.error_code or item.error_message):
        code = f"<code>{_e(item.error_code)}</code> " if item.error_code else ""
        error = f'<p class="error">{code}{_e(item.error_message or "")}</p>'
    return (
        f'<figure class="card{" failed" if failed else ""}" '
        f'data-prompt-key="{_e(item.prompt_key)}" data-status="{_e(item.status)}">'
        f'<div class="frame{" many" if item.more else ""}">{frame}</div>'
        f'<figcaption><p class="prompt">{_e(item.prompt)}</p>'
        f'<p class="facts">{" ".join(facts)}</p>{error}</figcaption></figure>'
    )


@dataclass(frozen=True)
class BatchFiles:
    """Where a batch's gallery page and manifest copy were written."""

    folder: str
    page: str
    manifest: str


def write_batch_gallery(
    store: ImageStore,
    prefix: str,
    batch: str,
    manifest: pd.DataFrame,
    *,
    title: str,
    subtitle: str = "",
) -> BatchFiles:
    """Write the batch's ``index.html`` and ``manifest.parquet`` beside its images."""
    folder = store.batch_folder(prefix, batch)
    folder_uri = store.uri(folder)
    items = gallery_items(manifest, lambda uri: relative_href(folder_uri, uri))
    page = render_gallery(items, title=title, subtitle=subtitle)
    buffer = io.BytesIO()
    manifest.to_parquet(buffer, index=False)
    manifest_uri = store.write_bytes(folder / MANIFEST_FILE, buffer.getvalue())
    page_uri = store.write_bytes(folder / GALLERY_FILE, page.encode("utf-8"))
    return BatchFiles(folder=folder_uri, page=page_uri, manifest=manifest_uri)
