"""Where relative paths of an instance (prompts, image store, SQLite ledger) point: the root.

One rule, whichever process loads the code (the webserver's code server, the daemon, a run
worker started in another directory): a relative path is resolved against the **project root**,
never against the current directory and never against a package's ``defs/`` folder.

The project root is, in this order:

1. ``$KREA_DAGSTER_ROOT`` when set (a deployment whose code is read-only or installed as a
   package points it at a data directory);
2. the ``root`` passed explicitly (``build_krea_image_assets(root=...)``; the YAML component
   passes its ``dg`` project's root, the folder holding its ``pyproject.toml``);
3. for ``build_krea_image_assets`` called from a file: the nearest folder above that file
   holding a ``pyproject.toml`` (``setup.py``, ``setup.cfg``), else the file's own folder.

A call from an interactive session (no file) with relative paths must pass ``root=`` or set
``KREA_DAGSTER_ROOT``; absolute paths and URLs (``s3://``, ``postgresql+psycopg://``) are
used as given.
"""

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_LEDGER",
    "DEFAULT_STORE",
    "LEDGER_ENV",
    "ROOT_ENV",
    "InstancePaths",
    "RelativePathError",
    "caller_root",
    "default_ledger",
    "missing_extra",
    "project_root_of",
    "resolve_ledger_url",
    "resolve_location",
]

ROOT_ENV = "KREA_DAGSTER_ROOT"
#: The ledger database every instance uses unless told otherwise: one token, one ledger.
LEDGER_ENV = "KREA_LEDGER_URL"
DEFAULT_LEDGER = "sqlite:///krea-output/ledger.db"
DEFAULT_STORE = "krea-output/images"
PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # krea_dagster/


class RelativePathError(ValueError):
    """A relative path with no root to resolve it against."""


def project_root_of(start: str | os.PathLike[str]) -> Path:
    """The nearest folder at or above ``start`` holding a project marker; else ``start``."""
    start_path = Path(start).resolve()
    folder = start_path if start_path.is_dir() else start_path.parent
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).is_file() for marker in PROJECT_MARKERS):
            return candidate
    return folder


def caller_root() -> Path | None:
    """The project root of the first caller outside krea_dagster (None from a REPL)."""
    for frame in inspect.stack(context=0)[1:]:
        filename = frame.filename
        if not filename or filename.startswith("<"):
            continue
        path = Path(filename).resolve()
        if path.is_relative_to(_PACKAGE_DIR) or not path.exists():
            continue
        return project_root_of(path)
    return None


def default_ledger() -> str:
    """``$KREA_LEDGER_URL`` when set, else ``sqlite:///krea-output/ledger.db`` (relative to the
    project root): the ledger of every instance that names none, so that every instance using
    one token shares one ledger, which is what makes the submit lanes account-wide."""
    return os.environ.get(LEDGER_ENV) or DEFAULT_LEDGER


def effective_root(explicit: str | os.PathLike[str] | None) -> Path | None:
    """``$KREA_DAGSTER_ROOT``, else the explicit root (None when neither is set)."""
    from_env = os.environ.get(ROOT_ENV)
    if from_env:
        return Path(from_env).expanduser().resolve()
    return Path(explicit).expanduser().resolve() if explicit is not None else None


def _is_url(value: str) -> bool:
    return "://" in value


def resolve_location(value: str | os.PathLike[str], root: Path | None, what: str) -> str:
    """A local path made absolute against ``root``; URLs and absolute paths unchanged."""
    text = str(value)
    if _is_url(text):
        return text
    path = Path(text).expanduser()
    if path.is_absolute():
        return str(path)
    if root is None:
        raise RelativePathError(
            f"{what} {text!r} is relative and there is no project root to resolve it against: "
            f"pass an absolute path, pass root=..., or set {ROOT_ENV}"
        )
    return str((root / path).resolve())


def resolve_ledger_url(url: str, root: Path | None) -> str:
    """``sqlite:///relative.db`` made absolute against ``root``; other URLs unchanged."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix + ":memory:" or url == "sqlite://":
        return url
    database, query_sep, query = url[len(prefix) :].partition("?")
    suffix = query_sep + query
    if database.startswith("/") or database.startswith("~"):
        return prefix + str(Path(database).expanduser()) + suffix
    return prefix + resolve_location(database, root, "the SQLite ledger") + suffix


def _needs_root(value: str) -> bool:
    if value.startswith("sqlite:///"):
        database = value[len("sqlite:///") :]
        return bool(database) and not database.startswith(("/", "~", ":memory:"))
    return not _is_url(value) and not Path(value).expanduser().is_absolute()


@dataclass(frozen=True)
class InstancePaths:
    """The prompts folder, image store and ledger URL of one instance, made absolute."""

    prompts: str
    store: str
    ledger: str
    root: Path | None

    @classmethod
    def resolve(
        cls, prompts: Any, store: Any, ledger: Any, root: str | os.PathLike[str] | None
    ) -> "InstancePaths":
        """Resolve the plain string/path values (objects such as ``ImageStore`` pass through)."""
        given = {
            "prompts": prompts if isinstance(prompts, str | os.PathLike) else None,
            "store": store if isinstance(store, str | os.PathLike) else None,
            "ledger": ledger if isinstance(ledger, str) else None,
        }
        base = effective_root(root)
        if base is None and any(_needs_root(str(v)) for v in given.values() if v is not None):
            base = caller_root()
        return cls(
            prompts=resolve_location(given["prompts"], base, "prompts")
            if given["prompts"] is not None
            else "",
            store=resolve_location(given["store"], base, "the image store")
            if given["store"] is not None
            else "",
            ledger=resolve_ledger_url(str(given["ledger"]), base)
            if given["ledger"] is not None
            else "",
            root=base,
        )


#: The extra of krea-dagster that brings a storage protocol's filesystem.
_EXTRAS = {"s3": "s3", "s3a": "s3"}


def missing_extra(location: str | os.PathLike[str]) -> str | None:
    """What to install to read or write ``location``, or None when nothing is missing.

    A URL's protocol (``s3://``, ``gs://``...) needs its fsspec filesystem installed; without
    it, reading fails deep inside fsspec with an ImportError that names no fix.
    """
    text = str(location)
    if "://" not in text:
        return None
    scheme = text.split("://", 1)[0].lower()
    if scheme in ("file", "local", "http", "https", "memory"):
        return None
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError:
        extra = _EXTRAS.get(scheme)
        fix = (
            f"pip install 'krea-dagster[{extra}]'"
            if extra
            else f"install the fsspec filesystem for {scheme}://"
        )
        return f"{text.split('?', 1)[0]!r} is a {scheme}:// location, which needs {fix}"
    except ValueError:
        return f"{text.split('?', 1)[0]!r}: fsspec knows no {scheme}:// protocol"
    return None
