"""Fixtures for the Dagster layer: a real emulator over HTTP, temporary stores, ledgers and instances."""

import csv
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from krea_dagster import KreaResource, build_krea_image_assets
from krea_dagster.emulator.testing import EmulatorHandle, run_emulator
from krea_dagster.engine.ledger import utcnow
from krea_dagster.engine.ledger.schema import submissions_table
from krea_dagster.node import KreaImageAssets

TEST_MODEL = "bfl/flux-1-dev"
# Emulator time: Flux's ~7 s average becomes ~35 ms, so a batch renders in well under a second.
TEST_TIME_SCALE = 0.005


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[EmulatorHandle]:
    with run_emulator(time_scale=TEST_TIME_SCALE, seed=7) as emulator:
        yield emulator


@pytest.fixture
def emulator(emulator_session: EmulatorHandle) -> EmulatorHandle:
    """The session emulator, reset (jobs, counters, knobs, balances) for this test."""
    emulator_session.reset(config=True, accounts=True)
    emulator_session.configure(time_scale=TEST_TIME_SCALE, seed=7)
    return emulator_session


@pytest.fixture
def krea(emulator: EmulatorHandle) -> KreaResource:
    return make_resource(emulator)


def make_resource(emulator: EmulatorHandle, **overrides: Any) -> KreaResource:
    settings: dict[str, Any] = {
        "api_key": emulator.token,
        "base_url": emulator.base_url,
        "poll_interval": 0.05,
        "connect_timeout": 1.0,
        "write_timeout": 1.0,
        "read_timeout": 2.0,
        "rate_limit_budget": 2.0,
    }
    settings.update(overrides)
    return KreaResource(**settings)


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prompts"
    directory.mkdir()
    return directory


def write_batch(directory: Path, name: str, rows: Sequence[dict[str, Any]]) -> Path:
    """A CSV batch file with the union of the rows' columns (prompt first)."""
    columns: list[str] = ["prompt"]
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    path = directory / f"{name}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def prompt_rows(
    count: int, text: str = "test prompt number", **params: Any
) -> list[dict[str, Any]]:
    return [{"prompt": f"{text} {index}", **params} for index in range(count)]


@pytest.fixture
def build(tmp_path: Path, prompts_dir: Path) -> Callable[..., KreaImageAssets]:
    def factory(prefix: str = "krea_test", **kwargs: Any) -> KreaImageAssets:
        kwargs.setdefault("prompts", prompts_dir)
        kwargs.setdefault("model", TEST_MODEL)
        kwargs.setdefault("store", tmp_path / "store")
        kwargs.setdefault("ledger", f"sqlite:///{tmp_path / 'ledger.db'}")
        return build_krea_image_assets(prefix, **kwargs)

    return factory


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def materialize(
    assets: KreaImageAssets,
    batch: str,
    *,
    instance: dg.DagsterInstance,
    krea: KreaResource,
    roles: Sequence[str] = ("prompts", "jobs", "images"),
    tags: dict[str, str] | None = None,
    run_config: Any = None,
    raise_on_error: bool = False,
) -> dg.ExecuteInProcessResult:
    """Materialize a batch through the chosen assets (upstream ones are loaded, not rerun)."""
    name = assets.partitions_def.name or ""
    if not instance.has_dynamic_partition(name, batch):
        instance.add_dynamic_partitions(name, [batch])
    selected = {"prompts": assets.prompts, "jobs": assets.jobs, "images": assets.images}
    selection = [selected[role] for role in roles]
    return dg.materialize(
        [assets.source, *selected.values()],
        selection=selection,
        partition_key=batch,
        instance=instance,
        resources={assets.resource_key: krea},
        tags=tags,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def manifest_of(result: dg.ExecuteInProcessResult, assets: KreaImageAssets) -> Any:
    return result.output_for_node(assets.images.node_def.name)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        evaluation.check_name: evaluation.passed
        for evaluation in result.get_asset_check_evaluations()
    }


def record_pending_rows(
    assets: KreaImageAssets, jobs: Sequence[Any], batch: str, *, krea_clock: bool
) -> None:
    """The ledger rows the jobs step would have written for jobs submitted straight to an
    emulator's state (thousands of POSTs would be slow), ``queued``; ``krea_created_at`` is
    each job's own creation time with ``krea_clock``, else now."""
    now = utcnow()
    rows = [
        {
            "submission_id": str(uuid.uuid4()),
            "scope": assets.prefix,
            "batch": batch,
            "generation": 1,
            "prompt_key": f"key{index}",
            "attempt": 1,
            "model": "bfl/flux-1-dev",
            "request_hash": "h",
            "request_json": "{}",
            "state": "queued",
            "job_id": job.id,
            "intent_at": now,
            "submitted_at": now,
            "krea_created_at": (
                datetime.fromtimestamp(job.created_us / 1e6, UTC) if krea_clock else now
            ),
            "updated_at": now,
        }
        for index, job in enumerate(jobs)
    ]
    ledger = assets.pipeline.ledger
    ledger.ensure_generation(assets.prefix, batch)
    with ledger.transaction() as conn:
        conn.execute(submissions_table.insert(), rows)


@pytest.fixture(autouse=True)
def unreachable_object_store(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a test marked ``unreachable_object_store``: every S3 client points at a closed
    loopback port, so an ``s3://`` reference is unreadable here and never reaches the internet.

    Without this the case would depend on the machine: with the test services' S3 server the
    bucket is missing ("no such file"); with no endpoint set, s3fs would try AWS itself.
    """
    if request.node.get_closest_marker("unreachable_object_store") is None:
        return
    import s3fs

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    # A client cached by an earlier test would keep its endpoint: start from an empty cache.
    monkeypatch.setattr(s3fs.S3FileSystem, "_cache", {})
