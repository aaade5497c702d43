"""The image store: verified images under content-addressed paths, on a local disk or ``s3://``.

A file in the store is complete and verified, or absent. Images are downloaded to a local
temporary file first (streamed, hashed and verified by the client), then moved into place in
one step: ``os.replace`` on a local store, a single object PUT (which S3 makes visible only
when it is whole) on object storage. The path is derived from the content's sha256, so two
workers storing the same image write the same bytes to the same key and a re-run finds what an
earlier run stored.

Layout::

    <root>/<prefix>/images/<sha256[:2]>/<sha256>.<ext>
    <root>/<prefix>/batches/<batch>/  index.html (the gallery) and manifest.parquet

``root`` is anything universal-pathlib understands: a local directory, ``file://``,
``s3://bucket/prefix`` (credentials and endpoint from the usual AWS environment variables, or
``storage_options``).
"""

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from upath import UPath

__all__ = ["ImageStore"]

_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/webm": "webm",
}


class ImageStore:
    """Content-addressed storage for generated images.

    Args:
        root: local directory or URL (``s3://bucket/prefix``).
        storage_options: passed to fsspec (for example ``{"endpoint_url": ...}`` for a
            non-AWS S3 endpoint).
    """

    def __init__(
        self, root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
    ):
        self.root = str(root)
        self.storage_options = dict(storage_options or {})

    def __repr__(self) -> str:
        return f"ImageStore({self.root!r})"

    @property
    def is_local(self) -> bool:
        return self._path().protocol in ("", "file", "local")

    def _path(self, *parts: str) -> UPath:
        path = UPath(self.root, **self.storage_options)
        for part in parts:
            path = path / part
        return path

    def image_path(self, prefix: str, sha256: str, content_type: str) -> UPath:
        extension = _EXTENSIONS.get(content_type, "bin")
        return self._path(prefix, "images", sha256[:2], f"{sha256}.{extension}")

    def uri(self, path: UPath) -> str:
        if self.is_local:
            return str(Path(path.path).resolve())
        return str(path)

    def put(self, prefix: str, local_file: Path, sha256: str, content_type: str) -> str:
        """Move a verified local file into the store; returns its URI. Idempotent."""
        target = self.image_path(prefix, sha256, content_type)
        if self.is_local:
            destination = Path(target.path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if destination.exists() and destination.stat().st_size == local_file.stat().st_size:
                local_file.unlink(missing_ok=True)
            else:
                # Same filesystem when the temp dir lives in the store; else copy then rename.
                try:
                    os.replace(local_file, destination)
                except OSError:
                    staging = destination.with_suffix(destination.suffix + ".partial")
                    shutil.copyfile(local_file, staging)
                    os.replace(staging, destination)
                    local_file.unlink(missing_ok=True)
            return self.uri(target)
        if not (target.exists() and target.stat().st_size == local_file.stat().st_size):
            target.parent.mkdir(parents=True, exist_ok=True)
            # One PUT (multipart for big files): S3 shows the object only once it is complete.
            with local_file.open("rb") as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, length=1024 * 1024)
        local_file.unlink(missing_ok=True)
        return self.uri(target)

    def exists(self, uri: str) -> bool:
        return self.open_path(uri).exists()

    def open_path(self, uri: str) -> UPath:
        if self.is_local:
            return UPath(uri)
        return UPath(uri, **self.storage_options)

    def staging_dir(self, base: Path | None = None) -> Path:
        """A local directory for downloads in flight; inside the store when it is local, so
        the final move is a rename on the same filesystem."""
        if self.is_local:
            directory = Path(self._path(".staging").path)
        else:
            directory = (base or Path(os.environ.get("TMPDIR", "/tmp"))) / "krea-dagster-staging"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def sweep_staging(self, older_than_seconds: float = 3600.0) -> int:
        """Delete staging files a killed worker left behind; returns how many."""
        directory = self.staging_dir()
        cutoff = time.time() - older_than_seconds
        removed = 0
        for leftover in directory.glob("*.part*"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
        return removed

    def batch_uri(self, prefix: str) -> str:
        return self.uri(self._path(prefix, "images"))

    def batch_folder(self, prefix: str, batch: str) -> UPath:
        """A batch's own folder (its gallery page and manifest copy); images stay shared."""
        return self._path(prefix, "batches", batch)

    def write_bytes(self, path: UPath, data: bytes) -> str:
        """Write a small file whole or not at all (rename locally, one PUT on S3); its URI."""
        if self.is_local:
            destination = Path(path.path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            staging = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.partial")
            staging.write_bytes(data)
            os.replace(staging, destination)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as sink:
                sink.write(data)
        return self.uri(path)
