"""Prompt sources: a directory of CSV or Parquet files, one prompt batch per file.

A file ``data/prompts/spring.csv`` is the batch ``spring``. A file with a ``batch`` column holds
several batches, one per distinct value. Batches become dynamic partitions, so a batch key must
be a plain name (letters, digits, ``_``, ``-``, ``.``); a file that breaks this is reported, not
guessed at.

Each batch has a content hash computed from its rows, so a discovery sensor can tell a changed
batch from an unchanged one without looking at modification times.
"""

import hashlib
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from upath import UPath

__all__ = ["BATCH_COLUMN", "BatchInfo", "FileScan", "PromptSource", "PromptSourceError"]

BATCH_COLUMN = "batch"
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")
BATCH_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# A file modified this recently is read again next scan: its timestamp may not yet tell a
# second write in the same tick apart (git's "racy clean" problem).
RACY_SECONDS = 2.0


class PromptSourceError(ValueError):
    """A prompt file cannot be read as a table; the message names the file and the fix."""


@dataclass(frozen=True)
class BatchInfo:
    """One batch as found in the source."""

    batch: str
    files: tuple[str, ...]
    content_hash: str
    rows: int


@dataclass(frozen=True)
class BatchProblem:
    """A file that could not become a batch, and why."""

    file: str
    message: str


@dataclass(frozen=True)
class FileScan:
    """What one read of a prompt file found, under the fingerprint it had when read.

    ``parts`` are ``(batch, content digest, rows)``; ``problems`` the messages of what is not
    usable. ``fingerprint`` is None when it cannot be trusted (no metadata, or too recent).
    """

    fingerprint: str | None
    parts: tuple[tuple[str, str, int], ...] = ()
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "parts": [list(part) for part in self.parts],
            "problems": list(self.problems),
        }

    @classmethod
    def from_json(cls, data: Any) -> "FileScan | None":
        """The record back from ``to_json``; None for anything else (it is then read again)."""
        try:
            parts = tuple((str(b), str(d), int(n)) for b, d, n in data["parts"])
            problems = tuple(str(message) for message in data["problems"])
            fingerprint = data["fingerprint"]
        except (KeyError, TypeError, ValueError):
            return None
        if fingerprint is not None and not isinstance(fingerprint, str):
            return None
        return cls(fingerprint, parts, problems)


class PromptSource:
    """A directory of prompt tables.

    Args:
        directory: local path or URL understood by universal-pathlib.
        batch_column: name of the optional column that splits one file into several batches.
    """

    def __init__(self, directory: str | Path, *, batch_column: str = BATCH_COLUMN) -> None:
        self.directory = str(directory)
        self.batch_column = batch_column

    def __repr__(self) -> str:
        return f"PromptSource({self.directory!r})"

    @property
    def path(self) -> UPath:
        return UPath(self.directory)

    def files(self) -> list[UPath]:
        root = self.path
        if not root.exists():
            return []
        return sorted(
            (
                entry
                for entry in root.iterdir()
                if entry.is_file()
                and entry.suffix.lower() in SUPPORTED_SUFFIXES
                and not entry.name.startswith(".")
            ),
            key=lambda entry: entry.name,
        )

    def _listing(self) -> list[tuple[UPath, str | None]]:
        """The prompt files (as ``files()``) with their cheap fingerprints, one listing call."""
        root = self.path
        if _is_local(root):
            return [(file, _local_fingerprint(file)) for file in self.files()]
        # fsspec caches directory listings for the life of the filesystem object (s3fs: forever
        # by default); a sensor asks every tick, so it must see the store, not the cache.
        root.fs.invalidate_cache(root.path)
        files = self.files()
        try:
            infos = {
                str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]: info
                for info in root.fs.ls(root.path, detail=True)
            }
        except (OSError, ValueError):
            infos = {}
        listing = []
        for file in files:
            info = infos.get(file.name)
            if info is None:
                try:
                    info = file.fs.info(file.path)
                except (OSError, ValueError):
                    info = None
            listing.append((file, remote_fingerprint(info) if info else None))
        return listing

    def scan(self) -> tuple[dict[str, BatchInfo], list[BatchProblem]]:
        """Every batch in the source with its content hash, and the files that are not usable."""
        return self.batches_from(self.scan_files())

    def scan_files(self, known: Mapping[str, FileScan] | None = None) -> dict[str, FileScan]:
        """What each file holds (by file name), reading only files whose fingerprint changed.

        ``known`` is the previous scan's answer: a file whose cheap fingerprint (size and
        modification time, or the object store's ETag) is the one recorded there is not opened
        again. A file modified within ``RACY_SECONDS`` of the scan gets no fingerprint, so the
        next scan reads it again: a second write in the same timestamp tick cannot hide.
        """
        known = known or {}
        scans: dict[str, FileScan] = {}
        for file, fingerprint in self._listing():
            previous = known.get(file.name)
            if fingerprint is not None and previous and previous.fingerprint == fingerprint:
                scans[file.name] = previous
            else:
                scans[file.name] = self._scan_file(file, fingerprint)
        return scans

    def _scan_file(self, file: UPath, fingerprint: str | None) -> FileScan:
        try:
            frame = read_table(file)
        except PromptSourceError as error:
            return FileScan(fingerprint, problems=(str(error),))
        parts: list[tuple[str, str, int]] = []
        problems: list[str] = []
        for batch, part in self._split(file, frame):
            if not BATCH_KEY_RE.match(batch):
                problems.append(
                    f"batch name {batch!r} is not a valid partition key: use letters, "
                    "digits, '_', '-' or '.' (at most 128 characters, not starting "
                    "with a symbol) in the file name or batch column"
                )
                continue
            parts.append((batch, _frame_digest(part), len(part)))
        return FileScan(fingerprint, tuple(parts), tuple(problems))

    def batches_from(
        self, scans: Mapping[str, FileScan]
    ) -> tuple[dict[str, BatchInfo], list[BatchProblem]]:
        """The batches (with content hashes) and the unusable files of a ``scan_files`` answer."""
        batches: dict[str, tuple[list[str], list[str], int]] = {}
        problems: list[BatchProblem] = []
        for name in sorted(scans):
            scan = scans[name]
            problems.extend(BatchProblem(name, message) for message in scan.problems)
            for batch, digest, count in scan.parts:
                files, digests, rows = batches.setdefault(batch, ([], [], 0))
                files.append(name)
                digests.append(digest)
                batches[batch] = (files, digests, rows + count)
        infos = {
            batch: BatchInfo(
                batch=batch,
                files=tuple(files),
                content_hash=hashlib.sha256("".join(digests).encode()).hexdigest()[:16],
                rows=rows,
            )
            for batch, (files, digests, rows) in sorted(batches.items())
        }
        return infos, problems

    def read_batch(self, batch: str) -> tuple[pd.DataFrame, tuple[str, ...]]:
        """The rows of one batch (in file order) and the files they came from."""
        parts: list[pd.DataFrame] = []
        origins: list[str] = []
        for file in self.files():
            frame = read_table(file)
            for name, part in self._split(file, frame):
                if name == batch:
                    parts.append(part.drop(columns=[self.batch_column], errors="ignore"))
                    origins.append(file.name)
        if not parts:
            raise PromptSourceError(
                f"batch {batch!r} is not in {self.directory}: add {batch}.csv (or rows with "
                f"{self.batch_column}={batch}) or remove the partition"
            )
        return pd.concat(parts, ignore_index=True), tuple(origins)

    def _split(self, file: UPath, frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
        if self.batch_column not in frame.columns:
            yield file.stem, frame
            return
        for value, part in frame.groupby(self.batch_column, sort=True, dropna=False):
            name = "" if pd.isna(value) else str(value).strip()
            yield name or file.stem, part.reset_index(drop=True)


def read_table(file: UPath | Path) -> pd.DataFrame:
    """Read a CSV (UTF-8) or Parquet file, every error turned into a message that says what to do.

    CSV cells are read as text and empty cells as missing, so that "NaN" typed into a cell is
    reported as a bad value instead of silently meaning "no value"; typing happens during
    validation, against the model's field types.
    """
    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            with file.open("rb") as handle:
                raw = handle.read()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as error:
                raise PromptSourceError(
                    f"{file.name}: not valid UTF-8 (byte {error.start}: {raw[error.start : error.start + 1]!r}); "
                    "save the file as UTF-8 (in Excel: 'CSV UTF-8')"
                ) from None
            import io

            return pd.read_csv(
                io.StringIO(text),
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                skipinitialspace=False,
            )
        with file.open("rb") as handle:
            return pd.read_parquet(handle)
    except PromptSourceError:
        raise
    except pd.errors.EmptyDataError:
        raise PromptSourceError(
            f"{file.name}: the file is empty; add a header row with a 'prompt' column"
        ) from None
    except pd.errors.ParserError as error:
        raise PromptSourceError(f"{file.name}: not a well-formed CSV table ({error})") from None
    except (OSError, ValueError) as error:
        raise PromptSourceError(
            f"{file.name}: cannot be read ({type(error).__name__}: {error})"
        ) from None


def _is_local(path: UPath) -> bool:
    return isinstance(path, Path) or getattr(path, "protocol", "") in ("", "file", "local")


def _local_fingerprint(file: UPath | Path) -> str | None:
    """``size:mtime_ns`` of a local file; None when it is too fresh to trust or gone."""
    try:
        stat = os.stat(str(file))
    except OSError:
        return None
    if time.time_ns() - stat.st_mtime_ns < RACY_SECONDS * 1e9:
        return None
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def remote_fingerprint(info: Mapping[str, Any]) -> str | None:
    """An object store's fingerprint of a file from its fsspec ``info``: ETag (with size) when
    the store has one, else size and modification time; None when neither is there.

    An ETag changes with the content, so it is trusted at once; a bare modification time is
    not trusted while it is less than ``RACY_SECONDS`` old.
    """
    size = info.get("size")
    for key in ("ETag", "etag", "e_tag"):
        if info.get(key):
            return f"{size}:etag:{str(info[key]).strip(chr(34))}"
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if value is None or value == "":
            continue
        seconds = _timestamp(value)
        if seconds is None:
            return f"{size}:{key}:{value}"
        if time.time() - seconds < RACY_SECONDS:
            return None
        return f"{size}:{key}:{seconds!r}"
    return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    timestamp = getattr(value, "timestamp", None)
    if callable(timestamp):
        try:
            return float(timestamp())
        except (TypeError, ValueError, OSError):
            return None
    return None


def _frame_digest(frame: pd.DataFrame) -> str:
    canonical = frame.astype(str).to_csv(index=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
