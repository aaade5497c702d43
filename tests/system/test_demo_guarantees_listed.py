"""``dg list defs --json`` of the demo: every Krea node, whatever built it, lists its guarantees.

The demo code location (``definitions.py`` and the YAML instances under ``demo_defs/``) has a
prompt-file instance (``demo``), a workflow over a product table (``catalog``) and a YAML
instance (``banners``). Listed by the ``dg`` CLI, as a user or CI sees them, every Krea group
must have the per-batch checks on the outputs of every one of its steps and a completion sensor.
"""

import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from .harness import BIN, CHECK_NAMES, REPO_ROOT

pytestmark = pytest.mark.system

#: One node per entry point of the demo: prompt files (Python), a workflow, a YAML component.
DEMO_GROUPS = {"demo", "catalog", "banners"}


def list_defs(home: Path) -> dict:
    """``dg list defs --json`` in the repository, with no Krea token or backend set."""
    done = subprocess.run(
        [BIN / "dg", "list", "defs", "--json"],
        cwd=REPO_ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("KREA_")},
            "DAGSTER_HOME": str(home),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    listed: dict = json.loads(done.stdout)
    return listed


def test_every_krea_group_of_the_demo_lists_checks_and_a_completion_sensor(tmp_path):
    """Every group with a Krea asset (prompt files, workflow and YAML alike) has the four per-batch checks on every step's outputs and a completion sensor."""
    listed = list_defs(tmp_path)
    assets = listed["assets"]
    krea = [asset for asset in assets if "krea" in (asset.get("kinds") or [])]
    groups = {asset["group_name"] for asset in krea}
    assert groups >= DEMO_GROUPS, groups

    # A step's jobs asset is Krea's alone; the step's outputs asset is the one that depends on it.
    jobs = {asset["asset_key"] for asset in krea if set(asset["kinds"]) == {"krea"}}
    outputs = defaultdict(set)
    for asset in assets:
        if jobs & set(asset.get("dependency_keys") or []):
            outputs[asset["group_name"]].add(asset["asset_key"])
    checks = defaultdict(set)
    for check in listed.get("asset_checks", []):
        checks[check["asset_key"]].add(check["name"])
    sensors = {sensor["name"] for sensor in listed.get("sensors", [])}

    missing = {}
    for group in sorted(groups):
        gaps = [
            f"{key} lacks {sorted(set(CHECK_NAMES) - checks[key])}"
            for key in sorted(outputs[group])
            if not set(CHECK_NAMES) <= checks[key]
        ]
        if not outputs[group]:
            gaps.append("no step outputs")
        if f"{group}_completion" not in sensors:
            gaps.append("no completion sensor")
        if gaps:
            missing[group] = gaps
    assert not missing, missing
    # Each step of the workflow is one outputs asset with its checks: both steps are counted.
    assert outputs["catalog"] == {"catalog/edit", "catalog/upscale"}
