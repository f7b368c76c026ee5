#!/usr/bin/env bash
# Runs proto lint (buf), Python lint (ruff) and the whole test suite. Exits non-zero on any failure, and on a run
# that collected no tests (pytest's exit 5).
set -uo pipefail
cd "$(dirname "$0")/.."

.tools/node_modules/.bin/buf lint || { echo "buf lint failed"; exit 1; }
echo "buf lint: ok"

.venv/bin/ruff check . || { echo "ruff check failed"; exit 1; }

.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating as failure"
  exit 1
fi
exit "$status"
