"""Pytest fixtures for the system tests' real services: PostgreSQL, an S3 server, Chromium.

Each fixture starts its service through ``scripts/services/*.sh`` when it is not running yet
(the scripts are idempotent and lock against parallel callers, so pytest-xdist workers can all
ask). When a service cannot be had, the fixture skips the test with the reason, except under
``CI=true``, where it fails: a system test must never silently skip in CI.

Imported by ``tests/conftest.py``::

    from fixtures_services import *  # noqa: F403

Fixtures (scope):

- ``postgres_server`` (session): :class:`PostgresServer` (host, port, user, ``url(db)``,
  ``create_database``, ``drop_database``).
- ``postgres_url`` (session): SQLAlchemy URL ``postgresql+psycopg://...`` of an empty database
  made for this test session (dropped at its end).
- ``fresh_pg_database`` (function): factory ``(prefix="krea") -> url`` that creates an empty
  database per call; the test's databases are dropped after it.
- ``s3_server`` (session): :class:`S3Server` (endpoint, bucket, env, storage_options).
- ``s3_endpoint``, ``s3_bucket`` (session): ``"http://127.0.0.1:55433"``, ``"krea-test"``.
- ``s3_storage_options`` (session): s3fs / universal-pathlib options:
  ``UPath("s3://bucket/key", **s3_storage_options)``.
- ``s3_env`` (session): the env vars (``AWS_ENDPOINT_URL``...) that point any boto/s3fs client
  at the server, for subprocesses (dagster-daemon, webserver).
- ``use_s3_env`` (function): applies ``s3_env`` to ``os.environ`` for one test (monkeypatch),
  so code that builds ``UPath("s3://...")`` with no options reaches the server.
- ``s3_prefix`` (function): a unique ``s3://<bucket>/tests/<test>-<hex>`` per test.
- ``s3_path`` (function): ``UPath(s3_prefix, **s3_storage_options)``.
- ``chromium_executable`` (session): ``"/usr/bin/chromium"`` (Debian's, installed if missing).
- ``browser`` (session): a Playwright ``Browser``, headless Debian Chromium with
  :data:`CHROMIUM_FLAGS` (sync API: use it from sync tests only).
"""

import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

__all__ = [
    "CHROMIUM_FLAGS",
    "REPO_ROOT",
    "SERVICES_SCRIPTS",
    "PostgresServer",
    "S3Server",
    "browser",
    "chromium_executable",
    "fresh_pg_database",
    "in_ci",
    "postgres_server",
    "postgres_url",
    "run_service_script",
    "s3_bucket",
    "s3_endpoint",
    "s3_env",
    "s3_path",
    "s3_prefix",
    "s3_server",
    "s3_storage_options",
    "service_unavailable",
    "use_s3_env",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_SCRIPTS = REPO_ROOT / "scripts" / "services"

# Headless and off the network (the machine's closed network refuses Chromium's background
# connections to Google's hosts). --no-sandbox: CI runs as root. Playwright's launch() adds a
# fresh temporary --user-data-dir itself (and refuses one in args).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def service_unavailable(reason: str) -> NoReturn:
    """Skip the test (local run) or fail it (CI=true), saying why the service is missing."""
    if in_ci():
        pytest.fail(
            f"{reason}\n(CI=true: system tests fail instead of skipping when a service is missing)",
            pytrace=False,
        )
    pytest.skip(reason)


def run_service_script(script: str, *args: str, timeout: float = 900) -> str:
    """Run ``scripts/services/<script> args...`` and return its stdout.

    A non-zero exit becomes :func:`service_unavailable` with the script's own message (which
    says, e.g., which apt-get command to run when not root).
    """
    command = ["bash", str(SERVICES_SCRIPTS / script), *args]
    shown = f"scripts/services/{script} {shlex.join(args)}".strip()
    env = {**os.environ, "KREA_PYTHON": sys.executable}
    try:
        proc = subprocess.run(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        service_unavailable(f"`{shown}` did not finish within {timeout:.0f} s")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        service_unavailable(f"`{shown}` failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _parse_exports(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


def _unique_suffix() -> str:
    return uuid.uuid4().hex[:10]


# --- PostgreSQL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    """The local test server: superuser ``postgres``, no password, TCP on 127.0.0.1 only."""

    host: str
    port: int
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of ``database``."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """libpq conninfo for psycopg.connect() of ``database``."""
        return f"host={self.host} port={self.port} user={self.user} dbname={database} connect_timeout=10"

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.conninfo(), autocommit=True)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, ending its open sessions (a Dagster instance keeps some)."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        service_unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    run_service_script("postgres.sh", "start")
    from sqlalchemy.engine import make_url

    url = make_url(run_service_script("postgres.sh", "url").strip())
    server = PostgresServer(
        host=url.host or "127.0.0.1", port=url.port or 55432, user=url.username or "postgres"
    )
    try:
        with server._admin() as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        service_unavailable(f"PostgreSQL started but refuses connections at {server.url()}: {exc}")
    return server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty database for this test session (each xdist worker gets its own)."""
    name = f"krea_session_{_unique_suffix()}"
    url = postgres_server.create_database(name)
    yield url
    _drop_quietly(postgres_server, name)


def _drop_quietly(server: PostgresServer, name: str) -> None:
    try:
        server.drop_database(name)
    except Exception as exc:  # teardown must not turn a passed test red
        print(f"warning: could not drop test database {name}: {exc}", file=sys.stderr)


@pytest.fixture
def fresh_pg_database(postgres_server: PostgresServer) -> Iterator[Callable[..., str]]:
    """Factory: ``fresh_pg_database(prefix="krea") -> url`` of a new, empty database.

    Call it once per database the test needs (say one for the Dagster instance storage, one for
    the krea ledger). They are dropped, open sessions and all, when the test ends.
    """
    created: list[str] = []

    def make(prefix: str = "krea") -> str:
        name = f"{prefix}_{_unique_suffix()}"
        url = postgres_server.create_database(name)
        created.append(name)
        return url

    yield make
    for name in created:
        _drop_quietly(postgres_server, name)


# --- S3 (moto server) ------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def storage_options(self) -> dict[str, Any]:
        """s3fs / universal-pathlib options that reach this server without any env var."""
        return {
            "endpoint_url": self.endpoint,
            "key": self.env.get("AWS_ACCESS_KEY_ID", "testing"),
            "secret": self.env.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "client_kwargs": {"region_name": self.env.get("AWS_DEFAULT_REGION", "us-east-1")},
        }


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    run_service_script("s3.sh", "start")
    env = _parse_exports(run_service_script("s3.sh", "env"))
    server = S3Server(
        endpoint=env["KREA_TEST_S3_ENDPOINT"], bucket=env["KREA_TEST_S3_BUCKET"], env=env
    )
    try:
        request = urllib.request.Request(f"{server.endpoint}/{server.bucket}", method="HEAD")
        with urllib.request.urlopen(request, timeout=10):
            pass
    except (urllib.error.URLError, OSError) as exc:
        service_unavailable(
            f"S3 server started but bucket {server.bucket} at {server.endpoint} does not answer: {exc}"
        )
    return server


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3Server) -> str:
    return s3_server.endpoint


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> str:
    return s3_server.bucket


@pytest.fixture(scope="session")
def s3_storage_options(s3_server: S3Server) -> dict[str, Any]:
    return s3_server.storage_options


@pytest.fixture(scope="session")
def s3_env(s3_server: S3Server) -> dict[str, str]:
    """AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3, dummy credentials, region, KREA_TEST_S3_*."""
    return dict(s3_server.env)


@pytest.fixture
def use_s3_env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    return s3_env


@pytest.fixture
def s3_prefix(s3_bucket: str, request: pytest.FixtureRequest) -> str:
    """``s3://<bucket>/tests/<test name>-<hex>``: nothing else writes under it."""
    test_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:80].strip("-")
    return f"s3://{s3_bucket}/tests/{test_name}-{_unique_suffix()}"


@pytest.fixture
def s3_path(s3_prefix: str, s3_storage_options: dict[str, Any]) -> Any:
    """``UPath(s3_prefix, **s3_storage_options)`` (a universal-pathlib S3Path)."""
    from upath import UPath

    return UPath(s3_prefix, **s3_storage_options)


# --- Chromium / Playwright -------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    run_service_script("chromium.sh", "install")
    out = run_service_script("chromium.sh", "check").strip().splitlines()
    if not out:
        service_unavailable("scripts/services/chromium.sh check printed no executable path")
    return out[-1]


@pytest.fixture(scope="session")
def browser(chromium_executable: str) -> Iterator[Any]:
    """A Playwright ``Browser``: Debian's Chromium, headless, offline flags, fresh profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_unavailable(
            "the playwright Python package is not installed (pip install playwright)"
        )
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=chromium_executable,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            timeout=60_000,
        )
    except Exception as exc:
        playwright.stop()
        service_unavailable(f"Playwright could not launch {chromium_executable}: {exc}")
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()
