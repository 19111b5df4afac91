#!/usr/bin/env bash
# Set up a fresh machine and run the main job on the embedded default (DuckDB):
# a three-site synthetic network, each site building the lung study cohorts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/coordinator demo "$@"
