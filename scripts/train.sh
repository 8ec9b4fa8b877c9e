#!/usr/bin/env bash
# The main job: installs what it needs (scripts/setup_env.sh; nothing is rebuilt when the build is
# up to date), then trains the paper's Table 8 MNIST classifier with the fused kernels on the
# MNIST copy shipped in data/.
#   With a GPU and the CUDA kernels built: the full recipe (GPU_RECIPE_ARGS below).
#   Otherwise: a short CPU run (6000 training images, one epoch, 2000 test images, no
#   augmentation, which slows the first epoch's learning) that shows learning in a few minutes
#   on a small machine (CPU_RECIPE_ARGS below).
# Every run writes to a new directory, runs/mnist_<gpu|cpu>_<UTC time>; extra arguments go to
# python -m models.train_classifier and win over the defaults, e.g.
#   bash scripts/train.sh --epochs 3             # a longer CPU run
#   bash scripts/train.sh --out runs/mine        # a directory of your choice (must be new)
#   bash scripts/train.sh --out runs/mine --resume
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
train_sh_start=$(date +%s)
source scripts/setup_env.sh
setup_s=$(( $(date +%s) - train_sh_start ))

# The GPU recipe (fp32, cosine annealing over the whole run) is sized for about ten minutes of an
# H100; neither its time nor its accuracy has been measured on a GPU yet.
GPU_RECIPE_ARGS=(--batch-size 128 --lr 1e-3 --epochs 60 --workers 8)
CPU_RECIPE_ARGS=(--subset 6000 --epochs 1 --test-subset 2000 --no-augment)

if .venv/bin/python -c "import sys, torch, alif_cuda; sys.exit(not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()))"; then
  device=gpu
  recipe=("${GPU_RECIPE_ARGS[@]}")
else
  device=cpu
  recipe=("${CPU_RECIPE_ARGS[@]}")
  if .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "train.sh: a GPU is visible but this build of alif_cuda has no CUDA kernels (no nvcc was" \
         "found); training on the CPU. Set CUDA_HOME to a CUDA toolkit and rerun to use the GPU." >&2
  fi
fi

# The last --out wins (argparse), so a user's --out replaces the default one.
out=runs/mnist_${device}_$(date -u +%Y%m%d-%H%M%S)
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --out) out=${args[$((i + 1))]:-$out} ;;
    --out=*) out=${args[$i]#--out=} ;;
  esac
done

echo "train.sh: training on the $device: python -m models.train_classifier --dataset mnist --data-dir data ${recipe[*]} --out $out $*"
start=$(date +%s)
.venv/bin/python -m models.train_classifier --dataset mnist --data-dir data "${recipe[@]}" \
  --out "$out" "$@"
files=()
for name in metrics.jsonl summary.json curves.png; do
  if [ -e "$out/$name" ]; then files+=("$name"); else files+=("$name (missing)"); fi
done
echo "train.sh: set-up ${setup_s} s, training $(( $(date +%s) - start )) s; in $out: ${files[*]}"
