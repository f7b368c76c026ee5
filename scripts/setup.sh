#!/usr/bin/env bash
# Sets up a fresh checkout: .venv/ with the four packages installed editable, generated stubs,
# and the buf CLI for proto lint. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first and pinned: this release is a CPU build served from local disk; letting a
# resolver pick torch would pull a CUDA build of several GB.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" grpcio-tools
.venv/bin/python scripts/gen_protos.py
"${PIP[@]}" -e shared -e services/scheduler -e services/worker -e services/frontend -e cli
"${PIP[@]}" -r requirements-dev.txt
# The worker's CPU paged-attention kernel (C++/OpenMP), built once here rather than at the first
# worker start; if it cannot be built the worker falls back to the torch path and says so.
.venv/bin/python -m infermesh_worker.kernels.paged_attention_ext || echo "paged-attention kernel not built: torch fallback"

if [ ! -x .tools/node_modules/.bin/buf ]; then
  npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf >/dev/null
fi
echo "setup done: .venv/ ready"
