"""What each stage runs: the command table, the budgets, the parts in order and the headline sizes."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
DEFAULT_BUDGET_S = {"verify": 420, "train": 540, "sweep": 540}
DRY_BUDGET_S = {"verify": 240, "train": 180, "sweep": 240}
FINAL_RESERVE_S = 4.0  # writing summary.md, results.json and junit.xml after the last part
STOP_GRACE_S = 8.0  # SIGINT lets pytest write its junit file and training end its epoch log
MAX_OUT_FILES = 8
LOG_PART_LIMIT = 1 << 20  # bytes of one part's output kept in log.txt (head and tail)

# The command table: every command the stages run, "gpu" for the real run, "dry" for the CPU
# rehearsal. Placeholders: {py} this Python, {junit} a junit file, {run_dir} a training run
# directory, {epochs} the epoch count, {kernel_md} / {kernel_json} the kernel report's files.
# Each script's own --help documents these flags.
SANITIZER_SELECTION = [
    "tests/test_alif.py", "tests/test_taid.py", "-k",
    "(test_alif_matches_reference and 33-cuda and (float32 or bfloat16)"
    " and (scalar-rect-hard-attached or chan-atan-soft-detach))"
    " or (test_alif_static_input_matches_reference and 33-cuda-float32"
    " and (scalar-rect-hard-attached or chan-atan-soft-detach))"
    " or (test_alif_awkward_shapes and cuda-bfloat16)"
    " or ((test_taid_plane_sizes or test_taid_non_contiguous_inputs or test_taid_misaligned_input)"
    " and cuda-float32)",
]
PYTEST = ["{py}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml={junit}"]
SANITIZER = ["{sanitizer}", "--tool", "{tool}", "--target-processes", "all", "--print-limit", "30",
             "--error-exitcode", "9"]
COMMANDS = {
    "gpu": {
        "wheels": ["{py}", "-m", "pip", "install", "--no-index", "--find-links", "wheels", "spikingjelly==2.0.0"],
        # An in-place build when the image's setuptools cannot do editable installs (PEP 660 needs >= 64).
        "build": ["bash", "-c", '"$0" -m pip install --no-deps --no-build-isolation -e .'
                  ' || "$0" setup.py build_ext --inplace', "{py}"],
        "kernel_report": ["{py}", "bench/kernel_report.py", "--out", "{kernel_md}", "--json", "{kernel_json}"],
        # The cases marked `cuda` (tests/conftest.py): every CUDA device case and every test that needs a GPU.
        "tests": PYTEST + ["-n", "4", "tests", "-m", "cuda"],
        "memcheck": [a.replace("{tool}", "memcheck") for a in SANITIZER] + PYTEST + SANITIZER_SELECTION,
        "racecheck": [a.replace("{tool}", "racecheck") for a in SANITIZER] + PYTEST + SANITIZER_SELECTION,
        "bench_alif_fp32": ["{py}", "bench/bench_alif.py", "--device", "cuda", "--T", "8", "--N", "24",
                            "--dtypes", "float32", "--providers", "alif_cuda", "reference+compile", "spikingjelly",
                            "--no-save"],
        "bench_alif_bf16": ["{py}", "bench/bench_alif.py", "--device", "cuda", "--T", "8", "--N", "24",
                            "--dtypes", "bfloat16", "--providers", "alif_cuda", "reference+compile", "spikingjelly",
                            "--no-save"],
        "bench_taid": ["{py}", "bench/bench_taid.py", "--device", "cuda", "--dtype", "float32", "--T", "16",
                       "--batch", "250", "--no-save"],
        "bench_train": ["{py}", "bench/bench_train.py", "--device", "cuda", "--nets", "mnist", "--batches", "128",
                        "--precisions", "fp32", "bf16", "--providers", "alif_cuda", "spikingjelly", "--no-save"],
        "sweep_alif_fp32": ["{py}", "bench/bench_alif.py", "--device", "cuda", "--T", "4", "8", "16", "32",
                            "--N", "16", "18", "20", "22", "24", "--dtypes", "float32",
                            "--providers", "alif_cuda", "reference+compile", "spikingjelly", "--no-save"],
        "sweep_alif_bf16": ["{py}", "bench/bench_alif.py", "--device", "cuda", "--T", "4", "8", "16", "32",
                            "--N", "16", "20", "24", "--dtypes", "bfloat16", "--providers", "alif_cuda", "spikingjelly",
                            "--no-save"],
        "sweep_train": ["{py}", "bench/bench_train.py", "--device", "cuda", "--nets", "mnist", "cifar10",
                        "--batches", "128", "512", "--precisions", "fp32", "bf16",
                        "--providers", "alif_cuda", "reference", "spikingjelly", "--no-save"],
        "sweep_fsvae": ["{py}", "bench/bench_fsvae.py", "--device", "cuda", "--dataset", "mnist", "--batch", "250",
                        "--T", "16", "--no-save"],
        # RECIPE: the Table 8 MNIST run of the train stage (helper A, 2026-12-01: fp32, batch 128, lr 1e-3,
        # cosine over the whole run, the default PLIF neuron init; untested on a GPU yet).
        "train": ["{py}", "-m", "models.train_classifier", "--dataset", "mnist", "--data-dir", "data",
                  "--out", "{run_dir}", "--epochs", "{epochs}", "--batch-size", "128", "--lr", "1e-3",
                  "--workers", "8", "--progress", "none"],
        # Appended to "train" for the probe that times an epoch (argparse keeps the last value).
        "train_probe": ["--subset", "5120", "--test-subset", "2560"],
    },
    "dry": {
        "wheels": ["{py}", "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", "wheels",
                   "spikingjelly==2.0.0"],
        "build": ["{py}", "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."],
        "kernel_report": ["{py}", "bench/kernel_report.py", "--out", "{kernel_md}", "--json", "{kernel_json}"],
        "tests": PYTEST + ["tests/test_alif.py", "tests/test_taid.py", "-k",
                           "test_opcheck or test_cuda_graph_capture or test_taid_cuda_graph_capture"
                           " or test_taid_empty_batch"],
        "bench_alif_fp32": ["{py}", "bench/bench_alif.py", "--device", "cpu", "--T", "2", "--N", "10",
                            "--dtypes", "float32", "--providers", "alif_cuda", "reference", "spikingjelly",
                            "--reps", "2", "--no-save"],
        "bench_taid": ["{py}", "bench/bench_taid.py", "--device", "cpu", "--dtype", "float32", "--T", "2",
                       "--batch", "2", "--reps", "2", "--no-compile", "--no-save"],
        "bench_train": ["{py}", "bench/bench_train.py", "--device", "cpu", "--nets", "mnist", "--batches", "2",
                        "--precisions", "fp32", "--providers", "alif_cuda", "--reps", "1", "--no-save"],
        "sweep_alif_fp32": ["{py}", "bench/bench_alif.py", "--device", "cpu", "--T", "2", "3", "--N", "8", "10",
                            "--dtypes", "float32", "--providers", "alif_cuda", "reference", "--reps", "2",
                            "--no-save"],
        "sweep_train": ["{py}", "bench/bench_train.py", "--device", "cpu", "--nets", "mnist", "cifar10",
                        "--batches", "2", "--precisions", "fp32", "--providers", "alif_cuda", "reference",
                        "--reps", "1", "--no-save"],
        "sweep_fsvae": ["{py}", "bench/bench_fsvae.py", "--device", "cpu", "--dataset", "mnist", "--batch", "2",
                        "--T", "2", "--reps", "1", "--no-save"],
        "train": ["{py}", "-m", "models.train_classifier", "--dataset", "mnist", "--data-dir", "data",
                  "--out", "{run_dir}", "--epochs", "{epochs}", "--T", "2", "--batch-size", "16",
                  "--subset", "32", "--test-subset", "16", "--device", "cpu", "--workers", "0", "--progress", "none"],
        "train_probe": ["--subset", "16", "--test-subset", "16"],
    },
}
BUILD_ENV = {"gpu": {"MAX_JOBS": "16", "TORCH_CUDA_ARCH_LIST": "9.0", "FORCE_CUDA": "1"}, "dry": {}}
TEST_ENV = {"ALIF_CUDA_EXPECT_CUDA_KERNELS": "1"}  # a GPU run also asserts the build has CUDA kernels
SANITIZER_ENV = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # one allocation per tensor: memcheck sees overruns
# A skipped CUDA case whose reason says the GPU or CUDA kernels are missing (tests/conftest.py).
GPU_SKIP = re.compile(r"no CUDA device|without CUDA kernels|needs a GPU|no GPU", re.I)
# The sizes the targets read, per mode (bench/gpu_check/targets.py fills its {placeholders} from these).
HEADLINE = {"gpu": dict(T="8", N="2^24", plane="3x64x64", batch="128", small_N="2^16", big_batch="512"),
            "dry": dict(T="2", N="2^10", plane="3x64x64", batch="2", small_N="2^8", big_batch="2")}
PROBE_EPOCHS = 2  # the probe's epochs on a subset; the last one is timed
MAX_EPOCHS = {"gpu": 200, "dry": 2}  # the train stage's epochs when the probe says more would fit

# (part, longest it may run in s, least it needs in s) in the order the stage runs them. When time
# is short each part leaves the later parts their least (scaled down with a budget below the default).
PARTS = {
    "verify": [("env", 60, 10), ("wheels", 60, 10), ("build", 300, 60), ("kernel_report", 60, 10),
               ("tests", 180, 45), ("memcheck", 90, 30), ("racecheck", 90, 30), ("bench_alif_fp32", 120, 40),
               ("bench_alif_bf16", 90, 30), ("bench_taid", 90, 30), ("bench_train", 90, 25)],
    "train": [("env", 60, 10), ("build", 300, 60), ("train_probe", 120, 30), ("train", 100000, 60),
              ("train_finish", 60, 15)],
    "sweep": [("env", 60, 10), ("build", 300, 60), ("sweep_alif_fp32", 240, 90), ("sweep_alif_bf16", 180, 60),
              ("sweep_train", 180, 60), ("sweep_fsvae", 90, 30)],
}
