"""Relative prompts, store and SQLite ledger paths resolve against the project root, not the cwd."""

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg

from krea_dagster.engine.paths import ROOT_ENV, InstancePaths, project_root_of

from .conftest import make_resource, materialize, prompt_rows, write_batch

REPO = Path(__file__).resolve().parents[2]

DEFINITIONS = textwrap.dedent(
    """
    from krea_dagster import build_krea_image_assets

    posters = build_krea_image_assets(
        "posters",
        prompts="data/prompts",
        model="bfl/flux-1-dev",
        defaults={"width": 512, "height": 512},
        store="output/images",
        ledger="sqlite:///output/ledger.db",
    )
    """
)


def make_project(root: Path) -> Path:
    """A project folder: pyproject.toml, src/posters_project/defs.py and a prompt batch."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'posters-project'\n")
    package = root / "src" / "posters_project"
    package.mkdir(parents=True)
    (package / "defs.py").write_text(DEFINITIONS)
    (root / "data" / "prompts").mkdir(parents=True)
    write_batch(root / "data" / "prompts", "hero", prompt_rows(2))
    return package / "defs.py"


def test_relative_paths_resolve_against_the_project_root_from_any_cwd(
    tmp_path, monkeypatch, emulator, instance
):
    """Loaded from two other directories, the instance uses one store and ledger: the second run pays nothing."""
    monkeypatch.delenv(ROOT_ENV, raising=False)
    project = tmp_path / "project"
    defs_file = make_project(project)
    for index, cwd in enumerate([tmp_path / "elsewhere", project / "src"]):
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        before = sorted(cwd.iterdir())
        posters = runpy.run_path(str(defs_file))["posters"]
        assert posters.pipeline.store.root == str(project / "output" / "images")
        assert posters.pipeline.ledger.url == f"sqlite:///{project / 'output' / 'ledger.db'}"
        result = materialize(posters, "hero", instance=instance, krea=make_resource(emulator))
        assert result.success
        assert emulator.stats()["jobs_created"] == 2, f"run {index + 1} paid again"
        assert sorted(cwd.iterdir()) == before, "nothing is written to the current directory"
    assert (project / "output" / "ledger.db").is_file()
    assert len(list((project / "output" / "images").rglob("*.png"))) == 2


def test_krea_dagster_root_wins_over_the_project_folder(tmp_path, monkeypatch):
    """With KREA_DAGSTER_ROOT set, relative paths resolve under it; URLs and absolute paths stay."""
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "data-root"))
    paths = InstancePaths.resolve("prompts", "images", "sqlite:///ledger.db", root=REPO)
    assert paths.prompts == str(tmp_path / "data-root" / "prompts")
    assert paths.store == str(tmp_path / "data-root" / "images")
    assert paths.ledger == f"sqlite:///{tmp_path / 'data-root' / 'ledger.db'}"
    urls = InstancePaths.resolve("s3://b/p", "/abs/images", "postgresql+psycopg://u@h/db", None)
    assert (urls.prompts, urls.store, urls.ledger) == (
        "s3://b/p",
        "/abs/images",
        "postgresql+psycopg://u@h/db",
    )


def test_project_root_is_the_nearest_folder_with_a_pyproject(tmp_path):
    """project_root_of walks up from a module file to the folder holding pyproject.toml."""
    defs_file = make_project(tmp_path)
    assert project_root_of(defs_file) == tmp_path
    loose = tmp_path.parent / f"{tmp_path.name}-loose" / "x.py"
    loose.parent.mkdir()
    loose.write_text("")
    assert project_root_of(loose) in (loose.parent, *loose.parent.parents)


def test_relative_path_without_any_root_is_a_clear_error(tmp_path):
    """From `python -c` (no file, no KREA_DAGSTER_ROOT) a relative store names the fix."""
    code = (
        "from krea_dagster import build_krea_image_assets\n"
        "build_krea_image_assets('p', prompts='/abs', model='bfl/flux-1-dev', "
        "store='images', ledger='sqlite:////tmp/x.db')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != ROOT_ENV}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "the image store 'images' is relative" in done.stderr
    assert ROOT_ENV in done.stderr


def test_a_new_ledger_next_to_stored_images_warns_before_paying(
    build, emulator, instance, prompts_dir, tmp_path
):
    """A fresh ledger while the store holds the prefix's images logs a warning naming the ledger."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    krea = make_resource(emulator)
    first = materialize(build(), "b1", instance=instance, krea=krea)
    assert first.success

    def warnings(result: dg.ExecuteInProcessResult) -> list[str]:
        return [
            entry.user_message
            for entry in instance.all_logs(result.run_id)
            if "has no record of" in entry.user_message
        ]

    assert warnings(first) == []
    second = materialize(
        build(ledger=f"sqlite:///{tmp_path / 'other-ledger.db'}"),
        "b1",
        instance=instance,
        krea=krea,
    )
    assert second.success
    (message,) = warnings(second)
    assert "other-ledger.db" in message and "1 image(s)" in message
