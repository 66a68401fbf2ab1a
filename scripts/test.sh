#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then lint, types, tests.
# Server binaries the tests need (PostgreSQL, Redis, NATS) are installed here; the servers
# themselves are started by pytest's session fixtures (tests/conftest.py) on free local ports
# in temporary folders, so they are stopped and deleted even when tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL 15's server binaries (initdb, pg_ctl, postgres), found the way
# obelisk.servers.postgres.find_postgres_bin looks for them.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "== installing PostgreSQL (apt-get install postgresql)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q postgresql
    else
        echo "error: PostgreSQL's server binaries (initdb, pg_ctl) are not installed." >&2
        echo "Install them, e.g. 'sudo apt-get install -y postgresql', and run this again." >&2
        exit 1
    fi
fi

# Redis and NATS (with JetStream) for the broker tests, started the same way by pytest;
# Chromium (headless) for the flash-sale dashboard's page test.
missing=()
command -v redis-server >/dev/null || [ -x /usr/sbin/redis-server ] || [ -x /usr/bin/redis-server ] \
    || missing+=(redis-server)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || [ -x /usr/bin/nats-server ] \
    || missing+=(nats-server)
command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "== installing ${missing[*]} (apt-get install)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q "${missing[@]}"
    else
        echo "error: ${missing[*]} not installed." >&2
        echo "Install them, e.g. 'sudo apt-get install -y ${missing[*]}', and run this again." >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check obelisk examples tests
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest "$@"
