"""The demo code location loads, and the demo command works from a clean state and again."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
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
        "PYTHONPATH": str(REPO),
    }


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
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KREA_")},
        "KREA_DEMO_DIR": str(tmp_path / "demo"),
        "DAGSTER_HOME": str(tmp_path / "demo" / "home"),
        "KREA_EMULATOR_PORT": str(free_port(2)),
    }

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
        sys.path.insert(0, str(REPO))
        from krea_dagster.emulator.local import stop_local_emulator

        stop_local_emulator(tmp_path / "demo" / "emulator")
