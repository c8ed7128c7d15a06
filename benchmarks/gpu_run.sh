#!/usr/bin/env bash
# The one command of a GPU session (docs/gpu.md), run from anywhere in the repository copy:
#   bash benchmarks/gpu_run.sh [gpu_run.py options]
# Installs the wheels carried in gpu-carry/wheels (the machine reaches no package index), puts
# maskdn's source on the path, and runs benchmarks/gpu_run.py; with $OUT set, its output is also
# kept in $OUT/gpu_run.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G "gpu-carry/wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/maskdn-wheels gpu-carry/wheels/*.whl
  export PYTHONPATH=/tmp/maskdn-wheels${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
  "$PY" benchmarks/gpu_run.py "$@" 2>&1 | tee "$OUT/gpu_run.log"
  exit "${PIPESTATUS[0]}"
fi
exec "$PY" benchmarks/gpu_run.py "$@"
