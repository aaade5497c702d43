#!/usr/bin/env bash
# Regenerate scripts/constraints.txt, the pins scripts/bootstrap.sh installs the demo and test
# environments with: resolve krea-dagster[test] afresh (the newest releases that fit
# pyproject.toml) with uv's resolver, in a throw-away venv.
# Usage: scripts/lock.sh [uv pip compile option ...]   e.g. scripts/lock.sh --upgrade-package httpx
#
# Why pins, and why uv here: the package's own metadata keeps ranges, but this project's
# environments must not change under CI between two commits. On 2026-12-01 the registry had
# dagster 1.13.28 and not yet dagster-dg-cli 1.13.28; pip's resolver, given only ranges,
# backtracked through hundreds of releases for two minutes and failed building an ancient
# sdist. uv's resolver answers the same question in seconds; bootstrap still installs with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${KREA_BOOTSTRAP_PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check uv
{
  echo "# Pins for scripts/bootstrap.sh (demo and test environments), made by scripts/lock.sh"
  echo "# for $("$python" --version 2>&1). Edit pyproject.toml, then re-run scripts/lock.sh."
  "$tmp/venv/bin/uv" pip compile pyproject.toml --extra test --python "$python" \
    --no-header --no-annotate --quiet "$@"
} > scripts/constraints.txt
echo "scripts/constraints.txt: $(grep -c '==' scripts/constraints.txt) pins" >&2
