"""krea-emulator's command line: help for every knob, one-line errors, and stopping a background emulator."""

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path

from krea_dagster.emulator import admin, cli, state
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.local import ensure_local_emulator, stop_local_emulator

REPO = Path(__file__).resolve().parents[2]


def emulator_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "krea_dagster.emulator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_help_describes_every_knob_with_its_default() -> None:
    """`krea-emulator --help` has a description and the default of each EmulatorConfig knob."""
    text = " ".join(cli.build_parser().format_help().split())
    for field in dataclasses.fields(EmulatorConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        help_text = " ".join(cli.KNOB_HELP[field.name].split())
        assert help_text in text, field.name
        start = text.index(help_text)
        assert "(default: " in text[start : start + len(help_text) + 60], field.name
    assert "(default: 0.0)" in text and "(default: 8)" in text  # rates, concurrency
    assert "(default: None)" not in text


def test_cli_copies_of_the_tokens_match_the_server_modules() -> None:
    """The tokens --help shows without importing the server stack are the server's tokens."""
    assert cli.DEFAULT_ADMIN_TOKEN == admin.DEFAULT_ADMIN_TOKEN
    assert cli.DEMO_TOKEN == state.DEMO_TOKEN


def test_a_taken_port_is_one_line_naming_the_port_and_the_fixes() -> None:
    """Serving on a port in use exits 3 with a single line on stderr, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = emulator_cli("serve", "--port", str(port))
    assert done.returncode == 3
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert "krea-emulator stop" in line and "KREA_EMULATOR_PORT" in line


def test_stop_ends_the_background_emulator_of_a_state_dir(tmp_path: Path) -> None:
    """`krea-emulator stop --state-dir DIR` stops what ensure_local_emulator started there."""
    emulator = ensure_local_emulator(tmp_path / "emulator", port=0, cdn_port=0)
    done = emulator_cli("stop", "--state-dir", str(tmp_path / "emulator"))
    assert done.returncode == 0
    assert "stopped the emulator" in done.stdout
    with socket.socket() as probe:
        host, port = emulator.base_url.removeprefix("http://").split(":")
        assert probe.connect_ex((host, int(port))) != 0  # nothing listens any more
    assert not stop_local_emulator(tmp_path / "emulator")  # already stopped: False, no error
    again = emulator_cli("stop", "--state-dir", str(tmp_path / "emulator"))
    assert "no emulator was running" in again.stdout


def test_local_emulator_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    """ensure_local_emulator on a taken port raises with the emulator's own one-line reason."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            ensure_local_emulator(tmp_path / "emulator", port=port, cdn_port=0)
        except RuntimeError as error:
            message = str(error)
        else:
            raise AssertionError("the emulator started on a taken port")
    assert message.startswith("krea-emulator did not start: port ")
    assert "\n" not in message


def test_a_bad_node_apps_file_is_one_line_naming_it(tmp_path: Path) -> None:
    """--node-apps with a file that is not a node-app document exits 2 with one line naming it."""
    bad = tmp_path / "apps.json"
    bad.write_text('{"apps": []}', encoding="utf-8")
    done = emulator_cli("serve", "--node-apps", str(bad))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert str(bad) in line and '{"node_apps": [app, ...]}' in line
