"""The system tests' services work as the fixtures promise: PostgreSQL, S3 (moto), Chromium."""

import base64
import functools
import http.server
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest's default import mode puts tests/ on sys.path for tests/conftest.py when tests/ has no
# __init__.py; with a tests package the module is tests.fixtures_services instead.
try:
    from fixtures_services import REPO_ROOT, SERVICES_SCRIPTS, PostgresServer, S3Server
except ImportError:  # pragma: no cover - depends on how tests/ is laid out
    from tests.fixtures_services import REPO_ROOT, SERVICES_SCRIPTS, PostgresServer, S3Server

pytestmark = pytest.mark.system

ARTIFACTS = REPO_ROOT / "test-artifacts" / "services"


# --- PostgreSQL ------------------------------------------------------------------------------


def test_postgres_accepts_sqlalchemy_and_round_trips_a_table(postgres_url: str) -> None:
    import sqlalchemy as sa

    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_url)
    try:
        metadata = sa.MetaData()
        items = sa.Table(
            "items",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.Text, nullable=False),
        )
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(items.insert(), [{"id": 1, "name": "alpha"}, {"id": 2, "name": "beta"}])
        with engine.connect() as conn:
            rows = conn.execute(sa.select(items.c.id, items.c.name).order_by(items.c.id)).all()
            listen = conn.execute(sa.text("SHOW listen_addresses")).scalar_one()
            version = conn.execute(sa.text("SHOW server_version_num")).scalar_one()
        assert [tuple(r) for r in rows] == [(1, "alpha"), (2, "beta")]
        assert listen == "127.0.0.1"
        assert int(version) >= 130000  # DROP DATABASE ... WITH (FORCE) needs 13+
        metadata.drop_all(engine)
    finally:
        engine.dispose()


def test_fresh_pg_database_gives_isolated_empty_databases(
    fresh_pg_database, postgres_server: PostgresServer
) -> None:
    import sqlalchemy as sa

    first, second = fresh_pg_database("dagster"), fresh_pg_database("ledger")
    assert first != second
    engines = [sa.create_engine(first), sa.create_engine(second)]
    try:
        for engine in engines:
            assert sa.inspect(engine).get_table_names() == []
        with engines[0].begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_here (x int)"))
        assert sa.inspect(engines[0]).get_table_names() == ["only_here"]
        assert sa.inspect(engines[1]).get_table_names() == []
    finally:
        for engine in engines:
            engine.dispose()
    # The server can also make and drop databases by name (what the factory uses).
    url = postgres_server.create_database("krea_fixture_probe_" + os.urandom(4).hex())
    postgres_server.drop_database(url.rsplit("/", 1)[1])


# --- S3 (moto) -------------------------------------------------------------------------------


def test_s3_put_get_list_through_upath(s3_path, s3_server: S3Server, s3_prefix: str) -> None:
    (s3_path / "a.txt").write_text("hello krea")
    (s3_path / "images" / "b.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert (s3_path / "a.txt").read_text() == "hello krea"
    assert (s3_path / "images" / "b.bin").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in s3_path.iterdir()) == ["a.txt", "images"]
    assert [p.name for p in s3_path.glob("**/*.bin")] == ["b.bin"]
    assert (s3_path / "a.txt").exists() and not (s3_path / "missing").exists()

    # The objects really are on the moto server, not in some local cache: ask it with boto3.
    import boto3

    s3 = boto3.client("s3", **_boto_kwargs(s3_server))
    key_prefix = s3_prefix.removeprefix(f"s3://{s3_server.bucket}/")
    listed = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=key_prefix)
    keys = sorted(obj["Key"].removeprefix(key_prefix + "/") for obj in listed.get("Contents", []))
    assert keys == ["a.txt", "images/b.bin"]


def test_s3_env_alone_points_upath_at_the_server(
    use_s3_env, s3_prefix: str, s3_server: S3Server
) -> None:
    """The documented contract: with the env from `s3.sh env`, plain UPath('s3://...') works."""
    from upath import UPath

    # skip_instance_cache: fsspec caches filesystems by their arguments; a cached one built
    # before the env was set would point elsewhere.
    path = UPath(f"{s3_prefix}/env-only.txt", skip_instance_cache=True)
    path.write_text("via AWS_ENDPOINT_URL")
    assert path.read_text() == "via AWS_ENDPOINT_URL"
    import boto3

    s3 = boto3.client("s3", **_boto_kwargs(s3_server))
    body = s3.get_object(Bucket=s3_server.bucket, Key=path.path.split("/", 1)[1])["Body"].read()
    assert body == b"via AWS_ENDPOINT_URL"


def _boto_kwargs(server: S3Server) -> dict[str, str]:
    return {
        "endpoint_url": server.endpoint,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "region_name": "us-east-1",
    }


# --- Chromium / Playwright -------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (width, height), (210, 60, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def local_site(tmp_path: Path) -> Iterator[str]:
    """A tiny page with a data-URI PNG, served by http.server on 127.0.0.1 in a thread."""
    data_uri = "data:image/png;base64," + base64.b64encode(_png(48, 32)).decode()
    (tmp_path / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>krea preview</title></head>"
        "<body style='font-family: sans-serif'><h1>krea-dagster preview</h1>"
        f"<img id='preview' alt='preview' src='{data_uri}' width='192' height='128'>"
        "</body></html>"
    )
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_playwright_renders_a_local_page_with_an_image(browser, local_site: str) -> None:
    page = browser.new_page(viewport={"width": 640, "height": 360})
    try:
        response = page.goto(local_site, wait_until="load", timeout=30_000)
        assert response is not None and response.ok
        assert page.title() == "krea preview"
        page.wait_for_function("document.getElementById('preview').complete", timeout=10_000)
        natural = page.evaluate(
            "() => { const i = document.getElementById('preview'); return [i.naturalWidth, i.naturalHeight]; }"
        )
        assert natural == [48, 32]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "playwright-local-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "HeadlessChrome" in page.evaluate("navigator.userAgent")
    finally:
        page.close()


# --- up.sh -----------------------------------------------------------------------------------


def _pid(path: Path) -> str:
    return path.read_text().split()[0] if path.exists() else ""


def test_up_sh_twice_is_harmless(postgres_server, s3_server, chromium_executable) -> None:
    """up.sh on running services: exit 0, same env, nothing restarted, quick, no held pipes."""
    services_dir = Path(os.environ.get("KREA_SERVICES_DIR", REPO_ROOT / ".services"))
    pg_pidfile = next(services_dir.glob("postgres/cluster/data/postmaster.pid"), None) or Path(
        "/nonexistent"
    )
    s3_pidfile = services_dir / "s3" / "moto.pid"
    before = (_pid(pg_pidfile), _pid(s3_pidfile))
    assert all(before), "the fixtures should have started both servers"

    env = {**os.environ, "KREA_PYTHON": sys.executable}
    outputs, durations = [], []
    for _ in range(2):
        started = time.monotonic()
        # capture_output: if a daemon kept our pipes open, this would hang until the timeout.
        proc = subprocess.run(
            ["bash", str(SERVICES_SCRIPTS / "up.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        durations.append(time.monotonic() - started)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)

    assert outputs[0] == outputs[1]
    names = {line.split("=", 1)[0].removeprefix("export ") for line in outputs[0].splitlines()}
    assert {
        "KREA_TEST_PG_URL",
        "KREA_TEST_S3_ENDPOINT",
        "KREA_TEST_S3_BUCKET",
        "KREA_TEST_CHROMIUM",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
    } <= names
    assert f"export KREA_TEST_PG_URL={postgres_server.url()}" in outputs[0].splitlines()
    assert f"export KREA_TEST_S3_ENDPOINT={s3_server.endpoint}" in outputs[0].splitlines()
    assert (_pid(pg_pidfile), _pid(s3_pidfile)) == before, "up.sh restarted a running service"
    # Locally it takes ~1 s (most of it a Chromium render check); generous for a loaded CI box.
    assert durations[1] < 15, durations
