"""One shared local emulator for a project directory (the demo's "no token needed" backend).

Dagster runs code in several processes (the webserver's code server, the daemon, one process
per run), and they must all talk to the same "Krea", or a job submitted by a run would be
unknown to the sensor that polls it. ``ensure_local_emulator`` starts ``krea-emulator`` once as
a detached background process on fixed ports, with its state in a SQLite file, and every later
caller (any process) finds it running and reuses it. ``stop_local_emulator`` ends it.

A stop is kept: it leaves a marker in the state directory, and a caller that only wants the
emulator *if nobody stopped it* (the demo's code location, loaded by ``dg dev``'s sensors) gets
``EmulatorStopped`` instead of a silent restart; an explicit start (``scripts/demo``,
``krea-emulator start``) clears the marker. ``exit_with_pid`` ties an emulator to a process
(``dg dev``): it stops serving when that process exits, instead of outliving it.
"""

import contextlib
import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "DEFAULT_CDN_PORT",
    "DEFAULT_PORT",
    "EmulatorStopped",
    "LocalEmulator",
    "dev_server_pid",
    "ensure_local_emulator",
    "stop_local_emulator",
]

DEFAULT_PORT = 8760
DEFAULT_CDN_PORT = 8761
STARTUP_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class LocalEmulator:
    """Where the shared emulator listens."""

    base_url: str
    cdn_url: str
    token: str
    admin_token: str
    pid: int


class EmulatorStopped(RuntimeError):
    """The emulator of a state directory was stopped on purpose and is not restarted."""


def dev_server_pid() -> int | None:
    """The pid of the ``dg dev`` (or ``dagster dev``) process this process runs under, if any.

    Its code servers, daemon and run workers are its descendants; an emulator that one of them
    starts should end with it. Read from ``/proc`` (Linux); None elsewhere, or outside dev.
    """
    pid = os.getpid()
    for _ in range(64):  # ancestors, nearest first
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        names = [os.path.basename(arg.decode(errors="replace")) for arg in argv]
        if any(
            name in ("dg", "dagster") and following == "dev"
            for name, following in itertools.pairwise(names)
        ):
            return pid
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"
        if parent <= 1:
            return None
        pid = parent
    return None


def _info_file(state_dir: Path) -> Path:
    return state_dir / "emulator.json"


def _stopped_marker(state_dir: Path) -> Path:
    return state_dir / "stopped"


def _running(info: dict[str, object]) -> bool:
    try:
        response = httpx.get(f"{info['base_url']}/openapi.json", timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def ensure_local_emulator(
    state_dir: str | Path,
    *,
    port: int = DEFAULT_PORT,
    cdn_port: int = DEFAULT_CDN_PORT,
    extra_args: tuple[str, ...] = (),
    unless_stopped: bool = False,
    exit_with_pid: int | None = None,
) -> LocalEmulator:
    """The emulator serving ``state_dir``, started in the background if it is not running.

    ``unless_stopped``: raise ``EmulatorStopped`` instead of starting one when the last
    emulator of ``state_dir`` was stopped with ``stop_local_emulator`` (else a start clears
    that mark). ``exit_with_pid``: a started emulator stops when that process exits.
    """
    directory = Path(state_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "emulator.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time across processes
        info_path = _info_file(directory)
        if info_path.exists():
            info = json.loads(info_path.read_text(encoding="utf-8"))
            if _running(info):
                return LocalEmulator(**info)
        marker = _stopped_marker(directory)
        if unless_stopped and marker.exists():
            raise EmulatorStopped(
                f"the emulator of {directory} was stopped ({marker.read_text().strip()}) and "
                "is not restarted behind your back; start it again (./scripts/demo, or "
                f"krea-emulator start --state-dir {directory})"
            )
        marker.unlink(missing_ok=True)
        if exit_with_pid is not None:
            extra_args = (*extra_args, "--exit-with-pid", str(exit_with_pid))
        command = [
            sys.executable,
            "-m",
            "krea_dagster.emulator",
            "serve",
            "--port",
            str(port),
            "--cdn-port",
            str(cdn_port),
            "--state-file",
            str(directory / "emulator.db"),
            *extra_args,
        ]
        with (directory / "emulator.log").open("ab") as log:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the process that started it
                text=True,
            )
        assert process.stdout is not None
        line = _read_first_line(process, directory / "emulator.log")
        process.stdout.close()  # the emulator prints nothing after its first line
        details = json.loads(line)
        emulator = LocalEmulator(
            base_url=details["base_url"],
            cdn_url=details["cdn_url"],
            token=details["token"],
            admin_token=details["admin_token"],
            pid=process.pid,
        )
        info_path.write_text(json.dumps(emulator.__dict__), encoding="utf-8")
        return emulator


def _read_first_line(process: subprocess.Popen[str], log: Path) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    os.set_blocking(process.stdout.fileno(), False)
    buffer = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError, TypeError):
            chunk = process.stdout.readline()
            if chunk:
                buffer += chunk
                if buffer.endswith("\n"):
                    return buffer
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    process.wait()
    reason = _last_line(log) or "see emulator.log in the state directory"
    raise RuntimeError(f"krea-emulator did not start: {reason}")


def _last_line(log: Path) -> str:
    """The emulator's last complaint (it writes one line when, say, its port is taken)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].removeprefix("krea-emulator: ") if lines else ""


def stop_local_emulator(state_dir: str | Path) -> bool:
    """Stop the emulator of ``state_dir`` and mark it stopped; False when none was running."""
    directory = Path(state_dir)
    if directory.is_dir():
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        _stopped_marker(directory).write_text(f"stopped at {stamp}\n", encoding="utf-8")
    info_path = _info_file(directory)
    if not info_path.exists():
        return False
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info_path.unlink()
    pid = int(info["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and _running(info):  # ports free once it answers no more
        time.sleep(0.05)
    return True
