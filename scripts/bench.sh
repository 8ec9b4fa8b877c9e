#!/usr/bin/env bash
# Installs what it needs (scripts/setup_env.sh; no rebuild when the build is up to date), then times
# the fused alif kernels against their PyTorch reference alif_ref, on the GPU when there is one,
# else on the CPU, and prints a table. Extra arguments go to bench/bench_alif_quick.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
.venv/bin/python bench/bench_alif_quick.py "$@"
