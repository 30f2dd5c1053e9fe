#!/usr/bin/env bash
# The main job: installs what is missing, then runs the end-to-end demo on an embedded local stack.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh local
exec "${RISKMASK_VENV:-.venv}/bin/riskmask" demo "$@"
