"""A production-like Dagster deployment in subprocesses, for the system tests.

Topology, as on Kubernetes or Docker, only on one machine:

- **code server** ``dagster api grpc -f tests/system/krea_location.py``: the only process that
  holds ``KREA_API_KEY``; it evaluates the sensors and starts a run worker per run;
- **daemon** ``dagster-daemon run -w workspace.yaml`` and, when asked, the **webserver**
  ``dagster-webserver -w workspace.yaml``; the workspace points at the code server over gRPC;
- the **instance** is ``deploy/dagster.yaml`` (PostgreSQL run, event-log and schedule storage,
  queued run coordinator, run retries, pools) with literal connection values and shorter
  intervals, so the shipped deployment config is what runs;
- the krea **ledger** on PostgreSQL, the **image store** on ``s3://`` (moto server) and Krea
  itself as a **krea-emulator subprocess**.

Every process runs in its own session with logs in ``<root>/logs``; ``stop()`` ends each
process group (a run worker is in its code server's group) and then proves that no process
carrying this deployment's marker variable is left.
"""

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import httpx
import psutil
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from free_ports import free_port
from sqlalchemy.engine import make_url

from krea_dagster.emulator.testing import SpawnedEmulator

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCATION_FILE = Path(__file__).with_name("krea_location.py")
DEPLOY_CONFIG = REPO_ROOT / "deploy" / "dagster.yaml"
LOCATION_NAME = "krea_system"
PREFIX = "system"
SESSION_ENV = "KREA_SYSTEM_SESSION"
BIN = Path(sys.executable).parent
IMAGES_KEY = dg.AssetKey([PREFIX, "images"])
REPORT_KEY = dg.AssetKey([PREFIX, "image_report"])
JOBS_KEY = dg.AssetKey([PREFIX, "jobs"])
CHECK_NAMES = (
    "no_failed_prompts",
    "every_prompt_resolved",
    "images_have_requested_size",
    "no_duplicate_paid_jobs",
)
START_TIMEOUT = 120.0
# Variables of the developer's shell that must not reach the deployment's processes.
SCRUBBED_ENV = ("KREA_API_KEY", "KREA_BASE_URL", "KREA_DAGSTER_CRASH_AT", "DAGSTER_HOME")


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy (and return it), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = diagnostics() if diagnostics else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{detail}")
        time.sleep(interval)


def write_prompts(directory: Path, batch: str, prompts: Sequence[str]) -> Path:
    """One CSV batch file with a ``prompt`` column, written aside then renamed (atomic)."""
    path = directory / f"{batch}.csv"
    staging = directory / f".{batch}.csv.tmp"
    with staging.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([prompt] for prompt in prompts)
    staging.rename(path)
    return path


def session_processes(marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``SESSION_ENV=marker``."""
    needle = f"{SESSION_ENV}={marker}"
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(SESSION_ENV) == marker or needle in " ".join(
                process.cmdline()
            ):
                found.append(process)
    return found


class ManagedProcess:
    """One long-running command in its own session, its output appended to a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_dir: Path
    ) -> None:
        self.name = name
        self.argv = [str(part) for part in argv]
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends its children too
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL this process only (its children, if any, are left to fend for themselves)."""
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left of it."""
        if self.popen is None:
            return
        group = self.popen.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def instance_yaml(dagster_db_url: str) -> dict[str, Any]:
    """deploy/dagster.yaml with literal PostgreSQL settings and test-speed intervals."""
    config: dict[str, Any] = yaml.safe_load(DEPLOY_CONFIG.read_text(encoding="utf-8"))
    url = make_url(dagster_db_url)
    config["storage"]["postgres"]["postgres_db"].update(
        hostname=url.host,
        port=url.port,
        db_name=url.database,
        username=url.username,
        password=url.password or "",
    )
    # The queue is polled every second instead of every 5 s. (dequeue_use_threads would launch
    # queued runs in parallel, but on 2 cores two run workers importing at once are slower
    # than one after the other: measured 52 s against 40 s for the end-to-end test.)
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    # A killed worker's pool slot comes back after 2 s instead of a minute or two.
    config["run_monitoring"].update(poll_interval_seconds=2, free_slots_after_run_end_seconds=2)
    return config


class Deployment:
    """Code server + daemon (+ webserver) on a PostgreSQL instance; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        dagster_db_url: str,
        ledger_url: str,
        store_uri: str,
        s3_env: Mapping[str, str],
        emulator: SpawnedEmulator,
        api_key: str,
        location_env: Mapping[str, str] | None = None,
        location_file: Path = LOCATION_FILE,
    ) -> None:
        self.root = root
        self.home = root / "dagster_home"
        self.prompts_dir = root / "prompts"
        self.log_dir = root / "logs"
        for directory in (self.home, self.prompts_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.dagster_db_url = dagster_db_url
        self.ledger_url = ledger_url
        self.store_uri = store_uri
        self.emulator = emulator
        self.api_key = api_key
        self.marker = uuid.uuid4().hex
        self.grpc_port = free_port()
        self.webserver_port = free_port()
        (self.home / "dagster.yaml").write_text(
            yaml.safe_dump(instance_yaml(dagster_db_url), sort_keys=False), encoding="utf-8"
        )
        self.workspace = self.home / "workspace.yaml"
        self.workspace.write_text(
            yaml.safe_dump(
                {
                    "load_from": [
                        {
                            "grpc_server": {
                                "host": "127.0.0.1",
                                "port": self.grpc_port,
                                "location_name": LOCATION_NAME,
                            }
                        }
                    ]
                }
            ),
            encoding="utf-8",
        )
        base = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        base.update(s3_env)
        base.update(
            {
                "DAGSTER_HOME": str(self.home),
                SESSION_ENV: self.marker,
                "PYTHONUNBUFFERED": "1",
                # Run retries are started by this daemon; every second instead of every 5 s.
                "DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1",
            }
        )
        self.base_env = base
        # Only the code server (and the run workers it starts) see the token and krea settings.
        self.location_env = {
            **base,
            "KREA_PROMPTS_DIR": str(self.prompts_dir),
            "KREA_STORE_URI": store_uri,
            "KREA_LEDGER_URL": ledger_url,
            "KREA_BASE_URL": emulator.base_url,
            "KREA_API_KEY": api_key,
            **(location_env or {}),
        }
        self.code_server = ManagedProcess(
            "code-server",
            [
                BIN / "dagster",
                "api",
                "grpc",
                "-f",
                location_file,
                "-h",
                "127.0.0.1",
                "-p",
                self.grpc_port,
                "--location-name",
                LOCATION_NAME,
            ],
            env=self.location_env,
            cwd=root,
            log_dir=self.log_dir,
        )
        self.daemon = ManagedProcess(
            "daemon",
            [BIN / "dagster-daemon", "run", "-w", self.workspace],
            env=base,
            cwd=self.home,
            log_dir=self.log_dir,
        )
        self.webserver = ManagedProcess(
            "webserver",
            [
                BIN / "dagster-webserver",
                "-w",
                self.workspace,
                "-h",
                "127.0.0.1",
                "-p",
                self.webserver_port,
            ],
            env=base,
            cwd=self.home,
            log_dir=self.log_dir,
        )
        self._instance: dg.DagsterInstance | None = None

    # -- processes -------------------------------------------------------------------------

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.daemon, self.webserver, self.code_server]

    @property
    def webserver_url(self) -> str:
        return f"http://127.0.0.1:{self.webserver_port}"

    def start(self, *, webserver: bool = False) -> None:
        self.code_server.start()
        self._wait_code_server()
        self.start_daemon()
        if webserver:
            self.webserver.start()
            self.wait_webserver()

    def _wait_code_server(self) -> None:
        from dagster._grpc.client import DagsterGrpcClient

        client = DagsterGrpcClient(port=self.grpc_port, host="127.0.0.1")

        def answers() -> bool:
            if not self.code_server.alive:
                raise RuntimeError(
                    f"the code server exited:\n{self.code_server.log_text()[-4000:]}"
                )
            try:
                client.ping("krea")
            except Exception:
                return False
            return True

        wait_for(answers, timeout=START_TIMEOUT, what="code server answers gRPC pings")

    def start_daemon(self) -> None:
        started = time.time()
        self.daemon.start()

        def sensor_daemon_beats() -> bool:
            if not self.daemon.alive:
                raise RuntimeError(f"the daemon exited:\n{self.daemon.log_text()[-4000:]}")
            beats = self.instance.get_daemon_heartbeats()
            beat = beats.get("SENSOR")
            return beat is not None and beat.timestamp >= started

        wait_for(
            sensor_daemon_beats,
            timeout=START_TIMEOUT,
            what="the sensor daemon heartbeats",
            diagnostics=self.diagnostics,
        )

    def wait_webserver(self) -> None:
        def answers() -> bool:
            if not self.webserver.alive:
                raise RuntimeError(f"the webserver exited:\n{self.webserver.log_text()[-4000:]}")
            try:
                response = httpx.get(
                    f"{self.webserver_url}/server_info", timeout=5, trust_env=False
                )
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        wait_for(answers, timeout=START_TIMEOUT, what="the webserver answers /server_info")

    def stop(self) -> None:
        """Stop every process (daemon first: nothing new is launched meanwhile); no orphans."""
        for process in self.processes:
            process.stop()
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None
        try:
            wait_for(
                lambda: not session_processes(self.marker),
                timeout=15,
                what="every process of the deployment exits",
                interval=0.2,
            )
        except TimeoutError:
            orphans = session_processes(self.marker)
            listing = "\n".join(f"  {p.pid} {' '.join(p.cmdline())}" for p in orphans)
            for process in orphans:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            raise AssertionError(
                f"processes outlived the deployment (now killed):\n{listing}"
            ) from None

    # -- the instance, as the webserver sees it -----------------------------------------------

    @property
    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = dg.DagsterInstance.from_config(str(self.home))
        return self._instance

    def runs(self, batch: str | None = None) -> list[Any]:
        tags = {"krea/batch": batch} if batch else {}
        return list(self.instance.get_runs(filters=RunsFilter(tags=tags)))

    def materialized(self, key: dg.AssetKey) -> set[str]:
        return set(self.instance.get_materialized_partitions(key))

    def check_results(self, run_id: str) -> dict[str, bool]:
        records = self.instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        results = {}
        for record in records:
            evaluation = record.dagster_event.event_specific_data
            results[evaluation.check_name] = evaluation.passed
        return results

    def run_pid(self, run_id: str) -> int | None:
        """The run worker's pid, from the code server's "Started process for run" event."""
        for record in self.instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            message = record.message or ""
            if "Started process for run (pid:" in message:
                return int(message.split("pid:")[1].split(")")[0])
        return None

    def images_runs(self, batch: str) -> list[Any]:
        return [
            run
            for run in self.runs(batch)
            if run.asset_selection and IMAGES_KEY in run.asset_selection
        ]

    def latest_metadata(self, key: dg.AssetKey, batch: str) -> dict[str, Any]:
        """Metadata values of the latest materialization of ``key`` for ``batch``."""
        result = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[batch]), limit=1
        )
        (record,) = result.records
        materialization = record.asset_materialization
        assert materialization is not None
        return {name: value.value for name, value in materialization.metadata.items()}

    def materialized_for(self, batch: str) -> set[str]:
        """Which of images and the downstream report are materialized for ``batch``."""
        return {key.path[-1] for key in (IMAGES_KEY, REPORT_KEY) if batch in self.materialized(key)}

    def batch_done(self, batches: Iterable[str]) -> bool:
        """images and the downstream report are materialized for every batch, and every run of
        those batches has finished (a run is still STARTED for a moment after its last asset)."""
        wanted = set(batches)
        if not (
            wanted <= self.materialized(IMAGES_KEY) and wanted <= self.materialized(REPORT_KEY)
        ):
            return False
        return all(run.is_finished for batch in wanted for run in self.runs(batch))

    def timeline(self, since: float) -> str:
        """When each run was created, started and ended, in seconds after ``since`` (epoch)."""
        lines = []
        records = sorted(self.instance.get_run_records(), key=lambda r: r.create_timestamp)
        for record in records:
            run = record.dagster_run
            keys = sorted(k.path[-1] for k in (run.asset_selection or []))
            created = record.create_timestamp.timestamp() - since
            start = (record.start_time or since) - since
            end = (record.end_time or since) - since
            lines.append(
                f"  {run.tags.get('krea/batch', '?'):<10} {'+'.join(keys):<20} "
                f"created {created:5.1f} started {start:5.1f} ended {end:5.1f} {run.status.value}"
            )
        return "\n".join(lines)

    def diagnostics(self) -> str:
        lines = ["runs:"]
        with contextlib.suppress(Exception):
            for run in self.runs():
                lines.append(
                    f"  {run.run_id[:8]} {run.status.value:<10} {run.tags.get('krea/batch')} "
                    f"{sorted('/'.join(k.path) for k in (run.asset_selection or []))} "
                    f"retry={run.tags.get('dagster/retry_number', '0')}"
                )
                if run.status == DagsterRunStatus.FAILURE:
                    lines.extend(self._why_not_retried(run))
        with contextlib.suppress(Exception):
            lines.append(f"emulator: {self.emulator.stats()}")
        for process in self.processes:
            if process.log_path.exists():
                lines.append(f"--- {process.name} log (tail) ---")
                lines.append(process.log_text()[-3000:])
        return "\n".join(lines)

    def _why_not_retried(self, run: Any) -> list[str]:
        """What Dagster decided about retrying a failed run: its retry tags and engine events."""
        tags = {
            name: run.tags[name]
            for name in (
                "dagster/will_retry",
                "dagster/failure_reason",
                "dagster/auto_retry_run_id",
            )
            if name in run.tags
        }
        lines = [f"    tags {tags}"]
        for record in self.instance.all_logs(run.run_id)[-8:]:
            lines.append(f"    {record.dagster_event_type}: {(record.message or '')[:200]}")
        return lines

    def sensor_ticks(self, name: str, limit: int = 20) -> list[Any]:
        """The latest ticks of the sensor ``name``, newest first, as the daemon recorded them."""
        return [
            tick
            for state in self.instance.all_instigator_state()
            if state.instigator_name == name
            for tick in self.instance.get_ticks(
                state.instigator_origin_id, state.selector_id, limit=limit
            )
        ]

    def failed_runs(self) -> list[Any]:
        return [run for run in self.runs() if run.status == DagsterRunStatus.FAILURE]


@contextlib.contextmanager
def location_webserver(
    location: Path, *, home: Path, env: Mapping[str, str], log_path: Path
) -> Iterator[str]:
    """``dagster-webserver -f location`` on the instance in ``home`` (``DAGSTER_HOME``), with
    the location's settings in ``env`` and no other ``KREA_*`` variable; yields its URL once it
    answers, and ends its process group after."""
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [BIN / "dagster-webserver", "-f", location, "-h", "127.0.0.1", "-p", str(port)],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("KREA_")},
                **env,
                "DAGSTER_HOME": str(home),
                "PYTHONPATH": str(REPO_ROOT),
            },
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(log_path.read_text(errors="replace")[-4000:])
        try:
            return httpx.get(f"{url}/server_info", timeout=5, trust_env=False).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, timeout=START_TIMEOUT, what="the webserver answers /server_info")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- secret scanning ----------------------------------------------------------------------------


def _blob(value: Any) -> bytes:
    """A cell as bytes; zlib-compressed blobs (Dagster's snapshots) decompressed as well."""
    import zlib

    if value is None:
        return b""
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        with contextlib.suppress(zlib.error):
            return value + b"\n" + zlib.decompress(value)
        return value
    return str(value).encode("utf-8", errors="replace")


def database_text(url: str) -> dict[str, bytes]:
    """Every table of a database as one blob of its cells (all columns, all rows)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        blobs = {}
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                cells = [_blob(value) for row in conn.execute(sa.select(table)) for value in row]
                blobs[table.name] = b"\n".join(cells)
        return blobs
    finally:
        engine.dispose()


def files_text(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root``, by path relative to it."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def store_text(store_uri: str) -> dict[str, bytes]:
    """Every object under an ``s3://`` prefix (endpoint and keys from the AWS_* environment)."""
    import s3fs

    fs = s3fs.S3FileSystem()
    prefix = store_uri.removeprefix("s3://")
    return {key: fs.cat_file(key) for key in fs.find(prefix)}


def hits(blobs: Mapping[str, bytes], needles: Sequence[bytes]) -> list[str]:
    """Names of the blobs that contain any of ``needles``."""
    return [name for name, blob in blobs.items() if any(needle in blob for needle in needles)]


@contextlib.contextmanager
def s3_environment(deployed: Deployment) -> Iterator[None]:
    """The deployment's AWS_* variables in this process, for s3fs."""
    names = [name for name in deployed.base_env if name.startswith("AWS_")]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: deployed.base_env[name] for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
