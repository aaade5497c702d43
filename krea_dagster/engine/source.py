"""Prompt sources: a directory of CSV or Parquet files, one prompt batch per file.

A file ``data/prompts/spring.csv`` is the batch ``spring``. A file with a ``batch`` column holds
several batches, one per distinct value. Batches become dynamic partitions, so a batch key must
be a plain name (letters, digits, ``_``, ``-``, ``.``); a file that breaks this is reported, not
guessed at.

Each batch has a content hash computed from its rows, so a discovery sensor can tell a changed
batch from an unchanged one without looking at modification times.
"""

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from upath import UPath

__all__ = ["BATCH_COLUMN", "BatchInfo", "PromptSource", "PromptSourceError"]

BATCH_COLUMN = "batch"
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")
BATCH_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


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

    def scan(self) -> tuple[dict[str, BatchInfo], list[BatchProblem]]:
        """Every batch in the source with its content hash, and the files that are not usable."""
        batches: dict[str, tuple[list[str], list[str], int]] = {}
        problems: list[BatchProblem] = []
        for file in self.files():
            try:
                frame = read_table(file)
            except PromptSourceError as error:
                problems.append(BatchProblem(file.name, str(error)))
                continue
            for batch, part in self._split(file, frame):
                if not BATCH_KEY_RE.match(batch):
                    problems.append(
                        BatchProblem(
                            file.name,
                            f"batch name {batch!r} is not a valid partition key: use letters, "
                            "digits, '_', '-' or '.' (at most 128 characters, not starting "
                            "with a symbol) in the file name or batch column",
                        )
                    )
                    continue
                files, digests, rows = batches.setdefault(batch, ([], [], 0))
                files.append(file.name)
                digests.append(_frame_digest(part))
                batches[batch] = (files, digests, rows + len(part))
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


def _frame_digest(frame: pd.DataFrame) -> str:
    canonical = frame.astype(str).to_csv(index=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
