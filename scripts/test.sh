#!/usr/bin/env bash
# Installs riskmask with its test extras and runs the whole test suite (the tests start the services they need:
# an embedded Kafka-protocol broker and real ledger node processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
# The browser tests drive the system Chromium (Debian packages chromium and chromium-driver): install when missing.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver with apt-get for the browser tests..." >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  log="$(mktemp)"
  if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
              chromium chromium-driver; } >"$log" 2>&1; then
    echo "scripts/test.sh: cannot install chromium and chromium-driver with apt-get (log: $log); install them and rerun" >&2
    exit 1
  fi
  rm -f "$log"
fi
venv="${RISKMASK_VENV:-.venv}"
# Fetch and verify models and real sample data once, so a registry problem fails here with one clear line.
"$venv/bin/python" -m infra.prefetch
exec "$venv/bin/python" -m pytest "$@"
