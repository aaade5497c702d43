"""The demo code location loads, and the demo command works from a clean state and again."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest
from free_ports import free_port

REPO = Path(__file__).resolve().parents[1]


def test_demo_definitions_load_without_a_token(monkeypatch):
    """definitions.py loads (assets, job, sensors, the YAML instance) with no KREA_* variable set."""
    monkeypatch.syspath_prepend(str(REPO))
    import definitions

    dg.Definitions.validate_loadable(definitions.defs)
    keys = {
        key.to_user_string() for key in definitions.defs.resolve_asset_graph().get_all_asset_keys()
    }
    assert {
        "demo/prompt_source",
        "demo/prompts",
        "demo/jobs",
        "demo/images",
        "demo/contact_sheet",
        "banners/images",
    } <= keys
    assert {sensor.name for sensor in definitions.defs.sensors} >= {
        "demo_batch_discovery",
        "demo_completion",
    }
    assert definitions.defs.resolve_job_def("krea_demo_job") is not None


def demo_env(tmp_path: Path, port: int) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KREA_")},
        "KREA_DEMO_DIR": str(tmp_path / "demo"),
        "DAGSTER_HOME": str(tmp_path / "demo" / "home"),
        "KREA_EMULATOR_PORT": str(port),
        "KREA_GALLERY_PORT": str(free_port()),
        "PYTHONPATH": str(REPO),
    }


def in_demo(env: dict[str, str], code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run Python code that imports the demo's code location, as its processes do."""
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


# What a Dagster process of the demo does on its first Krea call (a sensor tick, a run).
FIRST_USE = "import definitions; print(definitions.krea_resource()._client_kwargs()['base_url'])"


def test_a_stopped_demo_emulator_is_not_restarted_by_the_code_location(tmp_path):
    """After ./scripts/demo --stop, a sensor or run of the demo (dg dev) gets an error naming
    how to start the emulator again, instead of silently restarting it."""
    env = demo_env(tmp_path, free_port(2))
    started = in_demo(env, FIRST_USE)
    assert started.returncode == 0, started.stderr[-3000:]
    url = started.stdout.strip()
    try:
        assert answers(f"{url}/openapi.json")
        assert answers(f"http://127.0.0.1:{env['KREA_GALLERY_PORT']}/")  # the gallery too
        stop = subprocess.run(
            [sys.executable, "scripts/demo.py", "--stop"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "stopped the demo's emulator and gallery server" in stop.stdout
        again = in_demo(env, FIRST_USE)
        assert again.returncode != 0
        assert "was stopped" in again.stderr and "./scripts/demo" in again.stderr
        assert not answers(f"{url}/openapi.json")
        assert not answers(f"http://127.0.0.1:{env['KREA_GALLERY_PORT']}/")
    finally:
        in_demo(env, "import definitions; definitions.stop_demo_services()")


FAKE_DG = """
import subprocess, sys, time
# Stands in for `dg dev` (its argv is [python, .../dg, dev]): a child process of it uses the
# demo's code location the way dg dev's code server does.
child = subprocess.run([sys.executable, "-c", sys.argv[2]], capture_output=True, text=True)
print(child.stdout.strip(), flush=True)
print(child.stderr[-2000:], file=sys.stderr, flush=True)
time.sleep(600)
"""


def test_the_demo_services_started_under_dg_dev_end_with_it(tmp_path):
    """The emulator and gallery server that a process under `dg dev` starts stop when dg dev
    exits, instead of outliving it."""
    env = demo_env(tmp_path, free_port(2))
    fake = tmp_path / "bin" / "dg"
    fake.parent.mkdir()
    fake.write_text(FAKE_DG)
    dev = subprocess.Popen(
        [sys.executable, str(fake), "dev", FIRST_USE],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    gallery = f"http://127.0.0.1:{env['KREA_GALLERY_PORT']}/"
    try:
        assert dev.stdout is not None
        url = dev.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), dev.stderr.read() if dev.stderr else ""
        assert answers(f"{url}/openapi.json") and answers(gallery)
        dev.kill()
        dev.wait()
        deadline = time.monotonic() + 30
        while answers(f"{url}/openapi.json") or answers(gallery):
            assert time.monotonic() < deadline, "a demo service outlived dg dev"
            time.sleep(0.2)
    finally:
        if dev.poll() is None:
            dev.kill()
        in_demo(env, "import definitions; definitions.stop_demo_services()")


def test_yaml_instance_follows_the_demo_port_and_folder(tmp_path):
    """demo_defs/banners talks to the emulator on KREA_EMULATOR_PORT and stores under KREA_DEMO_DIR."""
    code = (
        "import definitions\n"
        "from krea_dagster.partitions import built_nodes\n"
        "b = built_nodes()['banners']\n"
        "print(b.krea.embedded.effective_base_url, b.pipeline.store.root, b.pipeline.ledger.url)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=demo_env(tmp_path, 12345),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    demo = tmp_path / "demo"
    assert done.stdout.split() == [
        "http://127.0.0.1:12345",
        str(demo / "banners"),
        f"sqlite:///{demo / 'ledger.db'}",  # shared with the Python instance
    ]


def test_demo_on_a_taken_port_stops_with_one_line(tmp_path):
    """scripts/demo.py with its emulator port in use exits 3 with one line, before any run."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "scripts/demo.py"],
            cwd=REPO,
            env=demo_env(tmp_path, port),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 3, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"port {port}" in line and "already in use" in line
    assert "Traceback" not in done.stdout


@pytest.mark.system
def test_demo_command_generates_every_batch_and_pays_once(tmp_path):
    """scripts/demo.py on a fresh demo folder stores every image; run again, it creates no job."""
    env = demo_env(tmp_path, free_port(2))

    def run_demo() -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "scripts/demo.py"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    try:
        first = run_demo()
        assert "emulator: 18 jobs created, 18 billed, 0 duplicate submissions" in first.stdout
        # Nothing but the demo's own lines: no Dagster warning or DEBUG log on the progress.
        assert "Warning" not in first.stdout + first.stderr
        assert "DEBUG" not in first.stdout + first.stderr
        # The gallery of every batch, at an address that opens (the demo serves the store).
        gallery = f"http://127.0.0.1:{env['KREA_GALLERY_PORT']}"
        pages = [f"demo/batches/{batch}" for batch in ("city", "ocean", "spring")]
        pages += [f"catalog.upscale/batches/{batch}" for batch in ("autumn", "spring")]
        for page in pages:
            url = f"{gallery}/{page}/index.html"
            assert url in first.stdout and answers(url), url
        # 10 prompts in 3 batches, then 4 products edited and upscaled in 2 batches (8 jobs).
        assert sorted(p.name for p in (tmp_path / "demo" / "contact_sheets").iterdir()) == [
            "catalog-autumn.png",
            "catalog-spring.png",
            "demo-city.png",
            "demo-ocean.png",
            "demo-spring.png",
        ]
        second = run_demo()
        assert "emulator: 18 jobs created, 18 billed, 0 duplicate submissions" in second.stdout
        assert "dg dev" in second.stdout and "./scripts/demo --stop" in second.stdout
        stopped = subprocess.run(
            [sys.executable, "scripts/demo.py", "--stop"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "stopped the demo's emulator" in stopped.stdout
    finally:
        in_demo(env, "import definitions; definitions.stop_demo_services()")
