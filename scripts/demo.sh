#!/usr/bin/env bash
# The demo on a fresh machine: creates .venv, installs the package, runs
# `fleet demo` (embedded broker, no services). Arguments go to `fleet demo`,
# e.g. scripts/demo.sh --broker amqp://guest:guest@127.0.0.1:5672/ --workers 2
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ ! -x .venv/bin/fleet ]]; then
    "${PYTHON:-python3}" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[tools]'
fi
exec .venv/bin/fleet --log-level WARNING demo "$@"
