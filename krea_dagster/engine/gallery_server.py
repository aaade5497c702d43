"""Serve local image stores over HTTP on loopback, so gallery pages open from the Dagster UI.

A batch's gallery page is a file in the store (``<root>/<prefix>/batches/<batch>/index.html``).
The Dagster UI is a web page, and browsers refuse to open ``file://`` links from a web page
("Not allowed to load local resource"), so a local store needs an HTTP address. This server
gives one: each instance's folder ``<root>/<prefix>`` is served at ``/<prefix>/``, read only, on
127.0.0.1, and ``/`` lists every batch's gallery. An instance built with
``store_url="http://127.0.0.1:<port>"`` then links its gallery to this server
(``metadata.served_url`` computes the same paths). ``krea-dagster gallery`` runs it.

Only the instances' own folders are served (never the rest of the store root, where a ledger
may live), and only GET and HEAD are answered.
"""

import html
import http.server
import os
import threading
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = ["GalleryServer", "gallery_pages"]

LOOPBACK = "127.0.0.1"


def gallery_pages(roots: Mapping[str, Path]) -> dict[str, list[str]]:
    """The batches with a gallery page, by prefix (``<root>/<prefix>/batches/*/index.html``)."""
    pages: dict[str, list[str]] = {}
    for prefix, root in sorted(roots.items()):
        folder = Path(root) / prefix / "batches"
        batches = (
            sorted(p.parent.name for p in folder.glob("*/index.html")) if folder.is_dir() else []
        )
        pages[prefix] = batches
    return pages


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``/<prefix>/...`` from ``<root>/<prefix>/...`` and an index at ``/``."""

    def __init__(self, *args: Any, roots: Mapping[str, Path], **kwargs: Any) -> None:
        self.roots = roots
        super().__init__(*args, directory=os.devnull, **kwargs)

    def translate_path(self, path: str) -> str:
        # The first segment picks the instance; SimpleHTTPRequestHandler resolves the rest
        # (normalizing '..' away) below that instance's own folder, <root>/<prefix>, so
        # nothing beside it in the store root (a ledger, another instance) is reachable.
        prefix, _, rest = unquote(urlsplit(path).path).lstrip("/").partition("/")
        root = self.roots.get(prefix)
        if root is None or not prefix:
            return os.devnull + "/missing"  # a path that never exists: 404
        self.directory = str(root / prefix)
        return super().translate_path("/" + quote(rest))

    def do_GET(self) -> None:
        if urlsplit(self.path).path in ("", "/"):
            self._index()
            return
        super().do_GET()

    def _index(self) -> None:
        items = []
        for prefix, batches in gallery_pages(self.roots).items():
            links = "".join(
                f'<li><a href="/{quote(prefix)}/batches/{quote(batch)}/index.html">'
                f"{html.escape(prefix)} / {html.escape(batch)}</a></li>"
                for batch in batches
            )
            items.append(
                f"<h2>{html.escape(prefix)}</h2><ul>{links or '<li>no gallery yet</li>'}</ul>"
            )
        body = (
            "<!doctype html><meta charset='utf-8'><title>krea-dagster galleries</title>"
            f"<h1>krea-dagster galleries</h1>{''.join(items)}"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per image would drown the terminal


class GalleryServer:
    """A read-only HTTP server of instances' store folders on loopback.

    Args:
        roots: the store root of each instance, by prefix (local folders).
        port: the port to listen on (0 picks a free one; ``url`` says which).
    """

    def __init__(self, roots: Mapping[str, str | Path], *, port: int = 0) -> None:
        self.roots = {prefix: Path(root).resolve() for prefix, root in roots.items()}
        handler = partial(_Handler, roots=self.roots)
        self._server = http.server.ThreadingHTTPServer((LOOPBACK, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()

    @property
    def url(self) -> str:
        """The server's base URL: the ``store_url`` to give the instances it serves."""
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def page_url(self, prefix: str, batch: str) -> str:
        """Where batch ``batch`` of instance ``prefix`` opens."""
        return f"{self.url}/{quote(prefix)}/batches/{quote(batch)}/index.html"

    def serve_forever(self) -> None:
        """Serve until ``close()`` from another thread (or Ctrl-C in the caller)."""
        self._serving.set()
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._serving.clear()

    def start(self) -> "GalleryServer":
        """Serve from a background thread (tests, scripts)."""
        self._serving.set()  # a close() before the thread runs still stops it
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (from any thread) and free the port."""
        if self._serving.is_set():
            self._server.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> "GalleryServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
