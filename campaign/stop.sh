#!/usr/bin/env bash
# Stop every campaign run (each saves its state at its next step) and copy the newest states and
# benchmark records into campaign/ for the commit; also redraws campaign/README.md's tables,
# docs/campaign.png, docs/campaign-bench.png and the targets in docs/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" campaign/campaign.py stop "$@"
