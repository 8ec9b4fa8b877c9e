#!/usr/bin/env bash
# Verifies and measures alif_cuda on a GPU in one command per stage, inside a time budget:
#   scripts/gpu_check.sh [--dry-run] [--budget-s S] [--out DIR] [--train-epochs E] [--no-build] verify|train|sweep
# Results go to $OUT/<stage>/ when OUT is set, else results/gpu/<device>-<date>/<stage>/.
# python -m bench.gpu_check does the work (its --help lists every part); --dry-run rehearses on the CPU.
# Python: $PYTHON, else the project's .venv, else python3 (the GPU machine's image).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
export PYTHONUNBUFFERED=1
exec "$py" -m bench.gpu_check "$@"
