"""The benchmark scripts run end to end (tiny sizes, CPU, nothing saved), so they do not rot
between GPU sessions. Timings are never asserted here."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

CASES = {
    "alif": ["bench_alif.py", "--device", "cpu", "--T", "3", "--N", "8", "--dtypes", "float32", "--reps", "1",
             "--providers", "alif_cuda", "reference"],
    "taid": ["bench_taid.py", "--device", "cpu", "--T", "4", "--batch", "2", "--reps", "1", "--no-compile"],
    "first_touch": ["bench_first_touch.py", "--mb", "2", "--reps", "1"],
    "fsvae": ["bench_fsvae.py", "--device", "cpu", "--T", "2", "--batch", "2", "--reps", "1"],
    "train": ["bench_train.py", "--device", "cpu", "--nets", "mnist", "--batches", "2", "--precisions", "fp32",
              "--reps", "1", "--providers", "alif_cuda", "reference", "--check-steps", "5"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bench_script_runs(name):
    args = CASES[name] + ["--no-save"]
    proc = subprocess.run([sys.executable, str(BENCH / args[0]), *args[1:]], cwd=BENCH, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| " in proc.stdout  # the results table was printed
