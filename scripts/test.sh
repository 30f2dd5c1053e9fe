#!/usr/bin/env bash
# Installs riskmask with its test extras and runs the whole test suite (the tests start the services they need:
# an embedded Kafka-protocol broker and real ledger node processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
venv="${RISKMASK_VENV:-.venv}"
# Fetch and verify models and real sample data once, so a registry problem fails here with one clear line.
"$venv/bin/python" -m infra.prefetch
exec "$venv/bin/python" -m pytest "$@"
