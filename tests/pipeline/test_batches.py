"""Registering batches without the daemon: partitions, prompt_source versions, and staying in sync."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from krea_dagster import build_krea_sensors
from krea_dagster.partitions import register_batches

from .conftest import make_resource, materialize, prompt_rows, write_batch
from .test_sensors import tick

REPO = Path(__file__).resolve().parents[2]


def test_register_batches_adds_partitions_and_pays_nothing(build, emulator, instance, prompts_dir):
    """Each prompt file becomes a partition and a prompt_source version; no job is submitted."""
    write_batch(prompts_dir, "alpha", prompt_rows(2))
    write_batch(prompts_dir, "beta", prompt_rows(1))
    assets = build()
    first = register_batches(assets, instance)
    assert (first.added, first.existing, first.recorded) == (
        ["alpha", "beta"],
        [],
        ["alpha", "beta"],
    )
    assert instance.get_dynamic_partitions(assets.partitions_def.name) == ["alpha", "beta"]
    again = register_batches(assets, instance)
    assert (again.added, again.existing, again.recorded) == ([], ["alpha", "beta"], [])
    write_batch(prompts_dir, "beta", prompt_rows(3))
    changed = register_batches(assets, instance)
    assert changed.recorded == ["beta"]
    assert emulator.stats()["jobs_created"] == 0


def test_register_batches_rejects_an_unknown_batch_by_name(build, instance, prompts_dir):
    """Asking for a batch with no file names the folder and the batches it has."""
    write_batch(prompts_dir, "alpha", prompt_rows(1))
    with pytest.raises(ValueError, match=r"no batch named gamma .*batches there: alpha"):
        register_batches(build(), instance, only=["gamma"])


def test_discovery_does_not_rerun_batches_registered_with_the_same_file(
    build, krea, instance, prompts_dir
):
    """A first discovery tick (empty cursor) skips registered, unchanged batches and runs a changed one."""
    write_batch(prompts_dir, "alpha", prompt_rows(2))
    write_batch(prompts_dir, "beta", prompt_rows(2))
    assets = build()
    register_batches(assets, instance)
    (sensor,) = [s for s in build_krea_sensors(assets) if s.name.endswith("batch_discovery")]
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    assert tick(sensor, instance, defs).run_requests == []
    write_batch(prompts_dir, "beta", prompt_rows(3))
    assert [r.partition_key for r in tick(sensor, instance, defs).run_requests] == ["beta"]


def test_rerunning_an_unchanged_batch_leaves_images_in_sync(build, emulator, instance, prompts_dir):
    """Re-materializing prompts and jobs of an unchanged batch keeps images FRESH (not Unsynced)."""
    write_batch(prompts_dir, "alpha", prompt_rows(2))
    assets = build()
    register_batches(assets, instance)
    krea = make_resource(emulator)
    assert materialize(assets, "alpha", instance=instance, krea=krea).success
    assert materialize(
        assets, "alpha", instance=instance, krea=krea, roles=("prompts", "jobs")
    ).success
    resolver = get_stale_status_resolver(instance, [assets.prompts, assets.jobs, assets.images])
    assert resolver.get_status(assets.images.key, "alpha") == StaleStatus.FRESH
    assert emulator.stats()["jobs_created"] == 2


def test_cli_registers_the_batches_of_a_code_location(tmp_path):
    """`krea-dagster register-batches demo` in the repository adds the demo's batches to DAGSTER_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KREA_")}
    env |= {"DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "krea_dagster", "register-batches", "demo"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "demo: 3 batch(es) added (city, ocean, spring), 0 already registered" in done.stdout
    unknown = subprocess.run(
        [*command[:-1], "nope"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert unknown.returncode == 2
    assert "no krea-dagster node named nope" in unknown.stderr
    assert "banners, catalog, demo" in unknown.stderr


def test_cli_registers_a_yaml_instance_of_a_create_dagster_style_project(tmp_path):
    """In a src/-layout dg project with lazy @dg.definitions, the command finds the YAML instance."""
    project = tmp_path / "my-project"
    package = project / "src" / "my_project"
    instance_dir = package / "defs" / "posters"
    (instance_dir / "prompts").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "my-project"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "my_project"\n'
    )
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n@dg.definitions\n"
        "def defs():\n    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    (instance_dir / "defs.yaml").write_text(
        "type: krea_dagster.KreaImagesComponent\nattributes:\n  name_prefix: posters\n"
        "  prompts: prompts\n  image_model: bfl/flux-1-dev\n  store: krea-output/images\n"
        "  ledger: sqlite:///krea-output/ledger.db\n"
        '  krea:\n    api_key: "{{ env.KREA_API_KEY }}"\n'
    )
    write_batch(instance_dir / "prompts", "example", prompt_rows(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KREA_")}
    env |= {"DAGSTER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    (tmp_path / "home").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "krea_dagster", "register-batches"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "posters: 1 batch(es) added (example), 0 already registered" in done.stdout
    assert not (package / "defs" / "posters" / "krea-output").exists()
