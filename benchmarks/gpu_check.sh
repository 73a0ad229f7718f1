#!/usr/bin/env bash
# The GPU check in one command (docs/performance.md): benchmarks/gpu_check.sh [--out DIR] [--cpu-dry-run]
# Uses .venv when there is one, else python3 (a GPU machine's image). Wheels that image lacks, fetched
# beforehand with benchmarks/gpu_check_wheels.sh into .whl/, are installed to a scratch directory first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
if ! "$PY" -c "import soundfile, webdataset, deepspeed" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/xlsr-gpu-check-site .whl/*.whl
  export PYTHONPATH=/tmp/xlsr-gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_SILENT=true
exec "$PY" benchmarks/gpu_check.py "$@"
