"""KreaImagesComponent from YAML: env-var token, two instances side by side, scaffolding, a real run."""

import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from krea_dagster import KreaImagesComponent
from krea_dagster.api import ConfigurationError

from .conftest import prompt_rows, write_batch

REPO = Path(__file__).resolve().parents[2]


def write_instance(
    defs_folder: Path, name: str, tmp_path: Path, model: str = "bfl/flux-1-dev", extra: str = ""
) -> Path:
    """A defs.yaml for one instance, its prompts in a folder next to it."""
    folder = defs_folder / name
    (folder / "prompts").mkdir(parents=True)
    (folder / "defs.yaml").write_text(
        textwrap.dedent(
            f"""
            type: krea_dagster.KreaImagesComponent
            attributes:
              name_prefix: {name}
              prompts: prompts
              image_model: {model}
              store: images
              ledger: sqlite:///{tmp_path / (name + ".db")}
              defaults: {{width: 512, height: 512}}
              krea:
                api_key: "{{{{ env.KREA_API_KEY }}}}"
                base_url: "{{{{ env('KREA_BASE_URL', 'http://127.0.0.1:9') }}}}"
                poll_interval: 0.05
            """
        )
        + textwrap.indent(textwrap.dedent(extra), "  "),
        encoding="utf-8",
    )
    return folder


def test_two_yaml_instances_coexist_and_embed_their_krea_settings(tmp_path, monkeypatch):
    """Two defs.yaml instances load into one code location with no resource key to collide on."""
    monkeypatch.setenv("KREA_API_KEY", "11111111-2222-4333-8444-555555555555:yaml-secret")
    with create_defs_folder_sandbox() as sandbox:
        write_instance(sandbox.defs_folder_path, "posters", tmp_path)
        write_instance(
            sandbox.defs_folder_path,
            "banners",
            tmp_path,
            extra="sensors: {default_status: running}\n",
        )
        with sandbox.build_all_defs() as defs:
            dg.Definitions.validate_loadable(defs)
            keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
            assert {"posters/images", "banners/images", "posters/prompt_source"} <= keys
            sensors = {sensor.name: sensor for sensor in defs.sensors}
            assert set(sensors) == {
                "posters_batch_discovery",
                "posters_completion",
                "banners_batch_discovery",
                "banners_completion",
            }
            assert sensors["banners_completion"].default_status == dg.DefaultSensorStatus.RUNNING
            assert sensors["posters_completion"].default_status == dg.DefaultSensorStatus.STOPPED
            assert not defs.resources  # the token is not resource config anywhere in the UI


def test_component_loads_without_the_api_key_and_fails_clearly_when_run(
    tmp_path, monkeypatch, emulator
):
    """With KREA_API_KEY unset the location loads; running the jobs asset names the variable."""
    monkeypatch.delenv("KREA_API_KEY", raising=False)
    monkeypatch.setenv("KREA_BASE_URL", emulator.base_url)
    with create_defs_folder_sandbox() as sandbox:
        folder = write_instance(sandbox.defs_folder_path, "posters", tmp_path)
        write_batch(folder / "prompts", "b1", prompt_rows(1))
        with sandbox.load_component_and_build_defs(defs_path=folder) as (component, defs):
            assert isinstance(component, KreaImagesComponent)
            dg.Definitions.validate_loadable(defs)
            with pytest.raises(ConfigurationError, match="KREA_API_KEY"):
                component.krea.get_client()


def test_yaml_instance_runs_a_batch_end_to_end(tmp_path, monkeypatch, emulator):
    """An instance defined only in YAML validates, submits, downloads and writes its manifest."""
    monkeypatch.setenv("KREA_API_KEY", emulator.token)
    monkeypatch.setenv("KREA_BASE_URL", emulator.base_url)
    with create_defs_folder_sandbox() as sandbox:
        folder = write_instance(sandbox.defs_folder_path, "posters", tmp_path)
        write_batch(folder / "prompts", "b1", prompt_rows(2))
        with sandbox.build_all_defs() as defs, dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("posters_batches", ["b1"])
            job = defs.resolve_implicit_global_asset_job_def()
            result = job.execute_in_process(partition_key="b1", instance=instance)
            assert result.success
            manifest = result.output_for_node("posters__images")
            assert manifest["status"].tolist() == ["completed", "completed"]
            # The relative store resolves against the project root, not inside defs/.
            uri = Path(manifest["uri"][0])
            assert uri.is_relative_to(sandbox.project_root / "images")
            assert not uri.is_relative_to(sandbox.defs_folder_path)
    assert emulator.stats()["jobs_created"] == 2


def test_schedule_block_adds_a_regeneration_schedule(tmp_path, monkeypatch):
    """A schedule: block in YAML becomes the regeneration schedule of that instance."""
    monkeypatch.setenv("KREA_API_KEY", "11111111-2222-4333-8444-555555555555:yaml-secret")
    with create_defs_folder_sandbox() as sandbox:
        write_instance(
            sandbox.defs_folder_path,
            "posters",
            tmp_path,
            extra="schedule: {cron: '0 3 * * *', mode: all}\n",
        )
        with sandbox.build_all_defs() as defs:
            (schedule,) = defs.schedules
            assert schedule.name == "posters_regenerate_all"
            assert schedule.cron_schedule == "0 3 * * *"


def test_scaffolder_writes_a_defs_yaml_that_loads(monkeypatch):
    """dg scaffold's output (env-var token, a prompts folder with an example) loads as is."""
    monkeypatch.delenv("KREA_API_KEY", raising=False)
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=KreaImagesComponent, defs_path="my_images")
        text = (path / "defs.yaml").read_text()
        assert "{{ env.KREA_API_KEY }}" in text
        assert (path / "prompts" / "example.csv").exists()
        with sandbox.load_component_and_build_defs(defs_path=path) as (_, defs):
            dg.Definitions.validate_loadable(defs)


def test_dg_lists_the_component():
    """The entry point registers the component, so `dg list components` shows it."""
    dg_cli = Path(sys.executable).with_name("dg")
    listed = subprocess.run(
        [str(dg_cli), "list", "components", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert "krea_dagster.KreaImagesComponent" in listed.stdout


def test_a_yaml_workflow_chains_steps_over_a_table_asset(tmp_path, monkeypatch, emulator):
    """KreaWorkflowComponent: a Python table asset and two YAML steps, run end to end."""
    from PIL import Image

    monkeypatch.setenv("KREA_API_KEY", emulator.token)
    monkeypatch.setenv("KREA_BASE_URL", emulator.base_url)
    with create_defs_folder_sandbox() as sandbox:
        tables = sandbox.defs_folder_path / "tables"
        tables.mkdir()
        (tables / "products.py").write_text(
            textwrap.dedent(
                """
                import dagster as dg
                import pandas as pd

                @dg.asset
                def products() -> pd.DataFrame:
                    return pd.DataFrame({"batch": ["b1"], "sku": ["A1"], "name": ["red sneaker"],
                                         "photo": ["photos/a1.png"]})
                """
            ),
            encoding="utf-8",
        )
        folder = sandbox.defs_folder_path / "catalog"
        (folder / "photos").mkdir(parents=True)
        Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / "photos" / "a1.png")
        (folder / "defs.yaml").write_text(
            textwrap.dedent(
                f"""
                type: krea_dagster.KreaWorkflowComponent
                attributes:
                  name_prefix: catalog
                  table: products
                  key_column: sku
                  store: images
                  ledger: sqlite:///{tmp_path / "catalog.db"}
                  steps:
                    - name: edit
                      model: openai/gpt-image-2
                      prompt: "Studio photo of a {{name}} on white"
                      inputs: {{image_urls: ["{{photo}}"]}}
                    - name: upscale
                      model: enhance/topaz/standard-enhance
                      inputs: {{image_url: "{{previous}}"}}
                      defaults: {{model: Standard V2, width: 2048, height: 2048}}
                  krea:
                    api_key: "{{{{ env.KREA_API_KEY }}}}"
                    base_url: "{{{{ env.KREA_BASE_URL }}}}"
                    poll_interval: 0.05
                """
            ),
            encoding="utf-8",
        )
        with sandbox.build_all_defs() as defs, dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("catalog_batches", ["b1"])
            products = defs.resolve_assets_def("products")
            dg.materialize([products], instance=instance)
            job = defs.resolve_implicit_global_asset_job_def()
            result = job.execute_in_process(
                partition_key="b1",
                instance=instance,
                asset_selection=[
                    dg.AssetKey(["catalog", name])
                    for step in ("edit", "upscale")
                    for name in (f"{step}_prompts", f"{step}_jobs", step)
                ],
            )
            assert result.success
            manifest = result.output_for_node("catalog__upscale")
            assert manifest["status"].tolist() == ["completed"]
            assert (manifest["width"][0], manifest["height"][0]) == (2048, 2048)
    assert emulator.stats()["uploads"] == 2  # the photo, then the edit


@pytest.mark.parametrize(
    ("price_line", "succeeds"), [("", False), ("price_usd: 0.02", True)], ids=["no-price", "price"]
)
def test_yaml_price_usd_lets_a_capped_instance_use_an_unpriced_model(
    tmp_path, monkeypatch, emulator, price_line, succeeds
):
    """Under max_usd_per_run, a model without a catalog price needs price_usd: in defs.yaml."""
    monkeypatch.setenv("KREA_API_KEY", emulator.token)
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "edits"
        (folder / "prompts").mkdir(parents=True)
        (folder / "prompts" / "b1.csv").write_text(
            "prompt,image_url\nsharper,https://example.com/a.png\n", encoding="utf-8"
        )
        (folder / "defs.yaml").write_text(
            textwrap.dedent(
                f"""
                type: krea_dagster.KreaImagesComponent
                attributes:
                  name_prefix: edits
                  prompts: prompts
                  image_model: bytedance/seededit
                  store: images
                  ledger: sqlite:///{tmp_path / "edits.db"}
                  max_usd_per_run: 1
                  {price_line}
                  krea:
                    api_key: "{{{{ env.KREA_API_KEY }}}}"
                    base_url: {emulator.base_url}
                """
            ),
            encoding="utf-8",
        )
        with sandbox.build_all_defs() as defs, dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("edits_batches", ["b1"])
            job = defs.resolve_implicit_global_asset_job_def()
            result = job.execute_in_process(
                partition_key="b1",
                instance=instance,
                asset_selection=[dg.AssetKey(["edits", "prompts"])],
                raise_on_error=False,
            )
            assert result.success is succeeds
            if not succeeds:
                failure = result.get_step_failure_events()[0].step_failure_data
                assert "no price is known for bytedance/seededit" in (
                    failure.user_failure_data.description
                )
            else:
                prompts = result.output_for_node("edits__prompts")
                assert prompts["estimated_usd"].tolist() == [0.02]
    # Only Krea's public document was read (the live catalog): nothing else, nothing paid.
    assert set(emulator.stats()["requests_by_route"]) <= {"GET /openapi.json"}


def test_the_krea_block_has_every_field_of_the_resource_with_its_default():
    """The YAML krea: block is derived from KreaResource: the same fields (rate_limit_budget,
    the catalog settings...) with the same defaults, so the two cannot drift."""
    from krea_dagster import KreaResource
    from krea_dagster.component import KreaSettings

    resource_fields = KreaResource.model_fields
    assert set(KreaSettings.model_fields) == set(resource_fields)
    for name, field in KreaSettings.model_fields.items():
        expected = resource_fields[name].get_default(call_default_factory=True)
        assert field.get_default(call_default_factory=True) == expected, name


def test_group_name_puts_every_asset_of_the_node_in_that_group(tmp_path, monkeypatch):
    """group_name: in defs.yaml is read: every asset of the node (its prompt source included)
    is in that group."""
    monkeypatch.setenv("KREA_API_KEY", "11111111-2222-4333-8444-555555555555:yaml-secret")
    with create_defs_folder_sandbox() as sandbox:
        write_instance(sandbox.defs_folder_path, "posters", tmp_path, extra="group_name: art\n")
        with sandbox.build_all_defs() as defs:
            graph = defs.resolve_asset_graph()
            groups = {
                key.to_user_string(): graph.get(key).group_name
                for key in graph.get_all_asset_keys()
            }
    assert groups == {
        "posters/prompt_source": "art",
        "posters/prompts": "art",
        "posters/jobs": "art",
        "posters/images": "art",
    }
