"""The demo code location loads, and the demo command works from a clean state and again."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.system
def test_demo_command_generates_every_batch_and_pays_once(tmp_path):
    """scripts/demo.py on a fresh demo folder stores every image; run again, it creates no job."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KREA_")},
        "KREA_DEMO_DIR": str(tmp_path / "demo"),
        "DAGSTER_HOME": str(tmp_path / "demo" / "home"),
        "KREA_EMULATOR_PORT": str(free_port()),
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
        assert "emulator: 10 jobs created, 10 billed, 0 duplicate submissions" in first.stdout
        assert sorted(p.name for p in (tmp_path / "demo" / "contact_sheets").iterdir()) == [
            "city.png",
            "ocean.png",
            "spring.png",
        ]
        second = run_demo()
        assert "emulator: 10 jobs created, 10 billed, 0 duplicate submissions" in second.stdout
        assert "dg dev" in second.stdout
    finally:
        sys.path.insert(0, str(REPO))
        from krea_dagster.emulator.local import stop_local_emulator

        stop_local_emulator(tmp_path / "demo" / "emulator")
