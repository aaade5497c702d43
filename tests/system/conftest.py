"""Fixtures of the system tests: a deployment factory, a distinctive token, artifacts."""

import contextlib
import json
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from krea_dagster.emulator.testing import SpawnedEmulator, spawn_emulator

from .harness import LOCATION_FILE, REPO_ROOT, Deployment

ARTIFACTS = REPO_ROOT / "test-artifacts" / "system"


def new_token() -> str:
    """A Krea-style ``id:secret`` token nobody else uses, so a grep for it means a leak."""
    return f"krsys{secrets.token_hex(4)}:kSECRET{secrets.token_hex(16)}"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``test-artifacts/system/`` (git-ignored): screenshots and copies of failing logs."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@contextlib.contextmanager
def deployment(
    root: Path,
    *,
    postgres_server: Any,
    s3_env: Mapping[str, str],
    s3_bucket: str,
    emulator_knobs: Mapping[str, Any],
    token: str | None = None,
    webserver: bool = False,
    location_env: Mapping[str, str] | None = None,
    location_file: Path = LOCATION_FILE,
    start: bool = True,
) -> Iterator[Deployment]:
    """A ``Deployment`` with its own databases, S3 prefix and emulator; all torn down.

    With ``start=False`` no Dagster process is started: the instance, ledger, store and emulator
    are ready for run workers the test starts itself. ``location_file`` is the code location the
    code server serves (default: ``krea_location.py``).
    """
    suffix = secrets.token_hex(5)
    dagster_db = f"krea_sys_dagster_{suffix}"
    ledger_db = f"krea_sys_ledger_{suffix}"
    dagster_url = postgres_server.create_database(dagster_db)
    ledger_url = postgres_server.create_database(ledger_db)
    token = token or new_token()
    knobs_file = root / "emulator.json"
    root.mkdir(parents=True, exist_ok=True)
    knobs_file.write_text(json.dumps(dict(emulator_knobs)), encoding="utf-8")
    emulator: SpawnedEmulator | None = None
    deployed: Deployment | None = None
    try:
        emulator = spawn_emulator("--config", str(knobs_file), "--token", token)
        deployed = Deployment(
            root,
            dagster_db_url=dagster_url,
            ledger_url=ledger_url,
            store_uri=f"s3://{s3_bucket}/system/{root.name}-{suffix}",
            s3_env=s3_env,
            emulator=emulator,
            api_key=token,
            location_env=location_env,
            location_file=location_file,
        )
        if start:
            deployed.start(webserver=webserver)
        yield deployed
    finally:
        try:
            if deployed is not None:
                # Logs and the run list of every deployment land in test-artifacts/system/<name>/
                # (git-ignored): what a failure in CI is diagnosed from.
                kept = keep_logs(deployed, root.name)
                with contextlib.suppress(Exception):
                    (kept / "runs.txt").write_text(deployed.diagnostics(), encoding="utf-8")
                deployed.stop()
        finally:
            if emulator is not None:
                pid = emulator.pid
                emulator.close()
                assert not _alive(pid), f"the emulator (pid {pid}) outlived its test"
            for name in (dagster_db, ledger_db):
                with contextlib.suppress(Exception):
                    postgres_server.drop_database(name)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def deployment_factory(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: Any,
    s3_env: dict[str, str],
    s3_bucket: str,
) -> Iterator[Callable[..., Deployment]]:
    """``factory(name, emulator_knobs=..., ...)`` starts a deployment that lives for the module."""
    with contextlib.ExitStack() as stack:

        def make(name: str, **kwargs: Any) -> Deployment:
            root = tmp_path_factory.mktemp(name)
            return stack.enter_context(
                deployment(
                    root,
                    postgres_server=postgres_server,
                    s3_env=s3_env,
                    s3_bucket=s3_bucket,
                    **kwargs,
                )
            )

        yield make


def keep_logs(deployed: Deployment, name: str) -> Path:
    """Copy a deployment's process logs to test-artifacts/system/<name>/ (for a failing run)."""
    target = ARTIFACTS / name
    target.mkdir(parents=True, exist_ok=True)
    for log in deployed.log_dir.glob("*.log"):
        shutil.copy(log, target / log.name)
    return target
