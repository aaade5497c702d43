"""Every code block of the README runs as written (or the table below says which test covers it).

Bash blocks run from the command line with a temporary ``DAGSTER_HOME``: the quickstart, node
and YAML blocks in a project made by ``create-dagster`` (marker ``system``), the demo's commands
(``dg check``, ``dg launch``, ...; marker ``system``, about a minute) in a copy of this
repository. The changes made to blocks: the emulator's well-known ports (8760, the
quickstart's 8770) become free ports, so a test never talks to (or collides with) an emulator
a developer left running; and the new project's ``pip install -e .`` becomes its ``src/`` on
``PYTHONPATH``, so the venv under test is not changed.
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
    "pip install 'krea-dagster[emulator]' create-dagster": (
        "elsewhere: tests/test_install.py installs krea-dagster; create-dagster is the test "
        "environment's (test_readme_new_project_runs_every_block_as_written)"
    ),
    "create-dagster project --no-uv-sync my-project && cd my-project": "new-project",
    "# src/my_project/defs/resources.py": "new-project",
    "# src/my_project/defs/posters.py": "new-project",
    "krea-emulator start --port 8770 --time-scale 0.05 > emulator.json": "new-project",
    'export DAGSTER_HOME=$PWD/.dagster && mkdir -p "$DAGSTER_HOME"': "new-project",
    '@dg.asset(ins={"manifest": dg.AssetIn(posters.images.key)}, partitions_def=posters.partitions_def)': (
        "fragments"
    ),
    "krea-dagster sample-products data/products    # products.csv (batch, sku, name, color, photo) and photos/": (
        "new-project"
    ),
    "# src/my_project/defs/catalog.py": "new-project",
    "dg launch --assets products": "new-project",
    "from krea_dagster import KreaStep": "node-app",
    "dg scaffold defs krea_dagster.KreaWorkflowComponent shoes": "new-project",
    "# src/my_project/defs/shoes/defs.yaml": "scaffolded",
    'export DAGSTER_HOME=$PWD/.demo/dagster_home && mkdir -p "$DAGSTER_HOME"': "demo",
    ".venv/bin/krea-dagster register-batches demo banners": "demo",
    ".venv/bin/dg dev        # http://127.0.0.1:3000; then, in another shell:": (
        "elsewhere: tests/pipeline/test_sensors.py::test_sensor_loop_end_to_end_drop_a_file_get_images"
        " runs the same discovery -> jobs -> completion -> images loop tick by tick"
    ),
    "from krea_dagster import build_krea_regeneration_schedule": "fragments",
    ".venv/bin/dagster instance concurrency set krea 2": "demo",
    ".venv/bin/krea-emulator serve --port 8760 --time-scale 0.1 --concurrency 8 --job-failure-rate 0.05 &": "emulator",
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
            "new-project",
            "fragments",
            "demo",
            "scaffolded",
            "emulator",
            "node-app",
        ) or (kind.startswith("elsewhere: tests/")), first


def project_files(project: Path) -> list[Path]:
    """Write the README's Python files (blocks whose first line names their path) into a
    project; return their paths."""
    written = []
    for code in blocks_for("new-project"):
        first = code.splitlines()[0]
        if first.startswith("# src/"):
            path = project / first.removeprefix("# ")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(code, encoding="utf-8")
            written.append(path)
    return written


def exec_file(path: Path, namespace: dict | None = None) -> dict:
    """Run a README Python file as its module would, in a namespace of its own."""
    namespace = {"__file__": str(path), "__name__": path.stem, **(namespace or {})}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace


def ledger_paid_once(ledger: Path) -> dict[str, int]:
    """Completed jobs per ledger scope; fails if any prompt of a generation was paid twice."""
    import sqlite3

    with sqlite3.connect(ledger) as conn:
        rows = conn.execute(
            "SELECT scope, batch, generation, prompt_key FROM krea_submissions "
            "WHERE state = 'completed' AND parent_id IS NULL"
        ).fetchall()
    keys = [tuple(row) for row in rows]
    assert len(keys) == len(set(keys)), f"a prompt was paid twice: {keys}"
    per_scope: dict[str, int] = {}
    for scope, *_ in keys:
        per_scope[scope] = per_scope.get(scope, 0) + 1
    return per_scope


def test_readme_quickstart_emulator_fails_at_once_on_a_taken_port(tmp_path):
    """With the demo's emulator on the quickstart's port, the quickstart's emulator block fails
    in the foreground, one line naming the port, instead of leaving the next commands talking
    to the demo's emulator."""
    from krea_dagster.emulator.local import ensure_local_emulator, stop_local_emulator

    require_console_scripts("krea-emulator")
    (block,) = [code for code in blocks_for("new-project") if code.startswith("krea-emulator")]
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


@pytest.mark.system
def test_readme_new_project_runs_every_block_as_written(tmp_path):
    """In a project made by create-dagster, the README's quickstart, node and YAML blocks run as
    written against the emulator: every batch launched stores its images, each paid once, in
    one ledger; the scaffold writes the defs.yaml the README shows."""
    require_console_scripts("create-dagster", "krea-emulator", "krea-dagster", "dg")
    create, *blocks = [code for code in blocks_for("new-project")]
    first, *rest = create.splitlines()
    env = command_env(tmp_path / "unused-home", REPO)
    run_bash(first.split(" && cd ")[0], tmp_path, env, timeout=120)
    project = tmp_path / "my-project"
    assert (project / "src" / "my_project" / "definitions.py").is_file()
    # The one change: instead of `pip install -e .` (into the venv under test), the project's
    # src/ goes on the path, beside the tree under test.
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{project / 'src'}"
    script = [line for line in rest if line.strip() != "pip install -e ."]
    project_files(project)
    port = str(free_port(2))
    script += [
        code.replace("8770", port).replace("8760", port)
        for code in blocks
        if not code.startswith("# src/")
    ]
    try:
        output = run_bash("\n".join(script), project, env, timeout=900)
    finally:
        from krea_dagster.emulator.local import stop_local_emulator

        stop_local_emulator(project / ".krea-emulator")  # `krea-emulator start` detaches it
    assert "posters: 1 batch(es) added (hero), 0 already registered" in output
    assert "catalog: 2 batch(es) added (autumn, spring), 0 already registered" in output
    assert "shoes: 1 batch(es) added (spring), 0 already registered" in output
    assert "All definitions loaded successfully" in output  # dg check defs, with the scaffold
    assert output.count("RUN_SUCCESS") == 4, output[-4000:]  # posters, products, catalog, shoes
    images = project / "krea-output" / "images"
    for scope, count in (("posters", 2), ("catalog.upscale", 2), ("shoes.upscale", 2)):
        assert len(list((images / scope / "images").rglob("*.png"))) == count, scope
    # One ledger for every node of the project (one token, one ledger), nothing paid twice.
    assert ledger_paid_once(project / "krea-output" / "ledger.db") == {
        "posters": 2,
        "catalog.edit": 2,
        "catalog.upscale": 2,
        "shoes.edit": 2,
        "shoes.upscale": 2,
    }
    import yaml

    (shown,) = blocks_for("scaffolded")
    scaffolded = project / "src" / "my_project" / "defs" / "shoes" / "defs.yaml"
    assert yaml.safe_load(shown) == yaml.safe_load(scaffolded.read_text(encoding="utf-8"))


def test_readme_python_blocks_build_and_run_with_the_fragments(tmp_path, monkeypatch):
    """The README's Python files (resources, posters, catalog) and the fragments that build on
    them (a downstream asset, schedules, a node-app step) build and materialize on the emulator."""
    from krea_dagster import build_krea_workflow, write_sample_products
    from krea_dagster.emulator.testing import run_emulator

    project = tmp_path / "my-project"
    (project / "data" / "prompts").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[project]\nname = "my-project"\n')
    (project / "data" / "prompts" / "hero.csv").write_text("prompt\na red kite\n")
    write_sample_products(project / "data" / "products")
    resources_py, posters_py, catalog_py = project_files(project)
    monkeypatch.chdir(project)  # the products asset reads data/products/products.csv
    with run_emulator(time_scale=0.005) as emulator:
        monkeypatch.setenv("KREA_BASE_URL", emulator.base_url)
        monkeypatch.setenv("KREA_API_KEY", emulator.token)
        resources = exec_file(resources_py)["defs"].resources
        namespace = exec_file(posters_py)
        for code in blocks_for("fragments"):
            exec(compile(code, str(project / "fragment.py"), "exec"), namespace)
        posters = namespace["posters"]
        assert namespace["nightly"].cron_schedule == "0 3 * * *"
        assert namespace["weekly"].cron_schedule == "0 4 * * 1"
        catalog_module = exec_file(catalog_py)
        catalog, products = catalog_module["catalog"], catalog_module["products"]
        (angles_code,) = blocks_for("node-app")
        exec(compile(angles_code, str(project / "angles.py"), "exec"), catalog_module)
        views = build_krea_workflow(
            "views",
            table=products,
            key_column="sku",
            base_dir="data/products",
            steps=[catalog.steps[0], catalog_module["angles"]],
            root=project,  # built from this test file: name the project
        )
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(posters.partitions_def.name, ["hero"])
            result = dg.materialize(
                [*posters.assets, namespace["publish"]],
                partition_key="hero",
                instance=instance,
                resources=resources,
            )
            assert result.success
            assert result.output_for_node("publish") is None  # the example's body is `...`
            assert dg.materialize([products], instance=instance).success
            for node in (catalog, views):
                instance.add_dynamic_partitions(node.partitions_def.name, ["spring"])
                result = dg.materialize(
                    [products, *node.assets],
                    selection=node.assets,
                    partition_key="spring",
                    instance=instance,
                    resources=resources,
                )
                assert result.success
            upscaled = result.output_for_node("views__angles")
            assert upscaled["status"].tolist() == ["completed", "completed"]
            assert [len(outputs) for outputs in upscaled["outputs"]] == [2, 2]
            assert upscaled["cost_usd"].tolist() == [0.25, 0.25]
        stats = emulator.stats()
        # hero 1, catalog: 2 edits + 2 upscales, views: its edits are catalog's (the same
        # requests, another scope: 2 more) + 2 executions of 2 jobs each.
        assert stats["requests_by_route"]["POST /node-apps/{id}/execute"] == 2
        assert stats["duplicate_uploads"] == 0
    assert (project / "krea-output" / "ledger.db").is_file()  # relative paths: the project root


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
    assert "krea_dagster.KreaImagesComponent" in output
    assert "krea_dagster.KreaWorkflowComponent" in output
    print(f"demo README commands took {elapsed:.1f} s")


def test_readme_emulator_example_answers_the_curl(tmp_path):
    """The emulator section's serve-then-curl block creates a job."""
    require_console_scripts("krea-emulator")
    (code,) = blocks_for("emulator")
    copy = tmp_path / "project"
    (copy / ".venv").parent.mkdir(parents=True)
    (copy / ".venv").symlink_to(VENV_BIN.parent)
    output = run_bash(code.replace("8760", str(free_port(2))), copy, command_env(tmp_path, REPO))
    assert '"job_id"' in output and '"status"' in output
