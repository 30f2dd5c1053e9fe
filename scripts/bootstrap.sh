#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs riskmask with the given extras.
# Usage: scripts/bootstrap.sh EXTRAS   (e.g. "test" or "local"). Idempotent: re-installs only when setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-local}"
venv="${RISKMASK_VENV:-.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip wheel
fi
stamp="$venv/.riskmask-installed-$extras"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "installing riskmask[$extras] into $venv (first run downloads ~400 MB from PyPI)..." >&2
  "$venv/bin/python" -m pip install --quiet --progress-bar off -e ".[$extras]"
  touch "$stamp"
fi
