"""Every code block of the README runs as written (or the table below says which test covers it).

Bash blocks run from the command line with a temporary ``DAGSTER_HOME``: the quickstart in a new
project folder, the demo's commands (``dg check``, ``dg launch``, ...; marker ``system``, about a
minute) in a copy of this repository. The one change made to a
block: the emulator's well-known ports (8760, the quickstart's 8770) become free ports, so a
test never talks to (or collides with) an emulator a developer left running.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from free_ports import free_port

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The environment the commands run in: the venv of the interpreter under test.
VENV_BIN = Path(os.environ.get("KREA_PYTHON", sys.executable)).parent

# Each README block, by its first line, and where it is run. Blocks run elsewhere say where.
BLOCKS = {
    "./scripts/demo": "elsewhere: tests/test_demo.py runs scripts/demo.py; ./scripts/test is CI",
    "pip install 'krea-dagster[emulator]'": "elsewhere: tests/test_install.py installs it",
    "mkdir -p data/prompts": "quickstart",
    "# definitions.py": "quickstart",
    "krea-emulator start --port 8770 --time-scale 0.05 > emulator.json": "quickstart",
    'export DAGSTER_HOME=$PWD/.dagster && mkdir -p "$DAGSTER_HOME"': "quickstart",
    '@dg.asset(ins={"manifest": dg.AssetIn(posters.images.key)}, partitions_def=posters.partitions_def)': (
        "fragments"
    ),
    'export DAGSTER_HOME=$PWD/.demo/dagster_home && mkdir -p "$DAGSTER_HOME"': "demo",
    ".venv/bin/krea-dagster register-batches demo banners": "demo",
    ".venv/bin/dg dev        # http://127.0.0.1:3000; then, in another shell:": (
        "elsewhere: tests/pipeline/test_sensors.py::test_sensor_loop_end_to_end_drop_a_file_get_images"
        " runs the same discovery -> jobs -> completion -> images loop tick by tick"
    ),
    "from krea_dagster import build_krea_regeneration_schedule": "fragments",
    ".venv/bin/dg list components                      # krea_dagster.KreaImagesComponent": "demo",
    "# defs/posters/defs.yaml": "yaml",
    ".venv/bin/dagster instance concurrency set krea 2": "demo",
    ".venv/bin/krea-emulator serve --port 8760 --time-scale 0.1 --concurrency 8 --job-failure-rate 0.05 &": "emulator",
    "import dagster as dg": "workflow",
    "type: krea_dagster.KreaWorkflowComponent": "workflow-yaml",
    "from krea_dagster import KreaStep": "node-app",
}


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def blocks_for(kind: str) -> list[str]:
    return [code for _lang, code in readme_blocks() if BLOCKS.get(code.splitlines()[0]) == kind]


def command_env(home: Path, pythonpath: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KREA_", "DAGSTER_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(pythonpath)  # the tree under test, whatever the venv installed
    env["DAGSTER_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_bash(script: str, cwd: Path, env: dict[str, str], timeout: float = 420) -> str:
    """Run a script with bash -euo pipefail; background processes it starts end with it."""
    log = cwd / ".readme-test-output"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            process.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # this script's own group: the emulator
    output = log.read_text()
    log.unlink()
    assert process.returncode == 0, f"exit {process.returncode}\n{script}\n---\n{output[-6000:]}"
    return output


def require_console_scripts(*names: str) -> None:
    missing = [name for name in names if not (VENV_BIN / name).exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed in {VENV_BIN}: reinstall the package "
            "(scripts/bootstrap.sh test) so its console scripts exist"
        )


def test_every_readme_block_is_run_or_names_the_test_that_covers_it():
    """Each fenced block is known to this file; a new or edited block fails until it is run."""
    firsts = [code.splitlines()[0] for _lang, code in readme_blocks()]
    unknown = [first for first in firsts if first not in BLOCKS]
    assert unknown == [], f"README blocks this test does not run: {unknown}"
    assert sorted(set(BLOCKS) - set(firsts)) == [], "BLOCKS names blocks the README lost"
    for first, kind in BLOCKS.items():
        assert kind in (
            "quickstart",
            "fragments",
            "demo",
            "yaml",
            "emulator",
            "workflow",
            "workflow-yaml",
            "node-app",
        ) or (kind.startswith("elsewhere: tests/")), first


@pytest.fixture
def quickstart_project(tmp_path: Path) -> tuple[Path, str]:
    """A new folder where the quickstart ran: registered, launched, images stored."""
    require_console_scripts("krea-emulator", "krea-dagster", "dagster")
    project = tmp_path / "my-project"
    project.mkdir()
    port = str(free_port(2))
    script = []
    for code in blocks_for("quickstart"):
        if code.startswith("# definitions.py"):
            (project / "definitions.py").write_text(code, encoding="utf-8")
        else:
            script.append(code.replace("8770", port))
    env = command_env(tmp_path / "unused-home", REPO)
    try:
        output = run_bash("\n".join(script), project, env)
    finally:
        from krea_dagster.emulator.local import stop_local_emulator

        stop_local_emulator(project / ".krea-emulator")  # `krea-emulator start` detaches it
    return project, output


def test_readme_quickstart_emulator_fails_at_once_on_a_taken_port(tmp_path):
    """With the demo's emulator on the quickstart's port, the quickstart's emulator block fails
    in the foreground, one line naming the port, instead of leaving the next commands talking
    to the demo's emulator."""
    from krea_dagster.emulator.local import ensure_local_emulator, stop_local_emulator

    require_console_scripts("krea-emulator")
    (block,) = [code for code in blocks_for("quickstart") if code.startswith("krea-emulator")]
    port = free_port(2)
    demo = ensure_local_emulator(tmp_path / "demo-emulator", port=port, cdn_port=port + 1)
    project = tmp_path / "my-project"
    project.mkdir()
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.replace("8770", str(port))],
            cwd=project,
            env=command_env(tmp_path / "unused-home", REPO),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop_local_emulator(project / ".krea-emulator")
        stop_local_emulator(tmp_path / "demo-emulator")
    assert done.returncode == 3, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"port {port}" in line and "already in use" in line
    assert demo.base_url.endswith(str(port))


def test_readme_quickstart_runs_from_the_command_line_against_the_emulator(quickstart_project):
    """The quickstart's commands, as written, register the batch, run it and store its two images."""
    project, output = quickstart_project
    assert "posters: 1 batch(es) added (hero), 0 already registered" in output
    assert "RUN_SUCCESS" in output
    images = sorted((project / "krea-output" / "images" / "posters" / "images").rglob("*.png"))
    assert len(images) == 2
    assert (project / "krea-output" / "ledger.db").is_file()
    assert (project / ".dagster").is_dir()  # the DAGSTER_HOME the block exported
    assert '"base_url": "http://127.0.0.1:' in (project / "emulator.json").read_text()


def test_readme_python_fragments_run_with_the_quickstart_definitions(tmp_path, monkeypatch):
    """The downstream-asset and schedule examples build on `posters` and materialize."""
    from krea_dagster.emulator.testing import run_emulator

    project = tmp_path / "project"
    (project / "data" / "prompts").mkdir(parents=True)
    (project / "data" / "prompts" / "hero.csv").write_text("prompt\na red kite\n")
    (project / "definitions.py").write_text(blocks_for("quickstart")[1], encoding="utf-8")
    with run_emulator(time_scale=0.005) as emulator:
        monkeypatch.setenv("KREA_BASE_URL", emulator.base_url)
        monkeypatch.setenv("KREA_API_KEY", emulator.token)
        namespace: dict = {"__file__": str(project / "definitions.py"), "__name__": "definitions"}
        exec(
            compile((project / "definitions.py").read_text(), namespace["__file__"], "exec"),
            namespace,
        )
        for code in blocks_for("fragments"):
            exec(compile(code, str(project / "fragment.py"), "exec"), namespace)
        posters, defs = namespace["posters"], namespace["defs"]
        assert namespace["nightly"].cron_schedule == "0 3 * * *"
        assert namespace["weekly"].cron_schedule == "0 4 * * 1"
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(posters.partitions_def.name, ["hero"])
            result = dg.materialize(
                [*posters.assets, namespace["publish"]],
                partition_key="hero",
                instance=instance,
                resources=defs.resources,
            )
            assert result.success
            assert result.output_for_node("publish") is None  # the example's body is `...`
        assert emulator.stats()["jobs_created"] == 1


def test_readme_workflow_runs_as_written(tmp_path, monkeypatch):
    """The workflow example, as written, edits and upscales the shipped product photos."""
    from krea_dagster.emulator.testing import run_emulator

    (code,) = blocks_for("workflow")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "readme-workflow"\n')
    shutil.copytree(REPO / "data" / "products", project / "data" / "products")
    (project / "definitions.py").write_text(code, encoding="utf-8")
    monkeypatch.chdir(project)  # the example reads data/products/products.csv
    with run_emulator(time_scale=0.005) as emulator:
        monkeypatch.setenv("KREA_BASE_URL", emulator.base_url)
        monkeypatch.setenv("KREA_API_KEY", emulator.token)
        namespace: dict = {"__file__": str(project / "definitions.py"), "__name__": "definitions"}
        exec(compile(code, namespace["__file__"], "exec"), namespace)
        catalog, products, defs = namespace["catalog"], namespace["products"], namespace["defs"]
        with dg.instance_for_test() as instance:
            assert dg.materialize([products], instance=instance).success
            instance.add_dynamic_partitions(catalog.partitions_def.name, ["spring"])
            result = dg.materialize(
                [products, *catalog.assets],
                selection=catalog.assets,
                partition_key="spring",
                instance=instance,
                resources=defs.resources,
            )
            assert result.success
            upscaled = result.output_for_node("catalog__upscale")
            assert upscaled["status"].tolist() == ["completed", "completed"]
        stats = emulator.stats()
        assert stats["jobs_created"] == 4 and stats["uploads"] == 4  # 2 photos, 2 edits
    assert (project / ".demo" / "ledger.db").is_file()  # relative paths: the project root


def test_readme_node_app_step_runs_after_the_edit(tmp_path, monkeypatch):
    """The node-app step of the README, after the workflow's edit, executes the app once per
    product and stores both views of each."""
    from krea_dagster import build_krea_workflow
    from krea_dagster.emulator.testing import run_emulator

    (workflow_code,) = blocks_for("workflow")
    (code,) = blocks_for("node-app")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(REPO / "data" / "products", project / "data" / "products")
    monkeypatch.chdir(project)
    with run_emulator(time_scale=0.005) as emulator:
        monkeypatch.setenv("KREA_BASE_URL", emulator.base_url)
        monkeypatch.setenv("KREA_API_KEY", emulator.token)
        namespace: dict = {"__file__": str(project / "definitions.py"), "__name__": "definitions"}
        exec(compile(workflow_code, namespace["__file__"], "exec"), namespace)
        exec(compile(code, str(project / "angles.py"), "exec"), namespace)
        catalog, products, defs = namespace["catalog"], namespace["products"], namespace["defs"]
        views = build_krea_workflow(
            "views",
            table=products,
            key_column="sku",
            base_dir="data/products",
            steps=[catalog.steps[0], namespace["angles"]],
            store=".demo/views",
            ledger="sqlite:///.demo/ledger.db",
            root=project,  # called from this test file: the project is not its root
        )
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(views.partitions_def.name, ["spring"])
            result = dg.materialize(
                [products, *views.assets],
                partition_key="spring",
                instance=instance,
                resources=defs.resources,
            )
            assert result.success
            manifest = result.output_for_node("views__angles")
            assert manifest["status"].tolist() == ["completed", "completed"]
            assert [len(outputs) for outputs in manifest["outputs"]] == [2, 2]
            assert manifest["cost_usd"].tolist() == [0.25, 0.25]
        assert emulator.stats()["requests_by_route"]["POST /node-apps/{id}/execute"] == 2


def test_readme_workflow_yaml_loads(tmp_path, monkeypatch):
    """The workflow YAML example, beside a products asset in a dg project, loads."""
    from dagster.components.testing import create_defs_folder_sandbox

    (yaml_code,) = blocks_for("workflow-yaml")
    monkeypatch.setenv("KREA_API_KEY", "11111111-2222-4333-8444-555555555555:readme")
    with create_defs_folder_sandbox() as sandbox:
        (sandbox.defs_folder_path / "products.py").write_text(
            "import dagster as dg\nimport pandas as pd\n\n\n@dg.asset\n"
            "def products() -> pd.DataFrame:\n    return pd.DataFrame()\n",
            encoding="utf-8",
        )
        folder = sandbox.defs_folder_path / "catalog"
        folder.mkdir()
        (folder / "defs.yaml").write_text(yaml_code, encoding="utf-8")
        with sandbox.build_all_defs() as defs:
            dg.Definitions.validate_loadable(defs)
            graph = defs.resolve_asset_graph()
            upscale = graph.get(dg.AssetKey(["catalog", "upscale"]))
            prompts = graph.get(dg.AssetKey(["catalog", "upscale_prompts"]))
            assert {k.to_user_string() for k in prompts.parent_keys} == {
                "products",
                "catalog/edit",
            }
            assert dg.AssetKey(["catalog", "upscale_prompts"]) in upscale.parent_keys


def repo_copy(tmp_path: Path) -> Path:
    """This checkout's tracked files (no .venv, no .demo) with .venv pointing at the venv under test."""
    copy = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            target = copy / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (copy / ".venv").symlink_to(VENV_BIN.parent)
    return copy


@pytest.mark.system
def test_readme_demo_commands_run_in_a_copy_of_the_repository(tmp_path):
    """dg check/list, register-batches, both dg launch forms, dg scaffold and the pool command succeed."""
    require_console_scripts("krea-dagster", "dg", "dagster")
    copy = repo_copy(tmp_path)
    env = command_env(tmp_path / "unused-home", copy)
    env["KREA_EMULATOR_PORT"] = str(free_port(2))
    env["KREA_GALLERY_PORT"] = str(free_port())
    started = time.monotonic()
    try:
        output = run_bash("\n".join(blocks_for("demo")), copy, env, timeout=540)
    finally:
        # The runs started the demo's emulator and gallery server in the background.
        subprocess.run(
            [sys.executable, "scripts/demo.py", "--stop"], cwd=copy, env=env, timeout=120
        )
    elapsed = time.monotonic() - started
    assert "demo: 3 batch(es) added (city, ocean, spring)" in output
    assert "banners: 1 batch(es) added (launch)" in output
    assert output.count("RUN_SUCCESS") == 2, output[-4000:]
    sheets = sorted(p.name for p in (copy / ".demo" / "contact_sheets").iterdir())
    assert sheets == ["demo-ocean.png", "demo-spring.png"]
    assert (copy / "demo_defs" / "posters" / "defs.yaml").is_file()  # dg scaffold defs
    assert "krea_dagster.KreaImagesComponent" in output
    print(f"demo README commands took {elapsed:.1f} s")


def test_readme_yaml_component_example_loads(tmp_path, monkeypatch):
    """The defs.yaml example, written into a dg project, loads with its variables set."""
    from dagster.components.testing import create_defs_folder_sandbox

    (yaml_code,) = blocks_for("yaml")
    monkeypatch.setenv("KREA_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("KREA_API_KEY", "11111111-2222-4333-8444-555555555555:readme")
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "posters"
        (folder / "prompts").mkdir(parents=True)
        (folder / "defs.yaml").write_text(yaml_code, encoding="utf-8")
        with sandbox.build_all_defs() as defs:
            dg.Definitions.validate_loadable(defs)
            names = {schedule.name for schedule in defs.schedules or []}
            assert len(names) == 1
            keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
            assert "posters/images" in keys


def test_readme_emulator_example_answers_the_curl(tmp_path):
    """The emulator section's serve-then-curl block creates a job."""
    require_console_scripts("krea-emulator")
    (code,) = blocks_for("emulator")
    copy = tmp_path / "project"
    (copy / ".venv").parent.mkdir(parents=True)
    (copy / ".venv").symlink_to(VENV_BIN.parent)
    output = run_bash(code.replace("8760", str(free_port(2))), copy, command_env(tmp_path, REPO))
    assert '"job_id"' in output and '"status"' in output
