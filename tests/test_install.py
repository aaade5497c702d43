"""Installing into a fresh environment: the core is light and fits the newest Dagster 1.13.

The package is installed from a copy of this source tree (so the build leaves nothing in the
checkout) into a new venv, next to whatever Dagster 1.13 the registry has newest; dependencies
come from the registry through pip's cache.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a run worker must not be made to install.
NOT_IN_CORE = {
    "starlette",
    "uvicorn",
    "python-multipart",
    "dagster-webserver",
    "dagster-dg-cli",
    "s3fs",
    "psycopg",
}

BUILD_ASSETS = """
import os, sys, dagster as dg
from krea_dagster import KreaResource, build_krea_image_assets, build_krea_sensors
assert "site-packages" in sys.modules["krea_dagster"].__file__, sys.modules["krea_dagster"].__file__
os.makedirs("data/prompts", exist_ok=True)
open("data/prompts/hero.csv", "w").write("prompt\\na lighthouse\\n")
posters = build_krea_image_assets(
    "posters", prompts=os.path.abspath("data/prompts"), model="bfl/flux-1-dev",
    store=os.path.abspath("images"), ledger="sqlite:///" + os.path.abspath("ledger.db"),
)
defs = dg.Definitions(
    assets=posters.assets, sensors=build_krea_sensors(posters), resources={"krea": KreaResource()}
)
dg.Definitions.validate_loadable(defs)
print("dagster", dg.__version__, "assets", len(posters.assets))
"""


def run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {k: v for k, v in env.items() if not k.startswith(("KREA_", "DAGSTER_"))}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, **kwargs
    )


def source_copy(tmp_path: Path) -> Path:
    """The tracked files of this checkout (what a clone or an sdist would hold)."""
    copy = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file() and not name.startswith((b"tests/", b"bench/")):
            (copy / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name.decode())
    return copy


def newest_dagster_113(python: Path, cwd: Path) -> str | None:
    """The newest dagster 1.13.x the registry lists (None when pip cannot say)."""
    listed = run([str(python), "-m", "pip", "index", "versions", "dagster"], cwd)
    versions = re.findall(r"\b1\.13\.\d+\b", listed.stdout)
    return max(versions, key=lambda v: int(v.split(".")[2])) if versions else None


@pytest.mark.system
def test_core_install_is_light_and_the_emulator_extra_adds_the_server(tmp_path):
    """Core: no web stack, assets build, krea-emulator names the extra; [emulator]: --help works."""
    source = source_copy(tmp_path)
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)], tmp_path).returncode == 0
    python, pip = venv / "bin" / "python", [str(venv / "bin" / "python"), "-m", "pip"]
    quiet = ["--disable-pip-version-check", "--progress-bar", "off"]
    core = run([*pip, "install", *quiet, str(source), "dagster>=1.13,<1.14"], tmp_path)
    assert core.returncode == 0, core.stdout[-3000:] + core.stderr[-3000:]

    listed = run([*pip, "list", "--format", "json"], tmp_path)
    installed = {item["name"].lower(): item["version"] for item in json.loads(listed.stdout)}
    assert sorted(NOT_IN_CORE & set(installed)) == []
    assert installed["dagster"].startswith("1.13.")
    newest = newest_dagster_113(python, tmp_path)
    if newest is not None:
        assert installed["dagster"] == newest, f"pip chose {installed['dagster']}, not {newest}"

    work = tmp_path / "work"
    work.mkdir()
    built = run([str(python), "-c", BUILD_ASSETS], work)
    assert built.returncode == 0, built.stderr[-3000:]
    assert f"dagster {installed['dagster']} assets 4" in built.stdout

    missing = run([str(venv / "bin" / "krea-emulator"), "serve"], work)
    assert missing.returncode == 2
    (line,) = missing.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(
        "krea-emulator: the emulator's server stack is not installed (missing: starlette, "
        "uvicorn, python-multipart"
    )
    assert line.endswith("install it with: pip install 'krea-dagster[emulator]'")

    extra = run([*pip, "install", *quiet, f"{source}[emulator]"], tmp_path)
    assert extra.returncode == 0, extra.stdout[-3000:] + extra.stderr[-3000:]
    helped = run([str(venv / "bin" / "krea-emulator"), "--help"], work)
    assert helped.returncode == 0, helped.stderr
    assert "--job-failure-rate" in helped.stdout and "(default: 0.0)" in helped.stdout
