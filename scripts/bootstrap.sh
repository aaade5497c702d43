#!/usr/bin/env bash
# Create .venv and install krea-dagster (editable) with the given extras, once per change of
# pyproject.toml: a second run with nothing changed takes a second.
# Usage: scripts/bootstrap.sh [extras]   e.g. scripts/bootstrap.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${KREA_BOOTSTRAP_PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "krea-dagster needs Python 3.11 or newer ($python is $("$python" --version 2>&1))." >&2
  echo "Set KREA_BOOTSTRAP_PYTHON to a Python 3.11+ interpreter." >&2
  exit 2
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv" >&2
  "$python" -m venv .venv
fi
stamp=".venv/.krea-installed-${extras:-base}"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "==> installing krea-dagster${extras:+[$extras]} into .venv (first run takes a few minutes)" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
spec="."
[[ -n "$extras" ]] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" >&2
echo "$want" > "$stamp"
