"""Test helpers: run the emulator in a thread or a subprocess and drive it through a handle.

``run_emulator(**options)`` serves the app in a background thread on free ports and yields an
:class:`EmulatorHandle`; ``spawn_emulator(*cli_args)`` starts ``krea-emulator serve`` in a
subprocess (for crash tests: kill it, restart it on the same ports) and returns a
:class:`SpawnedEmulator`, which is also a handle. Both handles talk to the emulator only over
HTTP (the admin API), so they behave the same whether the server is in-process or not.

Example::

    with run_emulator(time_scale=0.001, job_failure_rate=0.5, seed=7) as emulator:
        client = httpx.Client(base_url=emulator.base_url,
                              headers={"Authorization": f"Bearer {emulator.token}"})
        ...
        assert emulator.stats()["jobs_billed"] == 3
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from krea_dagster.emulator.admin import DEFAULT_ADMIN_TOKEN
from krea_dagster.emulator.clock import Clock
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.persistence import MemoryStore, SqliteStore
from krea_dagster.emulator.server import EmulatorServer, run
from krea_dagster.emulator.state import DEMO_TOKEN, EmulatorState

TERMINAL = ("completed", "failed", "cancelled")

# The subprocess starts the CLI without running ``krea_dagster/__init__.py``, which imports
# Dagster (seconds of start-up the emulator does not need): the package is registered as a bare
# namespace so only ``krea_dagster.emulator`` and its data files load (~0.6 s instead of ~3 s).
_BOOTSTRAP = """
import importlib.util, sys, types
spec = importlib.util.find_spec("krea_dagster")
package = types.ModuleType("krea_dagster")
package.__path__ = list(spec.submodule_search_locations)
package.__spec__ = spec
package.__file__ = spec.origin
sys.modules["krea_dagster"] = package
from krea_dagster.emulator.cli import main
sys.exit(main(sys.argv[1:]))
"""
STARTUP_TIMEOUT_SECONDS = 30.0


def write_openapi_document(
    path: str | Path,
    *,
    add: dict[str, dict[str, Any]] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """Write the bundled OpenAPI document with operations added and paths dropped, for the
    ``openapi`` knob: ``add`` maps a path (``/generate/image/krea/krea-3``) to its ``post``
    operation, ``drop`` names paths Krea no longer serves."""
    from krea_dagster.emulator.catalog import openapi_document

    document = openapi_document()
    for route in drop:
        del document["paths"][route]
    for route, operation in (add or {}).items():
        document["paths"][route] = {"post": operation}
    target = Path(path)
    target.write_text(json.dumps(document), encoding="utf-8")
    return target


class EmulatorHandle:
    """URLs, tokens and the admin API of a running emulator."""

    def __init__(self, base_url: str, cdn_url: str, token: str, admin_token: str) -> None:
        self.base_url = base_url
        self.cdn_url = cdn_url
        self.token = token
        self.admin_token = admin_token
        self._admin = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=30.0,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, cdn_url={self.cdn_url!r})"

    @property
    def account(self) -> str:
        """The id of the main account (the part of the token before the colon)."""
        return self.token.split(":", 1)[0]

    @property
    def auth_headers(self) -> dict[str, str]:
        """``Authorization`` header of the main account."""
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """An httpx client on the API origin authenticated as ``token`` (default: main)."""
        headers = {"Authorization": f"Bearer {token or self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.base_url, headers=headers, trust_env=False, **kwargs)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._admin.request(method, path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``."""
        result: dict[str, Any] = self._call("GET", "/_emulator/stats")
        return result

    def config(self) -> dict[str, Any]:
        """The current knobs."""
        result: dict[str, Any] = self._call("GET", "/_emulator/config")
        return result

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """``PATCH /_emulator/config`` with these knobs; returns the new config."""
        result: dict[str, Any] = self._call("PATCH", "/_emulator/config", knobs)
        return result

    def reset(self, *, config: bool = False, accounts: bool = False) -> None:
        """Clear jobs, assets and counters (and optionally knobs and run-time accounts)."""
        self._call("POST", "/_emulator/reset", {"config": config, "accounts": accounts})

    def add_account(
        self,
        *,
        token: str | None = None,
        concurrency: int | None = None,
        backlog: int | None = None,
        balance_usd: float | None = None,
    ) -> dict[str, Any]:
        """Create an account; the result holds its ``token`` and ``account`` id."""
        body = {
            "token": token,
            "concurrency": concurrency,
            "backlog": backlog,
            "balance_usd": balance_usd,
        }
        result: dict[str, Any] = self._call("POST", "/_emulator/accounts", body)
        return result

    def accounts(self) -> list[dict[str, Any]]:
        """Every account with its balance and live figures."""
        items: list[dict[str, Any]] = self._call("GET", "/_emulator/accounts")["items"]
        return items

    def update_account(self, account: str | None = None, **changes: Any) -> dict[str, Any]:
        """``PATCH /_emulator/accounts/{account}`` (default: the main account)."""
        result: dict[str, Any] = self._call(
            "PATCH", f"/_emulator/accounts/{account or self.account}", changes
        )
        return result

    def set_balance(self, balance_usd: float, account: str | None = None) -> dict[str, Any]:
        """Set an account's USD balance."""
        return self.update_account(account, balance_usd=balance_usd)

    def top_up(self, amount_usd: float, account: str | None = None) -> dict[str, Any]:
        """Add to an account's USD balance."""
        return self.update_account(account, add_usd=amount_usd)

    def set_concurrency(self, concurrency: int, account: str | None = None) -> dict[str, Any]:
        """Change an account's concurrency (a raise starts backlogged jobs at once)."""
        return self.update_account(account, concurrency=concurrency)

    def job(self, job_id: str) -> dict[str, Any]:
        """Admin view of any job (account, model, price, request body)."""
        result: dict[str, Any] = self._call("GET", f"/_emulator/jobs/{job_id}")
        return result

    def node_app_executions(self) -> list[dict[str, Any]]:
        """Every accepted node-app execute, oldest first, with its ``job_ids`` in step order."""
        items: list[dict[str, Any]] = self._call("GET", "/_emulator/node-app-executions")["items"]
        return items

    def complete_job(self, job_id: str) -> dict[str, Any]:
        """Force a non-terminal job to complete now."""
        result: dict[str, Any] = self._call("POST", f"/_emulator/jobs/{job_id}/complete")
        return result

    def fail_job(
        self, job_id: str, code: str = "internal_error", message: str | None = None
    ) -> dict[str, Any]:
        """Force a non-terminal job to fail now with ``error.code``/``error.message``."""
        body = {"code": code, "message": message}
        result: dict[str, Any] = self._call("POST", f"/_emulator/jobs/{job_id}/fail", body)
        return result

    def wait_for_job(
        self, job_id: str, timeout: float = 10.0, interval: float = 0.005
    ) -> dict[str, Any]:
        """Poll the admin view until the job is terminal (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(interval)

    def wait_until(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
        interval: float = 0.005,
    ) -> dict[str, Any]:
        """Poll the stats until ``predicate(stats)`` holds; returns those stats (or TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"stats never satisfied the condition within {timeout} s: {stats}"
                )
            time.sleep(interval)

    def close(self) -> None:
        """Close the admin HTTP client."""
        self._admin.close()


@contextlib.contextmanager
def run_emulator(
    *,
    token: str = DEMO_TOKEN,
    extra_tokens: tuple[str, ...] = (),
    admin_token: str = DEFAULT_ADMIN_TOKEN,
    host: str = "127.0.0.1",
    port: int = 0,
    cdn_port: int = 0,
    state_file: str | Path | None = None,
    clock: Clock = time.time,
    state: EmulatorState | None = None,
    **knobs: Any,
) -> Iterator[EmulatorHandle]:
    """Serve an emulator in a background thread for the duration of the block.

    ``knobs`` are :class:`~krea_dagster.emulator.config.EmulatorConfig` fields
    (``time_scale=0.001``, ``error_5xx_rate=0.2``, ``seed=7``...). A prepared ``state`` (for
    example one filled with thousands of jobs directly) is served as is; ``token`` must then be
    one of its tokens and the other state options are ignored.
    """
    if state is None:
        config = EmulatorConfig()
        config.update(knobs)
        store = SqliteStore(state_file) if state_file else MemoryStore()
        state = EmulatorState(config, clock=clock, store=store, tokens=(token, *extra_tokens))
    server = EmulatorServer(state, host=host, port=port, cdn_port=cdn_port, admin_token=admin_token)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            run(server.serve)
        except BaseException as error:  # surfaced to the test thread below
            failure.append(error)

    thread = threading.Thread(target=serve, name="krea-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started and not failure and time.monotonic() < deadline:
        time.sleep(0.002)
    if failure or not server.started:
        server.stop()
        raise RuntimeError(f"the emulator did not start: {failure[0] if failure else 'timeout'}")
    handle = EmulatorHandle(**server.info(token))
    try:
        yield handle
    finally:
        handle.close()
        server.stop()
        thread.join(timeout=10)


class SpawnedEmulator(EmulatorHandle):
    """An emulator in a subprocess (``krea-emulator serve``) that tests can kill and restart."""

    def __init__(self, cli_args: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        self.cli_args = cli_args
        self.env = env
        descriptor, log_path = tempfile.mkstemp(prefix="krea-emulator-", suffix=".log")
        os.close(descriptor)
        self.log_path = Path(log_path)
        self.process, info = self._start(cli_args)
        super().__init__(**info)

    def _start(self, cli_args: tuple[str, ...]) -> tuple[subprocess.Popen[str], dict[str, str]]:
        command = [sys.executable, "-c", _BOOTSTRAP, "serve", *cli_args]
        env = {**os.environ, **(self.env or {})}
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )
        stdout = process.stdout
        assert stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(STARTUP_TIMEOUT_SECONDS)
        if not line or not line[0].strip():
            process.kill()
            raise RuntimeError(f"krea-emulator did not start: {self.stderr_text()[-2000:]}")
        return process, json.loads(line[0])

    @property
    def pid(self) -> int:
        """Process id of the current emulator process."""
        return self.process.pid

    def stderr_text(self) -> str:
        """Everything the emulator processes wrote to standard error so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL the emulator (a crash: nothing is flushed)."""
        self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM the emulator and wait for its clean exit; returns the exit code."""
        self.process.terminate()
        return self.process.wait(timeout=timeout)

    def restart(self, *extra_args: str, same_ports: bool = True) -> None:
        """Start the emulator again (after kill/terminate), by default on the same ports."""
        if self.process.poll() is None:
            self.terminate()
        args = list(self.cli_args) + list(extra_args)
        if same_ports:
            args += [
                "--port",
                self.base_url.rsplit(":", 1)[1],
                "--cdn-port",
                self.cdn_url.rsplit(":", 1)[1],
            ]
        self.process, info = self._start(tuple(args))
        self.base_url, self.cdn_url = info["base_url"], info["cdn_url"]

    def close(self) -> None:
        """Stop the process and remove the log file."""
        super().close()
        if self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate()
        if self.process.poll() is None:
            self.kill()
        if self.process.stdout:
            self.process.stdout.close()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> SpawnedEmulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def spawn_emulator(*cli_args: str, env: dict[str, str] | None = None) -> SpawnedEmulator:
    """Start ``krea-emulator serve *cli_args`` in a subprocess; use as a context manager."""
    return SpawnedEmulator(tuple(cli_args), env)
