#!/usr/bin/env bash
# Create .venv and install krea-dagster (editable) with the given extras, pinned by
# scripts/constraints.txt (made by scripts/lock.sh), once per change of pyproject.toml or the
# pins: a second run with nothing changed takes a second.
# Usage: scripts/bootstrap.sh [extras]   e.g. scripts/bootstrap.sh demo, scripts/bootstrap.sh test
# (extras of pyproject.toml: emulator, s3, postgres, demo = emulator + UI + dg, test = all).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${KREA_BOOTSTRAP_PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "krea-dagster needs Python 3.11 or newer ($python is $("$python" --version 2>&1))." >&2
  echo "Set KREA_BOOTSTRAP_PYTHON to a Python 3.11+ interpreter." >&2
  exit 2
fi
started=$SECONDS
if [[ ! -x .venv/bin/python ]]; then
  echo "==> [1/3] creating .venv with $("$python" --version 2>&1)" >&2
  "$python" -m venv .venv
fi
stamp=".venv/.krea-installed-${extras:-base}"
want="$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "==> [2/3] upgrading pip in .venv" >&2
.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off --upgrade pip \
  | { grep -v '^Requirement already satisfied' || true; } >&2
spec="."
[[ -n "$extras" ]] && spec=".[$extras]"
echo "==> [3/3] installing krea-dagster${extras:+[$extras]} and its dependencies into .venv" \
  "(the first time downloads ~150 packages: a few minutes; pip shows each one)" >&2
# pip's own lines (Collecting / Downloading / Installing) are the progress; a failure keeps
# the whole output on screen.
.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
  --constraint scripts/constraints.txt -e "$spec" \
  | { grep -v '^Requirement already satisfied' || true; } >&2
echo "$want" > "$stamp"
echo "==> .venv ready in $((SECONDS - started)) s" >&2
