#!/usr/bin/env bash
# Installs everything (scripts/setup_env.sh) and runs the main job: the alif kernels against the
# PyTorch reference, on the GPU when there is one, else on the CPU; prints a table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
.venv/bin/python bench/bench_alif_quick.py "$@"
