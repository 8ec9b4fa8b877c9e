#!/usr/bin/env bash
# Creates .venv with the pinned torch and the tools, then builds alif_cuda in place (editable).
# Each step is skipped when it is already done, so a second run takes seconds. Sourced by
# scripts/train.sh, scripts/test.sh and scripts/bench.sh; safe to run again.
#   PYTHON               interpreter that creates .venv (default python3)
#   CUDA_HOME            toolkit used for the CUDA kernels (default /usr/local/cuda when present)
#   ALIF_CUDA_CPU_ONLY=1 build without CUDA kernels
#   TORCH_CUDA_ARCH_LIST GPU targets (default 9.0, the H100/H200, when CUDA kernels are built)
#   DEBUG=1              build with -O0 -g
#   ALIF_CUDA_REBUILD=1  rebuild even when the build is up to date
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Two set-ups at once in one checkout would build over each other: the second waits.
if command -v flock > /dev/null; then
  exec 9> .venv/alif_cuda_build.lock
  flock 9
fi

# pip resolves against the index even when everything is installed (seconds per call), so check
# the installed versions first and call pip only for what is missing.
ALIF_REQUIREMENTS=(torch==2.14.1 torchvision==0.29.1 "setuptools>=77" wheel ninja pybind11 numpy
                   pytest pytest-benchmark tqdm matplotlib build)
if ! .venv/bin/python - "${ALIF_REQUIREMENTS[@]}" <<'EOF'
import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv has pip's vendored copy only
    from pip._vendor.packaging.requirements import Requirement

missing = []
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        missing.append(spec)
        continue
    if not req.specifier.contains(have, prereleases=True):
        missing.append(f"{spec} (installed: {have})")
if missing:
    print("setup_env: installing " + ", ".join(missing))
    sys.exit(1)
EOF
then
  .venv/bin/pip install -q "${ALIF_REQUIREMENTS[@]}"
fi
# SpikingJelly 2.0.0, for alif_cuda.spikingjelly's tests and the benchmarks' SpikingJelly
# providers: without its declared dependencies (torchaudio, scipy, h5py, ... that importing its
# neurons does not need), plus the two that importing them does.
if ! .venv/bin/python -c "import spikingjelly.activation_based.monitor" > /dev/null 2>&1; then
  echo "setup_env: installing spikingjelly==2.0.0 (without its optional dependencies), loguru, tensorboard"
  .venv/bin/pip install -q --no-deps spikingjelly==2.0.0
  .venv/bin/pip install -q "loguru>=0.7,<1" tensorboard
fi

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
if [ "${ALIF_CUDA_CPU_ONLY:-0}" != "1" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  # Compile the CUDA kernels even without a GPU, so a CUDA compile error fails here.
  export FORCE_CUDA=1
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export ALIF_CUDA_EXPECT_CUDA_KERNELS=1
fi

# The build is current when the stamp's two keys match and the library loads: the configuration
# key (interpreter, torch, checkout, build switches, compiler, setup.py, pyproject.toml) and the
# sources key (every file under csrc/). A new configuration reinstalls; new sources only recompile
# what changed (ninja, objects kept under build/).
alif_config_key=$(
  {
    .venv/bin/python -c "import sys; from importlib.metadata import version; print(sys.version, version('torch'))"
    pwd
    for name in FORCE_CUDA ALIF_CUDA_CPU_ONLY TORCH_CUDA_ARCH_LIST DEBUG CUDA_HOME; do
      echo "$name=${!name:-}"
    done
    if [ "${FORCE_CUDA:-0}" = "1" ]; then "$CUDA_HOME/bin/nvcc" --version; fi
    c++ --version 2>/dev/null | head -1 || true
    cat setup.py pyproject.toml
  } | sha256sum | cut -d' ' -f1
)
alif_sources_key=$(find csrc -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
alif_stamp=.venv/alif_cuda_build.stamp

# Prints "current", "sources" (installed here, sources changed) or "install".
alif_build_state() {
  .venv/bin/python - "$alif_stamp" "$alif_config_key" "$alif_sources_key" <<'EOF'
import glob
import json
import sys
from importlib import metadata
from pathlib import Path

stamp, config_key, sources_key = sys.argv[1:]
try:
    url = json.loads(metadata.distribution("alif_cuda").read_text("direct_url.json") or "{}")
except metadata.PackageNotFoundError:
    url = {}
if not (url.get("dir_info", {}).get("editable") and url.get("url") == Path.cwd().as_uri()):
    print("install")  # not installed, or installed from somewhere else
    sys.exit()
keys = Path(stamp).read_text().split() if Path(stamp).exists() else []
if keys[:1] != [config_key]:
    print("install")
    sys.exit()
libraries = glob.glob("alif_cuda/_C*.so")
try:
    import torch

    torch.ops.load_library(libraries[0])
    loads = len(libraries) == 1
except Exception:
    loads = False
print("current" if loads and keys[1:] == [sources_key] else "sources")
EOF
}

start=$(date +%s)
alif_state=$(alif_build_state)
if [ "${ALIF_CUDA_REBUILD:-0}" = "1" ]; then
  alif_state=install
fi
if [ "$alif_state" = current ]; then
  echo "alif_cuda is up to date (CUDA kernels: ${FORCE_CUDA:-0}); checked in $(( $(date +%s) - start )) s"
else
  # Unlink the old library rather than let the build overwrite it in place: a process that has
  # it loaded keeps its copy instead of crashing.
  rm -f alif_cuda/_C*.so "$alif_stamp"
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  mkdir -p build
  alif_log=build/alif_cuda_build.log
  echo "setup_env: building alif_cuda ($alif_state; CUDA kernels: ${FORCE_CUDA:-0}; a few minutes; log in $alif_log)"
  if [ "$alif_state" = sources ]; then
    alif_build=(.venv/bin/python setup.py build_ext --inplace)
  else
    alif_build=(.venv/bin/pip install --no-build-isolation --no-deps -e .)
  fi
  if ! "${alif_build[@]}" > "$alif_log" 2>&1; then
    tail -n 40 "$alif_log" >&2
    echo "setup_env: the build failed: ${alif_build[*]} (full log: $alif_log)" >&2
    exit 1
  fi
  echo "$alif_config_key $alif_sources_key" > "$alif_stamp"
  case "$(alif_build_state)" in
    current) ;;
    install)
      rm -f "$alif_stamp"
      echo "setup_env: alif_cuda was built but is not installed from $(pwd); see the messages above" >&2
      exit 1 ;;
    *)
      rm -f "$alif_stamp"
      echo "setup_env: the freshly built alif_cuda/_C library does not load with this torch" >&2
      exit 1 ;;
  esac
  echo "alif_cuda built in $(( $(date +%s) - start )) s ($alif_state; CUDA kernels: ${FORCE_CUDA:-0})"
fi
if command -v flock > /dev/null; then
  exec 9>&-
fi
