"""YAML nodes in the first hour: errors that name the fix, and the executor a project runs with."""

import textwrap
from pathlib import Path

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from .conftest import prompt_rows, write_batch


def write_node(defs_folder: Path, name: str, attributes: str) -> Path:
    """A defs.yaml of one prompt-file node, with one batch in its prompt folder."""
    folder = defs_folder / name
    (folder / "prompts").mkdir(parents=True)
    write_batch(folder / "prompts", "b1", prompt_rows(1))
    (folder / "defs.yaml").write_text(
        "type: krea_dagster.KreaImagesComponent\nattributes:\n"
        f"  name_prefix: {name}\n  prompts: prompts\n  image_model: bfl/flux-1-dev\n"
        + textwrap.indent(textwrap.dedent(attributes), "  "),
        encoding="utf-8",
    )
    return folder


@pytest.mark.parametrize(
    ("template", "variable"),
    [
        ("{{ env.KREA_LEDGER_URL }}", "KREA_LEDGER_URL"),
        ("{{ env('MY_LEDGER') }}", "MY_LEDGER"),
        ("sqlite:///{{ env.LEDGER_DIR }}/ledger.db", None),
    ],
    ids=["env-dot", "env-call", "inside-a-string"],
)
def test_a_ledger_template_that_renders_empty_names_its_variable(
    tmp_path, monkeypatch, template, variable
):
    """`ledger: "{{ env.X }}"` with X unset is an error naming X and the field, not a bare
    pydantic type error; a template whose variable sits inside a URL loads (it is that URL)."""
    for name in ("KREA_LEDGER_URL", "MY_LEDGER", "LEDGER_DIR"):
        monkeypatch.delenv(name, raising=False)
    with create_defs_folder_sandbox() as sandbox:
        write_node(sandbox.defs_folder_path, "posters", f'ledger: "{template}"\n')
        if variable is None:
            with sandbox.build_all_defs() as defs:
                dg.Definitions.validate_loadable(defs)
            return
        with pytest.raises(Exception) as raised, sandbox.build_all_defs():
            pass
    message = str(raised.value) + "".join(str(cause) for cause in _causes(raised.value))
    # Ours for env.X (which renders empty), Dagster's own for env('X') (which raises).
    assert f"{variable} is not set" in message
    assert "ledger:" in message or "env(" in message


def _causes(error: BaseException) -> list[BaseException]:
    found = []
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
        found.append(error)
    return found


def test_an_s3_store_without_the_extra_fails_when_the_node_loads(tmp_path, monkeypatch):
    """`store: s3://...` without the s3 extra fails `dg check defs` naming the extra, not at
    run time with an ImportError."""
    import fsspec

    real = fsspec.get_filesystem_class

    def without_s3(protocol: str):  # the s3 extra (s3fs) not installed
        if protocol in ("s3", "s3a"):
            raise ImportError("Install s3fs to access S3")
        return real(protocol)

    monkeypatch.setattr(fsspec, "get_filesystem_class", without_s3)
    with create_defs_folder_sandbox() as sandbox:
        write_node(sandbox.defs_folder_path, "posters", "store: s3://my-bucket/posters\n")
        with pytest.raises(Exception) as raised, sandbox.build_all_defs():
            pass
    message = str(raised.value) + "".join(str(cause) for cause in _causes(raised.value))
    assert "pip install 'krea-dagster[s3]'" in message
    assert "s3://my-bucket/posters" in message


def test_executor_in_process_makes_the_code_location_run_in_one_process(tmp_path, monkeypatch):
    """`executor: in_process` gives the YAML project's runs the in-process executor (a Python
    project's `executor=dg.in_process_executor`), and two nodes that say so load together."""
    monkeypatch.setenv("KREA_API_KEY", "11111111-2222-4333-8444-555555555555:yaml-secret")
    with create_defs_folder_sandbox() as sandbox:
        for name in ("posters", "banners"):
            write_node(
                sandbox.defs_folder_path,
                name,
                f"executor: in_process\nledger: sqlite:///{tmp_path / 'ledger.db'}\n",
            )
        with sandbox.build_all_defs() as defs:
            job = defs.resolve_implicit_global_asset_job_def()
            assert job.executor_def is dg.in_process_executor
    with create_defs_folder_sandbox() as sandbox:
        write_node(sandbox.defs_folder_path, "posters", "")
        with sandbox.build_all_defs() as defs:
            job = defs.resolve_implicit_global_asset_job_def()
            assert job.executor_def is not dg.in_process_executor  # Dagster's default
