#!/usr/bin/env bash
# The gateway overhead benchmark (see benchmarks/overhead.py and docs/performance.md).
#   benchmarks/run.sh            full run (~8 min), Markdown tables on stdout
#   QUICK=1 benchmarks/run.sh    smoke run (~1 min)
#   benchmarks/run.sh profile    py-spy profile of the gateway under load
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m benchmarks.overhead "$@"
