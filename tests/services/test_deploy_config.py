"""deploy/dagster.yaml loads with the installed Dagster against a real PostgreSQL server."""

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

# pytest's default import mode puts tests/ on sys.path for tests/conftest.py when tests/ has no
# __init__.py; with a tests package the module is tests.fixtures_services instead.
try:
    from fixtures_services import REPO_ROOT, service_unavailable
except ImportError:  # pragma: no cover - depends on how tests/ is laid out
    from tests.fixtures_services import REPO_ROOT, service_unavailable

pytestmark = pytest.mark.system

DEPLOY_CONFIG = REPO_ROOT / "deploy" / "dagster.yaml"


@pytest.fixture
def deploy_home(
    tmp_path: Path, fresh_pg_database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A DAGSTER_HOME holding deploy/dagster.yaml, its env vars pointing at a fresh database."""
    try:
        import dagster_postgres  # noqa: F401
    except ImportError:
        service_unavailable(
            "dagster-postgres is not installed; deploy/dagster.yaml needs it "
            "(add 'dagster-postgres>=0.29.27,<0.30' to the project's test/postgres extras)"
        )
    url = make_url(fresh_pg_database("dagster_deploy"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_CONFIG, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_POSTGRES_HOSTNAME", url.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_POSTGRES_PORT", str(url.port))
    monkeypatch.setenv("DAGSTER_POSTGRES_DB", url.database or "")
    monkeypatch.setenv("DAGSTER_POSTGRES_USER", url.username or "postgres")
    monkeypatch.setenv("DAGSTER_POSTGRES_PASSWORD", "")  # the test server trusts 127.0.0.1
    yield home


def test_deploy_config_brings_up_a_postgres_instance_with_the_krea_pool_limit(
    deploy_home: Path,
) -> None:
    import dagster as dg
    import sqlalchemy as sa
    from dagster._core.instance.config import PoolGranularity
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    with dg.DagsterInstance.from_config(str(deploy_home)) as instance:
        # Storage: all three on PostgreSQL.
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)

        # Queue, retries, monitoring, telemetry as configured.
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 2
        assert concurrency.pool_config.pool_granularity == PoolGranularity.OP
        assert concurrency.run_queue_config is not None
        assert concurrency.run_queue_config.max_concurrent_runs == 10
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.run_monitoring_enabled
        assert instance.telemetry_enabled is False

        # A step in pool "krea" runs on this instance; its run lands in PostgreSQL and the pool
        # gets the configured default limit on first use.
        @dg.asset(pool="krea")
        def krea_probe() -> int:
            return 1

        result = dg.materialize([krea_probe], instance=instance)
        assert result.success
        pool = instance.event_log_storage.get_concurrency_info("krea")
        assert pool.slot_count == 2 and pool.using_default_limit

        # The limit is enforced by the storage: a third concurrent claim waits.
        run_id = str(uuid.uuid4())
        claims = [
            instance.event_log_storage.claim_concurrency_slot("krea", run_id, f"step_{i}")
            for i in range(3)
        ]
        assert [c.is_claimed for c in claims] == [True, True, False]
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)

    db_url = make_url(
        f"postgresql+psycopg://{os.environ['DAGSTER_POSTGRES_USER']}@"
        f"{os.environ['DAGSTER_POSTGRES_HOSTNAME']}:{os.environ['DAGSTER_POSTGRES_PORT']}/"
        f"{os.environ['DAGSTER_POSTGRES_DB']}"
    )
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            run_ids = conn.execute(sa.text("SELECT run_id FROM runs")).scalars().all()
        assert run_ids == [result.run_id]
    finally:
        engine.dispose()

    # The yaml's advice for a krea-specific limit works: the CLI sets it in the database, and it
    # then wins over the default.
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "instance", "concurrency", "set", "krea", "3"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with dg.DagsterInstance.from_config(str(deploy_home)) as instance:
        pool = instance.event_log_storage.get_concurrency_info("krea")
        assert pool.slot_count == 3 and not pool.using_default_limit
