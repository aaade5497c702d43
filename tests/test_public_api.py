"""The public surface of krea_dagster: small, typed for a user's type checker, no drift."""

import subprocess
import sys

import krea_dagster


def test_the_package_exports_resolve():
    """Every name of ``krea_dagster.__all__`` resolves, and dir() lists each of them."""
    for name in krea_dagster.__all__:
        assert getattr(krea_dagster, name) is not None, name
    assert set(krea_dagster.__all__) <= set(dir(krea_dagster))


def test_a_users_type_checker_sees_the_builders_types_not_any(tmp_path):
    """mypy, reading a user's script, knows build_krea_node and KreaResource by their real
    types: the lazy imports of the package are typed through TYPE_CHECKING imports."""
    program = (
        "import krea_dagster\n"
        "from krea_dagster import KreaStep, build_krea_node, build_krea_workflow\n"
        "reveal_type(build_krea_node)\n"
        "reveal_type(krea_dagster.KreaResource)\n"
        "reveal_type(build_krea_workflow('x', table='t', steps=[KreaStep('a', 'bfl/flux-1-dev')]))\n"
    )
    script = tmp_path / "user_code.py"
    script.write_text(program, encoding="utf-8")
    config = tmp_path / "mypy.ini"  # a user's own project: not this repository's settings
    config.write_text("[mypy]\nignore_missing_imports = True\n", encoding="utf-8")
    command = [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-incremental"]
    command += ["--follow-imports=silent", "--cache-dir", str(tmp_path / "cache"), str(script)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
    )
    revealed = [line for line in done.stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == 3, done.stdout + done.stderr
    assert "def (name_prefix: str" in revealed[0], revealed[0]
    assert revealed[0].endswith('-> krea_dagster.node.KreaNodeAssets"'), revealed[0]
    assert "krea_dagster.resource.KreaResource" in revealed[1], revealed[1]
    assert "krea_dagster.node.KreaNodeAssets" in revealed[2], revealed[2]
    assert not any(line.endswith('"Any"') for line in revealed), revealed
