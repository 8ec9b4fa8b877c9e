#!/usr/bin/env bash
# Creates .venv with the pinned torch and the tools, then builds alif_cuda in place (editable).
# Sourced by scripts/test.sh and scripts/bench.sh; safe to run again (it reuses .venv).
#   CUDA_HOME            toolkit used for the CUDA kernels (default /usr/local/cuda when present)
#   ALIF_CUDA_CPU_ONLY=1 build without CUDA kernels
#   TORCH_CUDA_ARCH_LIST GPU targets (default 9.0, the H100/H200, when no GPU is visible)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q "setuptools>=64" wheel ninja pybind11 numpy pytest pytest-benchmark tqdm matplotlib

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
if [ "${ALIF_CUDA_CPU_ONLY:-0}" != "1" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  # Compile the CUDA kernels even without a GPU, so a CUDA compile error fails here.
  export FORCE_CUDA=1
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export ALIF_CUDA_EXPECT_CUDA_KERNELS=1
fi
start=$(date +%s)
MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/pip install -q --no-build-isolation -e .
echo "alif_cuda built in $(( $(date +%s) - start )) s (CUDA kernels: ${FORCE_CUDA:-0})"
