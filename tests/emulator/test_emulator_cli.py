"""krea-emulator's command line: help for every knob, one-line errors, starting and stopping a background emulator."""

import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from krea_dagster.emulator import admin, cli, state
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.local import (
    EmulatorStopped,
    ensure_local_emulator,
    stop_local_emulator,
)

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


def test_start_runs_one_in_the_background_and_reuses_it(tmp_path: Path) -> None:
    """`krea-emulator start` returns once the emulator answers, printing its JSON line; a
    second start finds it running; stop ends it."""
    state = str(tmp_path / "emulator")
    first = emulator_cli("start", "--state-dir", state, "--port", "0", "--time-scale", "0.01")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert httpx.get(f"{info['base_url']}/openapi.json", trust_env=False).status_code == 200
    again = emulator_cli("start", "--state-dir", state, "--port", "0")
    assert json.loads(again.stdout)["base_url"] == info["base_url"]
    assert emulator_cli("stop", "--state-dir", state).returncode == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(info["base_url"].rsplit(":", 1)[1]))) != 0


def test_start_on_a_taken_port_fails_at_once_in_the_foreground(tmp_path: Path) -> None:
    """With another emulator on the port, start exits 3 with one line naming it; no second
    emulator is left behind."""
    other = ensure_local_emulator(tmp_path / "other", port=0, cdn_port=0)
    port = other.base_url.rsplit(":", 1)[1]
    try:
        done = emulator_cli("start", "--state-dir", str(tmp_path / "mine"), "--port", port)
    finally:
        stop_local_emulator(tmp_path / "other")
    assert done.returncode == 3
    (line,) = done.stderr.strip().splitlines()
    assert f"port {port}" in line and "already in use" in line
    assert not (tmp_path / "mine" / "emulator.json").exists()


def test_start_refuses_a_wrong_option_before_starting(tmp_path: Path) -> None:
    """A misspelt serve option fails start with argparse's message; nothing is started."""
    done = emulator_cli(
        "start", "--state-dir", str(tmp_path / "e"), "--port", "0", "--no-such-knob", "1"
    )
    assert done.returncode == 2 and "--no-such-knob" in done.stderr
    assert not (tmp_path / "e" / "emulator.json").exists()


def test_a_stopped_emulator_is_not_restarted_unless_asked(tmp_path: Path) -> None:
    """After stop, ensure_local_emulator(unless_stopped=True) raises EmulatorStopped naming how
    to start it; an explicit start clears the mark."""
    state = tmp_path / "emulator"
    ensure_local_emulator(state, port=0, cdn_port=0)
    assert stop_local_emulator(state)
    with pytest.raises(EmulatorStopped, match="krea-emulator start --state-dir"):
        ensure_local_emulator(state, port=0, cdn_port=0, unless_stopped=True)
    assert not (state / "emulator.json").exists()
    ensure_local_emulator(state, port=0, cdn_port=0)
    try:
        assert ensure_local_emulator(state, port=0, cdn_port=0, unless_stopped=True)
    finally:
        stop_local_emulator(state)


def test_an_emulator_tied_to_a_process_ends_with_it(tmp_path: Path) -> None:
    """exit_with_pid: the emulator stops serving once that process has exited."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        emulator = ensure_local_emulator(
            tmp_path / "emulator", port=0, cdn_port=0, exit_with_pid=owner.pid
        )
        url = f"{emulator.base_url}/openapi.json"
        assert httpx.get(url, trust_env=False).status_code == 200
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1, trust_env=False)
        except httpx.HTTPError:
            break
        assert time.monotonic() < deadline, "the emulator outlived its owner"
        time.sleep(0.2)
    stop_local_emulator(tmp_path / "emulator")
