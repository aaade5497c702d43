"""``krea-dagster gallery``: local stores served on loopback, so gallery links open (issue 20).

Browsers refuse ``file://`` links from a web page such as the Dagster UI. The gallery server
serves each instance's folder of its store at ``/<prefix>/`` on 127.0.0.1; an instance built
with ``store_url`` set to the server's address links its gallery there.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from free_ports import free_port

from krea_dagster.engine.gallery_server import GalleryServer
from krea_dagster.metadata import KreaImagesMetadata

from .conftest import materialize, write_batch

LOCATION = """
import os
from krea_dagster import KreaResource, build_krea_image_assets
posters = build_krea_image_assets(
    "posters",
    prompts=os.environ["T_PROMPTS"],
    model="bfl/flux-1-dev",
    store=os.environ["T_STORE"],
    ledger=os.environ["T_LEDGER"],
    store_url=os.environ["T_STORE_URL"],
)
defs = posters.definitions(resources={"krea": KreaResource()})
"""


def test_the_gallery_link_of_a_served_store_opens(
    build, emulator, krea, instance, prompts_dir, tmp_path
):
    """With store_url at the gallery server, the asset's gallery link answers 200 with the
    page; its images load; nothing outside the instance's folder is served."""
    store = tmp_path / "store"
    (tmp_path / "ledger.db").write_bytes(b"")
    with GalleryServer({"krea_test": store}) as server:
        write_batch(prompts_dir, "b", [{"prompt": "a cat"}, {"prompt": "a dog"}])
        assets = build(store_url=server.url, ledger=f"sqlite:///{store / 'ledger.db'}")
        result = materialize(assets, "b", instance=instance, krea=krea)
        assert result.success
        meta = KreaImagesMetadata.extract(
            result.asset_materializations_for_node(assets.images.node_def.name)[0].metadata
        )
        assert meta.gallery is not None
        link = meta.gallery.value
        assert link == server.page_url("krea_test", "b")
        page = httpx.get(link, trust_env=False)
        assert page.status_code == 200 and "a cat" in page.text
        image = httpx.get(link.rsplit("/", 1)[0] + "/" + _first_image(page.text), trust_env=False)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        index = httpx.get(server.url + "/", trust_env=False)
        assert "krea_test / b" in index.text
        for outside in (
            "/ledger.db",
            "/krea_test/../ledger.db",
            "/other/x",
            "/krea_test/%2e%2e/ledger.db",
        ):
            assert httpx.get(server.url + outside, trust_env=False).status_code == 404, outside


def _first_image(page: str) -> str:
    start = page.index('src="') + len('src="')
    return page[start : page.index('"', start)]


def test_the_gallery_command_serves_a_code_location_and_prints_each_page(
    build, emulator, krea, instance, prompts_dir, tmp_path
):
    """krea-dagster gallery -f definitions.py serves the instance's store and prints the URL of
    each batch's page, which opens; it stops with the process it was told to follow."""
    port = free_port()
    store = tmp_path / "store"
    env_paths = {
        "T_PROMPTS": str(prompts_dir),
        "T_STORE": str(store),
        "T_LEDGER": f"sqlite:///{tmp_path / 'ledger.db'}",
        "T_STORE_URL": f"http://127.0.0.1:{port}",
    }
    write_batch(prompts_dir, "b", [{"prompt": "a cat"}])
    assets = build(
        "posters",
        store=store,
        ledger=env_paths["T_LEDGER"],
        store_url=env_paths["T_STORE_URL"],
    )
    assert materialize(assets, "b", instance=instance, krea=krea).success
    (tmp_path / "definitions.py").write_text(LOCATION)
    follow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "krea_dagster",
            "gallery",
            "--port",
            str(port),
            "--exit-with-pid",
            str(follow.pid),
        ],
        cwd=tmp_path,
        env={**os.environ, **env_paths, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert f"serving at http://127.0.0.1:{port}/" in first, first
        line = server.stdout.readline()
        url = f"http://127.0.0.1:{port}/posters/batches/b/index.html"
        assert line.strip() == f"posters / b: {url}"
        assert httpx.get(url, trust_env=False).status_code == 200
        follow.send_signal(signal.SIGTERM)
        follow.wait()
        assert server.wait(timeout=30) == 0
    finally:
        for process in (follow, server):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_gallery_command_on_a_taken_port_is_one_line(tmp_path, prompts_dir):
    """A taken port is one line naming it and --port, exit 2."""
    (tmp_path / "definitions.py").write_text(LOCATION)
    with GalleryServer({"x": tmp_path}) as taken:
        port = int(taken.url.rsplit(":", 1)[1])
        done = subprocess.run(
            [sys.executable, "-m", "krea_dagster", "gallery", "--port", str(port)],
            cwd=tmp_path,
            env={
                **os.environ,
                "T_PROMPTS": str(prompts_dir),
                "T_STORE": str(tmp_path / "store"),
                "T_LEDGER": f"sqlite:///{tmp_path / 'ledger.db'}",
                "T_STORE_URL": taken.url,
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


@pytest.mark.parametrize("path", ["", "/"])
def test_the_index_lists_galleries(tmp_path: Path, path: str) -> None:
    """The server's root lists every instance's batches that have a gallery page."""
    page = tmp_path / "p" / "batches" / "spring" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html>spring</html>")
    with GalleryServer({"p": tmp_path}) as server:
        deadline = time.monotonic() + 10
        while True:
            try:
                text = httpx.get(server.url + path, trust_env=False).text
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
        assert 'href="/p/batches/spring/index.html"' in text
