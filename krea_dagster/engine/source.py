"""Prompt sources: a directory of CSV or Parquet files, one prompt batch per file.

A file ``data/prompts/spring.csv`` is the batch ``spring``. A file with a ``batch`` column holds
several batches, one per distinct value. Batches become dynamic partitions, so a batch key must
be a plain name (letters, digits, ``_``, ``-``, ``.``); a file that breaks this is reported, not
guessed at.

Each batch has a content hash computed from its rows, so a discovery sensor can tell a changed
batch from an unchanged one without looking at modification times.

A CSV row with more or fewer fields than the header is refused (never shifted or padded), and
so are duplicate column names; every row keeps its place in its file (``spring.csv line 7``,
the header being line 1; ``x.parquet row 3``) so problems name it even when a ``batch`` column
splits the file. Files that are not read (``notes.txt``, a spreadsheet, a folder) are listed by
``skipped()`` with the reason.
"""

import csv
import hashlib
import io
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from upath import UPath

from krea_dagster.api.catalog import shorten
from krea_dagster.engine.names import batch_name_problem

__all__ = [
    "BATCH_COLUMN",
    "BatchInfo",
    "BatchRows",
    "FileScan",
    "PromptSource",
    "PromptSourceError",
    "remote_fingerprint",
    "skipped_summary",
]

BATCH_COLUMN = "batch"
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")
SPREADSHEET_SUFFIXES = (".xlsx", ".xls", ".xlsm", ".ods", ".numbers")
#: Most badly shaped lines one error lists (it counts the rest).
MAX_LISTED_LINES = 10
# A file modified this recently is read again next scan: its timestamp may not yet tell a
# second write in the same tick apart (git's "racy clean" problem).
RACY_SECONDS = 2.0
#: Largest CSV cell read (the csv module's default limit is 128 KiB).
MAX_CELL_CHARS = 16 * 1024 * 1024


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
    """A file that could not become a batch (or was not read at all), and why.

    ``reason`` is a short category (``"not a prompt table"``, ``"a folder"``...) by which many
    skipped files are counted in one line instead of listed one by one.
    """

    file: str
    message: str
    reason: str = ""


@dataclass(frozen=True)
class BatchRows:
    """The rows of one batch, where each came from (``spring.csv line 7``), and the files."""

    frame: pd.DataFrame
    locations: tuple[str, ...]
    files: tuple[str, ...]


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
        """The prompt files that are read, by name (see ``skipped`` for the others)."""
        return self._entries()[0]

    def skipped(self) -> list[BatchProblem]:
        """Entries of the directory that are not read as prompt tables, each with the reason."""
        return self._entries()[1]

    def _entries(self) -> tuple[list[UPath], list[BatchProblem]]:
        """One listing of the directory: the readable prompt files, and every other entry with
        why it is not read. A named pipe or a device is never opened (reading one blocks)."""
        root = self.path
        if not root.exists():
            return [], []
        files: list[UPath] = []
        skipped: list[BatchProblem] = []
        for entry in sorted(root.iterdir(), key=lambda entry: entry.name):
            name = entry.name
            reason = _skip_reason(entry) if _is_local(entry) else _remote_skip_reason(entry)
            if reason is None:
                files.append(entry)
            else:
                kind, text = reason
                skipped.append(BatchProblem(shorten(name, 120), f"skipped, {text}", kind))
        return files, skipped

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
            if (problem := batch_name_problem(batch)) is not None:
                problems.append(problem)
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
            problems.extend(BatchProblem(shorten(name, 120), message) for message in scan.problems)
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
        rows = self.read_batch_rows(batch)
        return rows.frame, rows.files

    def read_batch_rows(self, batch: str) -> BatchRows:
        """The rows of one batch, each with its place in its file, and the files.

        The batch name is checked by the rule discovery applies, so a partition added by hand
        cannot bypass it.
        """
        if (problem := batch_name_problem(batch)) is not None:
            raise PromptSourceError(
                f"{problem}; rename the file (or the batch column's value) and add that "
                "partition instead"
            )
        parts: list[pd.DataFrame] = []
        origins: list[str] = []
        locations: list[str] = []
        for file in self.files():
            frame = read_table(file)
            unit = "line" if file.suffix.lower() == ".csv" else "row"
            for name, part in self._split(file, frame):
                if name == batch:
                    parts.append(part.drop(columns=[self.batch_column], errors="ignore"))
                    origins.append(file.name)
                    locations.extend(f"{file.name} {unit} {number}" for number in part.index)
        if not parts:
            for entry in self.skipped():
                if Path(entry.file).stem == batch and entry.reason not in ("", "hidden"):
                    raise PromptSourceError(f"batch {batch!r}: {entry.file}: {entry.message}")
            raise PromptSourceError(
                f"batch {batch!r} is not in {self.directory}: add {batch}.csv (or rows with "
                f"{self.batch_column}={batch}) or remove the partition"
            )
        return BatchRows(pd.concat(parts, ignore_index=True), tuple(locations), tuple(origins))

    def _split(self, file: UPath, frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
        """The batches of one file; each part keeps the file's line numbers as its index."""
        if self.batch_column not in frame.columns:
            yield file.stem, frame
            return
        for value, part in frame.groupby(self.batch_column, sort=True, dropna=False):
            name = "" if _is_missing(value) else str(value).strip()
            yield name or file.stem, part


_NOT_A_TABLE = (
    f"not a prompt table: only {', '.join(SUPPORTED_SUFFIXES)} files are read; rename it if it "
    "is a CSV table, or move it out of the folder"
)
_SPREADSHEET = (
    "a spreadsheet: not read; save it as 'CSV UTF-8' (or Parquet) in this folder to use it"
)
_FOLDER = "a folder: sub-folders are not read; move its files up to use them"
_HIDDEN = "a hidden file (its name starts with '.'): not read"


def _by_name(name: str) -> tuple[str, str] | None:
    """Why a regular file is not read, judging by its name alone (None: it is a prompt file)."""
    suffix = Path(name).suffix.lower()
    if name.startswith("."):
        return "hidden", _HIDDEN
    if suffix in SUPPORTED_SUFFIXES:
        return None
    if suffix in SPREADSHEET_SUFFIXES:
        return "a spreadsheet", _SPREADSHEET
    return "not a prompt table", _NOT_A_TABLE


def _skip_reason(entry: UPath | Path) -> tuple[str, str] | None:
    """Why a local directory entry is not read, as ``(category, text)``; None to read it.

    Only ``lstat``/``stat`` look at the entry: a FIFO or a device is never opened, and a
    prompt file is opened only to prove it can be read.
    """
    path = str(entry)
    try:
        link = os.lstat(path)
    except OSError as error:
        return "cannot be read", f"cannot be read ({error.strerror or error}); check the entry"
    try:
        info = os.stat(path)
    except OSError as error:
        if stat.S_ISLNK(link.st_mode):
            target = shorten(os.readlink(path), 120)
            return (
                "a broken symbolic link",
                f"a broken symbolic link (its target {target!r} "
                f"{'does not exist' if isinstance(error, FileNotFoundError) else 'cannot be reached'}); "
                "fix or remove the link",
            )
        return "cannot be read", f"cannot be read ({error.strerror or error}); check the entry"
    if stat.S_ISDIR(info.st_mode):
        return "a folder", _FOLDER
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a named pipe (FIFO)"
            if stat.S_ISFIFO(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a device"
        )
        return (
            "not a regular file",
            f"{kind}, not a regular file: never opened (reading it could block the sensor); "
            "write the prompt table as an ordinary file",
        )
    if (by_name := _by_name(entry.name)) is not None:
        return by_name
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        return (
            "cannot be read",
            f"cannot be read ({error.strerror or type(error).__name__}); give the user that "
            "runs Dagster read access to it, or move it out of the folder",
        )
    return None


def _remote_skip_reason(entry: UPath) -> tuple[str, str] | None:
    """Why an object-store entry is not read (a prefix is a folder); None to read it."""
    if entry.is_dir():
        return "a folder", _FOLDER
    return _by_name(entry.name)


def skipped_summary(skipped: Sequence[BatchProblem], *, listed: int = 10, examples: int = 3) -> str:
    """One line for any number of skipped entries.

    Up to ``listed`` entries are named each with its reason; beyond that they are counted by
    reason with the first few names, so 3,000 photos dropped in the prompt folder make one
    short line, not 3,000 warnings.
    """
    if len(skipped) <= listed:
        return "; ".join(f"{entry.file}: {entry.message}" for entry in skipped)
    groups: dict[str, list[BatchProblem]] = {}
    for entry in skipped:
        groups.setdefault(entry.reason or entry.message, []).append(entry)
    parts = []
    for entries in groups.values():
        names = ", ".join(repr(entry.file) for entry in entries[:examples])
        more = f" and {len(entries) - examples} more" if len(entries) > examples else ""
        message = entries[0].message.removeprefix("skipped, ")
        parts.append(f"{len(entries)} x {message} ({names}{more})")
    return f"{len(skipped)} entries skipped: " + "; ".join(parts)


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def read_table(file: UPath | Path) -> pd.DataFrame:
    """Read a CSV (UTF-8) or Parquet file, every error turned into a message that says what to do.

    CSV cells are read as text and empty cells as missing, so that "NaN" typed into a cell is
    reported as a bad value instead of silently meaning "no value"; typing happens during
    validation, against the model's field types. The index is each row's place in the file:
    its line for CSV (the header is line 1; a quoted cell may span lines, the row's first line
    counts), its 1-based row for Parquet.
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
            return _read_csv_text(text, file.name)
        with file.open("rb") as handle:
            frame = pd.read_parquet(handle)
        return _index_as_columns(frame, file.name)
    except PromptSourceError:
        raise
    except (OSError, ValueError) as error:
        detail = shorten(f"{type(error).__name__}: {error}", 300)
        raise PromptSourceError(f"{file.name}: cannot be read ({detail})") from None


def _index_as_columns(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """A Parquet table with its named index levels as ordinary columns, indexed by row.

    pandas writes a named index (``df.set_index("batch").to_parquet(...)``) as index metadata,
    not as a column: dropping it would lose the ``batch`` split, or any other column, silently.
    An unnamed index is row numbering and is dropped.
    """
    named = [level for level in frame.index.names if level is not None]
    if named:
        clash = [str(level) for level in named if level in frame.columns]
        if clash:
            raise PromptSourceError(
                f"{name}: {shorten(clash[0])!r} is both an index level and a column; save the "
                "table with df.reset_index() (or index=False) so each column appears once"
            )
        frame = frame.reset_index(level=named)
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


@contextmanager
def _csv_cell_limit(limit: int) -> Iterator[None]:
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv_text(text: str, name: str) -> pd.DataFrame:
    """A CSV table whose every row has exactly the header's fields, indexed by file line."""
    records: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    bad: list[str] = []
    bad_count = 0
    repeated: list[int] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    with _csv_cell_limit(MAX_CELL_CHARS):
        try:
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                if not fields:
                    continue  # a blank line
                if header is None:
                    header = fields
                    header_line = start
                    continue
                if len(fields) != len(header):
                    bad_count += 1
                    if len(bad) < MAX_LISTED_LINES:
                        bad.append(
                            f"line {start} has {len(fields)} field(s), the header "
                            f"(line {header_line}) has {len(header)}"
                        )
                    continue
                if _repeats_header(fields, header):
                    repeated.append(start)
                    continue
                records.append(fields)
                lines.append(start)
        except csv.Error as error:
            raise PromptSourceError(
                f"{name}: not a well-formed CSV table at line {reader.line_num} "
                f"({shorten(str(error), 200)}); check the quotes around that line (a cell "
                'holding a quote is written "a ""quoted"" word")'
            ) from None
    if header is None:
        raise PromptSourceError(
            f"{name}: the file is empty; add a header row with a 'prompt' column"
        )
    if bad_count:
        more = f"; and {bad_count - len(bad)} more line(s)" if bad_count > len(bad) else ""
        raise PromptSourceError(
            f"{name}: {bad_count} row(s) do not have as many fields as the header: "
            + "; ".join(bad)
            + more
            + '. Nothing of the file is used: quote cells that contain commas ("a, b"), and '
            "give every row one field per column (an empty cell is fine: a,,c)"
        )
    if repeated:
        shown = ", ".join(str(line) for line in repeated[:MAX_LISTED_LINES])
        more = (
            f" and {len(repeated) - MAX_LISTED_LINES} more"
            if len(repeated) > MAX_LISTED_LINES
            else ""
        )
        raise PromptSourceError(
            f"{name}: line(s) {shown}{more} repeat the header (line {header_line}): two CSV "
            "files pasted together? Nothing of the file is used: delete the repeated header "
            "line(s), and check that the rows after them have the same columns"
        )
    seen: dict[str, int] = {}
    for position, column in enumerate(header, start=1):
        if column and column in seen:
            raise PromptSourceError(
                f"{name}: column {shorten(column)!r} appears twice in the header (columns "
                f"{seen[column]} and {position}); rename or remove one"
            )
        seen[column] = position
    frame = pd.DataFrame(records, columns=range(len(header)), index=lines, dtype=object)
    frame = frame.where(frame != "", None)
    keep = []
    for position, column in enumerate(header):
        if column.strip():
            keep.append(position)
            continue
        values = frame[position].dropna()
        if not values.empty:
            raise PromptSourceError(
                f"{name}: column {position + 1} has no name in the header but holds values "
                f"(first at line {values.index[0]}); name it or delete it"
            )
    frame = frame[keep]
    frame.columns = [header[position] for position in keep]
    return frame


def _repeats_header(fields: list[str], header: list[str]) -> bool:
    """Whether a data row is a header line: the header's names again (case and spaces aside),
    or a prompt cell holding the word ``prompt`` under a ``prompt`` column (a second file's
    header, pasted below the first one's rows, whatever its other columns)."""
    cells = [field.strip().lower() for field in fields]
    names = [column.strip().lower() for column in header]
    if cells == names:
        return True
    return any(
        name == "prompt" and cell == "prompt" for name, cell in zip(names, cells, strict=True)
    )


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
