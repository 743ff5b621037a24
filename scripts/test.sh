#!/usr/bin/env bash
# The README's test command: lint, then the whole suite against a throwaway PostgreSQL (the same
# suite runs on the embedded SQLite too). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

if [ -z "${FLATMTL_TEST_POSTGRES_URL:-}" ]; then
  eval "$(bash scripts/start_postgres.sh)"
  trap 'bash scripts/start_postgres.sh stop >/dev/null 2>&1 || true' EXIT
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
