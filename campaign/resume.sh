#!/usr/bin/env bash
# Start every campaign run in the background from its newest state, committed here or in its run
# folder (one thread each while both train; a run alone with work left takes every core).
# Run at the start of every working session, from anywhere; logs go to runs/campaign/NAME.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" campaign/campaign.py start "$@"
