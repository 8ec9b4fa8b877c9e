"""Verify and measure alif_cuda on a GPU inside a fixed time budget, in one command per stage.

    scripts/gpu_check.sh [--dry-run] [--budget-s S] [--out DIR] [--train-epochs E] [--no-build] STAGE

Stages (run from the repository root):
  verify  (default budget 420 s) install the wheels in wheels/, build the extension, report its
          kernels (bench/kernel_report.py), run the CUDA test cases (a CUDA case that skips for
          want of a GPU fails), compute-sanitizer memcheck and racecheck over a focused selection,
          then the headline benchmarks (alif fp32/bf16 T=8 N=2^24, TAID T=16 B=250, one Table 8
          MNIST training step at B=128) against SpikingJelly 2.0.0 and the compiled reference.
  train   (default budget 540 s) the Table 8 MNIST recipe to its final epoch inside the budget:
          a two-epoch probe on a subset times an epoch, then the run with as many epochs as fit.
  sweep   (default budget 540 s) the wider benchmarks for a later session: alif at T in {4, 8, 16, 32}
          and N = 2^16..2^24 in fp32 (bf16 at 2^16, 2^20, 2^24), every mode (static input, inference,
          the small-N host-overhead regime), MNIST and CIFAR-10 training steps at B=128 and 512,
          and the FSVAE+TAID step against the reference ops. Its dry run works but is not in CI.

Every part runs as a subprocess through its script's command line (the COMMANDS table below is
the one place to change a flag) under a deadline: a part that would overrun is interrupted
(SIGINT, then SIGTERM, then SIGKILL), recorded as a timeout, and the stage goes on to the next part
while time is left. Whatever ran is written, marked partial, to OUT/<stage>/ where OUT is $OUT when
set, else --out, else results/gpu/<device>-<date>/: summary.md (each target, the measured value,
met or not; device, torch version, commands), results.json, junit.xml, log.txt (every part's
output) and the stage's own files (kernel_report.md; metrics.jsonl, train_summary.json,
curves.png), at most 8 files per stage (what the GPU machine sends back).

--dry-run runs the same stages on the CPU at tiny sizes with a short budget, without
compute-sanitizer, building only if the extension is not built yet: CI proves the script, its
budget logic and its files. Exit status: 0 every part passed (or was skipped by design), 1 a part
failed, 3 out of time (partial results), 2 the stage could not run (no GPU, bad arguments).
"""
import argparse
import datetime
import glob
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DEFAULT_BUDGET_S = {"verify": 420, "train": 540, "sweep": 540}
DRY_BUDGET_S = {"verify": 240, "train": 180, "sweep": 240}
FINAL_RESERVE_S = 4.0  # writing summary.md, results.json and junit.xml after the last part
STOP_GRACE_S = 8.0  # SIGINT lets pytest write its junit file and training end its epoch log
MAX_OUT_FILES = 8
LOG_PART_LIMIT = 1 << 20  # bytes of one part's output kept in log.txt (head and tail)

# ---------------------------------------------------------------------------------------------
# The command table: every command the stages run, "gpu" for the real run, "dry" for the CPU
# rehearsal. Placeholders: {py} this Python, {junit} a junit file, {run_dir} a training run
# directory, {epochs} the epoch count, {kernel_md} / {kernel_json} the kernel report's files.
# Each script's own --help documents these flags.
SANITIZER_SELECTION = [
    "tests/test_alif.py", "tests/test_taid.py", "-k",
    "(test_alif_matches_reference and 33-cuda and (float32 or bfloat16) and (scalar-rect-hard-attached or chan-atan-soft-detach))"
    " or (test_alif_static_input_matches_reference and 33-cuda-float32 and (scalar-rect-hard-attached or chan-atan-soft-detach))"
    " or (test_alif_awkward_shapes and cuda-bfloat16)"
    " or ((test_taid_plane_sizes or test_taid_non_contiguous_inputs or test_taid_misaligned_input) and cuda-float32)",
]
PYTEST = ["{py}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml={junit}"]
COMMANDS = {
    "gpu": {
        "wheels": ["{py}", "-m", "pip", "install", "--no-index", "--find-links", "wheels", "spikingjelly==2.0.0"],
        # An in-place build when the image's setuptools cannot do editable installs (PEP 660 needs >= 64).
        "build": ["bash", "-c", '"$0" -m pip install --no-deps --no-build-isolation -e . || "$0" setup.py build_ext --inplace',
                  "{py}"],
        "kernel_report": ["{py}", "bench/kernel_report.py", "--out", "{kernel_md}", "--json", "{kernel_json}"],
        "tests": PYTEST + ["-n", "4", "tests", "-k", "cuda"],
        "memcheck": ["{sanitizer}", "--tool", "memcheck", "--target-processes", "all", "--print-limit", "30",
                     "--error-exitcode", "9"] + PYTEST + SANITIZER_SELECTION,
        "racecheck": ["{sanitizer}", "--tool", "racecheck", "--target-processes", "all", "--print-limit", "30",
                      "--error-exitcode", "9"] + PYTEST + SANITIZER_SELECTION,
        "bench_alif_fp32": ["{py}", "bench/bench_alif.py", "--device", "cuda", "--T", "8", "--N", "24", "--dtypes", "float32",
                            "--providers", "alif_cuda", "reference+compile", "spikingjelly", "--no-save"],
        "bench_alif_bf16": ["{py}", "bench/bench_alif.py", "--device", "cuda", "--T", "8", "--N", "24", "--dtypes", "bfloat16",
                            "--providers", "alif_cuda", "reference+compile", "spikingjelly", "--no-save"],
        "bench_taid": ["{py}", "bench/bench_taid.py", "--device", "cuda", "--dtype", "float32", "--T", "16", "--batch", "250",
                       "--no-save"],
        "bench_train": ["{py}", "bench/bench_train.py", "--device", "cuda", "--nets", "mnist", "--batches", "128",
                        "--precisions", "fp32", "bf16", "--providers", "alif_cuda", "spikingjelly", "--no-save"],
        "sweep_alif_fp32": ["{py}", "bench/bench_alif.py", "--device", "cuda", "--T", "4", "8", "16", "32", "--N", "16", "18", "20",
                            "22", "24", "--dtypes", "float32", "--providers", "alif_cuda", "reference+compile", "spikingjelly",
                            "--no-save"],
        "sweep_alif_bf16": ["{py}", "bench/bench_alif.py", "--device", "cuda", "--T", "4", "8", "16", "32", "--N", "16", "20", "24",
                            "--dtypes", "bfloat16", "--providers", "alif_cuda", "spikingjelly", "--no-save"],
        "sweep_train": ["{py}", "bench/bench_train.py", "--device", "cuda", "--nets", "mnist", "cifar10", "--batches", "128", "512",
                        "--precisions", "fp32", "bf16", "--providers", "alif_cuda", "reference", "spikingjelly", "--no-save"],
        "sweep_fsvae": ["{py}", "bench/bench_fsvae.py", "--device", "cuda", "--dataset", "mnist", "--batch", "250", "--T", "16",
                        "--no-save"],
        # RECIPE: the Table 8 MNIST run of the train stage (helper A, 2026-12-01: fp32, batch 128, lr 1e-3, cosine over
        # the whole run, the default PLIF neuron init; untested on a GPU yet).
        "train": ["{py}", "-m", "models.train_classifier", "--dataset", "mnist", "--data-dir", "data", "--out", "{run_dir}",
                  "--epochs", "{epochs}", "--batch-size", "128", "--lr", "1e-3", "--workers", "8", "--progress", "none"],
        # Appended to "train" for the probe that times an epoch (argparse keeps the last value).
        "train_probe": ["--subset", "5120", "--test-subset", "2560"],
    },
    "dry": {
        "wheels": ["{py}", "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", "wheels", "spikingjelly==2.0.0"],
        "build": ["{py}", "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."],
        "kernel_report": ["{py}", "bench/kernel_report.py", "--out", "{kernel_md}", "--json", "{kernel_json}"],
        "tests": PYTEST + ["tests/test_alif.py", "tests/test_taid.py", "-k",
                           "test_opcheck or test_cuda_graph_capture or test_taid_cuda_graph_capture or test_taid_empty_batch"],
        "bench_alif_fp32": ["{py}", "bench/bench_alif.py", "--device", "cpu", "--T", "2", "--N", "10", "--dtypes", "float32",
                            "--providers", "alif_cuda", "reference", "spikingjelly", "--reps", "2", "--no-save"],
        "bench_taid": ["{py}", "bench/bench_taid.py", "--device", "cpu", "--dtype", "float32", "--T", "2", "--batch", "2",
                       "--reps", "2", "--no-compile", "--no-save"],
        "bench_train": ["{py}", "bench/bench_train.py", "--device", "cpu", "--nets", "mnist", "--batches", "2",
                        "--precisions", "fp32", "--providers", "alif_cuda", "--reps", "1", "--no-save"],
        "sweep_alif_fp32": ["{py}", "bench/bench_alif.py", "--device", "cpu", "--T", "2", "3", "--N", "8", "10", "--dtypes",
                            "float32", "--providers", "alif_cuda", "reference", "--reps", "2", "--no-save"],
        "sweep_train": ["{py}", "bench/bench_train.py", "--device", "cpu", "--nets", "mnist", "cifar10", "--batches", "2",
                        "--precisions", "fp32", "--providers", "alif_cuda", "reference", "--reps", "1", "--no-save"],
        "sweep_fsvae": ["{py}", "bench/bench_fsvae.py", "--device", "cpu", "--dataset", "mnist", "--batch", "2", "--T", "2",
                        "--reps", "1", "--no-save"],
        "train": ["{py}", "-m", "models.train_classifier", "--dataset", "mnist", "--data-dir", "data", "--out", "{run_dir}",
                  "--epochs", "{epochs}", "--T", "2", "--batch-size", "16", "--subset", "32", "--test-subset", "16",
                  "--device", "cpu", "--workers", "0", "--progress", "none"],
        "train_probe": ["--subset", "16", "--test-subset", "16"],
    },
}
BUILD_ENV = {"gpu": {"MAX_JOBS": "16", "TORCH_CUDA_ARCH_LIST": "9.0", "FORCE_CUDA": "1"}, "dry": {}}
TEST_ENV = {"ALIF_CUDA_EXPECT_CUDA_KERNELS": "1"}  # a GPU run also asserts the build has CUDA kernels
SANITIZER_ENV = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # one allocation per tensor: memcheck sees overruns
# A skipped CUDA case whose reason says the GPU or CUDA kernels are missing (tests/conftest.py).
GPU_SKIP = re.compile(r"no CUDA device|without CUDA kernels|needs a GPU|no GPU", re.I)
# The sizes the headline targets read, per mode: (alif T, alif N as 2^k, taid plane, train batch).
HEADLINE = {"gpu": dict(T="8", N="2^24", plane="3x64x64", batch="128", small_N="2^16", big_batch="512"),
            "dry": dict(T="2", N="2^10", plane="3x64x64", batch="2", small_N="2^8", big_batch="2")}
PROBE_EPOCHS = 2  # the probe's epochs on a subset; the last one is timed
MAX_EPOCHS = {"gpu": 200, "dry": 2}  # the train stage's epochs when the probe says more would fit

# (part, longest it may run in s, least it needs in s) in the order the stage runs them. When time
# is short each part leaves the later parts their least (scaled down with a budget below the default).
PARTS = {
    "verify": [("env", 60, 10), ("wheels", 60, 10), ("build", 300, 60), ("kernel_report", 60, 10), ("tests", 180, 45),
               ("memcheck", 90, 30), ("racecheck", 90, 30), ("bench_alif_fp32", 120, 40), ("bench_alif_bf16", 90, 30),
               ("bench_taid", 90, 30), ("bench_train", 90, 25)],
    "train": [("env", 60, 10), ("build", 300, 60), ("train_probe", 120, 30), ("train", 100000, 60), ("train_finish", 60, 15)],
    "sweep": [("env", 60, 10), ("build", 300, 60), ("sweep_alif_fp32", 240, 90), ("sweep_alif_bf16", 180, 60),
              ("sweep_train", 180, 60), ("sweep_fsvae", 90, 30)],
}


class Check:
    """One stage's clock, parts, output directory and files."""

    def __init__(self, stage, args):
        self.stage, self.dry = stage, args.dry_run
        self.mode = "dry" if self.dry else "gpu"
        self.budget = float(args.budget_s or (DRY_BUDGET_S if self.dry else DEFAULT_BUDGET_S)[stage])
        self.t0 = time.monotonic()
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.deadline = self.t0 + self.budget
        self.scale = min(1.0, self.budget / DEFAULT_BUDGET_S[stage])
        self.args = args
        self.parts, self.data, self.targets = [], {}, []
        self.junit_suites = []  # pytest's junit files, merged into junit.xml
        self.work = Path(tempfile.mkdtemp(prefix=f"gpu_check_{stage}_"))
        self.out = None  # set once the device is known
        self.log_chunks = []
        self.plan = PARTS[stage]
        self.command = "scripts/gpu_check.sh " + " ".join(shlex.quote(a) for a in args.argv)

    # -- clock ------------------------------------------------------------------------------
    def elapsed(self):
        return time.monotonic() - self.t0

    def remaining(self):
        return self.deadline - time.monotonic()

    def allowance(self, name):
        """Seconds part `name` may run: its cap, less what the later parts need at the least."""
        names = [p[0] for p in self.plan]
        i = names.index(name)
        _, cap, least = self.plan[i]
        later = sum(p[2] for p in self.plan[i + 1:]) * self.scale
        avail = self.remaining() - FINAL_RESERVE_S - STOP_GRACE_S
        t = min(cap, avail - later)
        if t < least * self.scale:
            t = min(least * self.scale, avail)
        return t

    # -- parts ------------------------------------------------------------------------------
    def record(self, name, status, note="", elapsed=0.0, **extra):
        part = dict(name=name, status=status, note=note, elapsed_s=round(elapsed, 1), **extra)
        self.parts.append(part)
        print(f"[{self.elapsed():6.1f} s] {name}: {status}" + (f" ({note})" if note else ""), flush=True)
        return part

    def amend(self, part, status, note):
        """Changes a part's verdict after reading its output (and says so on the console)."""
        part.update(status=status, note=note)
        print(f"[{self.elapsed():6.1f} s] {part['name']}: {status} ({note})", flush=True)
        return part

    def skip(self, name, note):
        return self.record(name, "skipped", note)

    def fmt(self, argv, **values):
        """Fills the {placeholders} named in `values` (and {py}); other braces stay as they are."""
        values = dict(py=PY, **{k: str(v) for k, v in values.items()})
        return [re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), a) for a in argv]

    def run(self, name, argv, env=None):
        """Runs argv as a part under the deadline; returns the part record with its output."""
        limit = self.allowance(name)
        if limit < 3:
            return self.record(name, "skipped", f"out of time ({self.remaining():.0f} s left of {self.budget:.0f} s)",
                               out_of_time=True)
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        log_path = self.work / f"{name}.log"
        t = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=default_sigint)
            timed_out = False
            try:
                rc = proc.wait(timeout=limit)
                kill_group(proc)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = stop(proc)
        elapsed = time.monotonic() - t
        output = log_path.read_text(errors="replace")
        self.log_chunks.append((name, self.display(argv), rc, elapsed, output))
        command = self.display(argv)
        if timed_out:
            part = self.record(name, "timeout", f"stopped after {elapsed:.0f} s (its share of the budget: {limit:.0f} s)",
                               elapsed, command=command, returncode=rc, out_of_time=True)
        elif rc != 0:
            part = self.record(name, "failed", f"exit status {rc}: {last_line(output)}", elapsed, command=command, returncode=rc)
        else:
            part = self.record(name, "passed", "", elapsed, command=command, returncode=rc)
        part["output"] = output
        return part

    def display(self, argv):
        """argv as a shell line without this machine's paths: python, <work>/..., <out>/..."""
        line = " ".join("<environment probe>" if a == ENV_SNIPPET else shlex.quote(str(a)) for a in argv)
        return self.display_text(line)

    def display_text(self, text):
        for path, name in ((self.work, "<work>"), (self.out, "<out>"), (PY, "python"), (f"{ROOT}/", "")):
            if path is not None:
                text = text.replace(str(path), name)
        return text

    # -- output -----------------------------------------------------------------------------
    def set_out(self, device_tag):
        base = os.environ.get("OUT") or self.args.out
        if not base:
            date = self.started.strftime("%Y-%m-%d")
            base = ROOT / "results" / "gpu" / f"{device_tag}-{date}{'-dry-run' if self.dry else ''}"
        self.out = Path(base) / self.stage
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def partial(self):
        return any(p.get("out_of_time") for p in self.parts)

    def status(self):
        if any(p["status"] == "failed" for p in self.parts):
            return "failed"
        return "partial" if self.partial else "passed"

    def finish(self):
        """Writes summary.md, results.json, junit.xml and log.txt; returns the exit status."""
        if self.out is None:
            self.set_out("unknown")
        status = self.status()
        env = self.data.get("env", {})
        parts = [{k: v for k, v in p.items() if k != "output"} for p in self.parts]
        results = dict(
            stage=self.stage, dry_run=self.dry, status=status, partial=self.partial, budget_s=self.budget,
            elapsed_s=round(self.elapsed(), 1), started_utc=self.started.isoformat(timespec="seconds"),
            command=self.command, git=git_head(), env=env, parts=parts, targets=self.targets,
            data={k: v for k, v in self.data.items() if k != "env"},
        )
        (self.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (self.out / "summary.md").write_text(summary_markdown(self, results))
        write_junit(self, self.out / "junit.xml")
        write_log([(n, a, rc, t, self.display_text(out)) for n, a, rc, t, out in self.log_chunks], self.out / "log.txt")
        files = [p for p in self.out.rglob("*") if p.is_file()]
        text = (self.out / "summary.md").read_text()
        print(f"\n{text}")
        # The verdict and the targets once more at the very end: a console that keeps only the
        # tail of the output (the GPU machine's reply) still shows them.
        recap = text[text.index("## Targets"):text.index("\n\n", text.index("## Targets"))]
        print(f"{text.splitlines()[0]}\n{recap}")
        print(f"wrote {len(files)} files under {self.out}")
        if len(files) > MAX_OUT_FILES:
            print(f"warning: {len(files)} files under {self.out}; the GPU machine sends back only {MAX_OUT_FILES}")
        shutil.rmtree(self.work, ignore_errors=True)
        return {"passed": 0, "failed": 1, "partial": 3}[status]


def default_sigint():
    """In the child before exec: a shell's background job ignores SIGINT and its children inherit
    that, which would make stop()'s SIGINT a no-op."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(proc):
    """Interrupts a part's whole process group: SIGINT (pytest writes its junit file, training
    stops between steps), then SIGTERM, then SIGKILL. Returns the exit status."""
    for sig, wait in ((signal.SIGINT, STOP_GRACE_S * 0.6), (signal.SIGTERM, STOP_GRACE_S * 0.25),
                      (signal.SIGKILL, STOP_GRACE_S * 0.15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            rc = proc.wait()
            break
        try:
            rc = proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        rc = proc.wait()
    kill_group(proc)
    return rc


def kill_group(proc):
    """Ends what a part left behind in its process group (data-loader or compile workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def last_line(text):
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def git_head():
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Reading what the parts print.
def parse_last_table(text):
    """The last Markdown table in `text` as a list of {column: cell} rows."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    for block in reversed(blocks):
        if len(block) >= 2 and re.match(r"^\|[\s\-:|]+\|$", block[1]):
            header = [c.strip() for c in block[0].strip("|").split("|")]
            return [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in block[2:]]
    return []


def parse_copy_gbps(text):
    m = re.search(r"copy bandwidth\s+([\d.]+)\s*GB/s", text)
    return float(m.group(1)) if m else None


def number(cell):
    """'12.5', '93%', '1,024' -> float; '-' or missing -> None."""
    if cell is None:
        return None
    m = re.match(r"^\s*(-?[\d.,]+)\s*%?\s*$", str(cell))
    return float(m.group(1).replace(",", "")) if m else None


def parse_junit(path):
    """Counts and the failed / GPU-skipped cases of a pytest junit file (None if unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, FileNotFoundError):
        return None
    counts = dict(tests=0, failures=0, errors=0, skipped=0, passed=0)
    failed, gpu_skips = [], []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        cid = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            kind = "failures" if case.find("failure") is not None else "errors"
            counts[kind] += 1
            el = case.find("failure") if kind == "failures" else case.find("error")
            failed.append(f"{cid}: {(el.get('message') or '').splitlines()[0][:200] if el.get('message') else ''}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
            if GPU_SKIP.search(case.find("skipped").get("message") or ""):
                gpu_skips.append(cid)
        else:
            counts["passed"] += 1
    return dict(counts, failed=failed[:30], gpu_skips=len(gpu_skips), gpu_skip_examples=gpu_skips[:5])


def parse_sanitizer(text):
    """Errors (memcheck) or hazards (racecheck) from compute-sanitizer's summary lines."""
    m = re.search(r"ERROR SUMMARY:\s*(\d+)\s+error", text)
    hazards = re.search(r"RACECHECK SUMMARY:\s*(\d+)\s+hazard", text)
    return dict(errors=int(m.group(1)) if m else None, hazards=int(hazards.group(1)) if hazards else None)


def read_jsonl(path):
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def find_sanitizer():
    candidates = [shutil.which("compute-sanitizer"),
                  os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer")]
    candidates += sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"))
    candidates += sorted(glob.glob("/opt/nvidia/**/compute-sanitizer", recursive=True))
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


# ---------------------------------------------------------------------------------------------
# Parts shared by both stages.
ENV_SNIPPET = r"""
import json, platform, sys
info = {"python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info.update(device=f"CPU {platform.machine()}", cpu_threads=torch.get_num_threads())
except Exception as e:
    info["torch_error"] = repr(e)
try:
    import alif_cuda
    info.update(alif_cuda_built=True, cuda_kernels=bool(alif_cuda.cuda_kernels_available()))
except Exception as e:
    info.update(alif_cuda_built=False, alif_cuda_error=repr(e)[:300])
print("ENV " + json.dumps(info))
"""


def part_env(c):
    part = c.run("env", [PY, "-c", ENV_SNIPPET])
    m = re.search(r"^ENV (.*)$", part["output"], re.M)
    info = json.loads(m.group(1)) if m else {}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    c.data["env"] = info
    tag = "cpu" if not info.get("cuda_available") else re.sub(r"[^a-z0-9]+", "_", info.get("device", "gpu").lower()).strip("_")
    c.set_out(tag)
    if not m:
        c.amend(part, "failed", "could not read torch's environment: " + last_line(part["output"]))
        return False
    if not c.dry and not info.get("cuda_available"):
        c.amend(part, "failed", "no CUDA device visible; on a machine without a GPU use --dry-run"
                + (f" (torch: {info['torch_error']})" if info.get("torch_error") else ""))
        return False
    return True


def part_build(c, always):
    """Builds the extension (printing its time) unless it is built already and `always` is False."""
    info = c.data["env"]
    built = info.get("alif_cuda_built") and (c.dry or info.get("cuda_kernels"))
    if built and (not always or c.args.no_build):
        return c.skip("build", "alif_cuda is built already" + ("" if c.dry else " with CUDA kernels"))
    if c.args.no_build:
        return c.record("build", "failed", "alif_cuda is not built" + ("" if c.dry or not info.get("alif_cuda_built")
                                                                        else " with CUDA kernels") + " and --no-build was given")
    part = c.run("build", c.fmt(COMMANDS[c.mode]["build"]), env=BUILD_ENV[c.mode])
    part["build_s"] = part["elapsed_s"]
    if part["status"] == "passed":
        print(f"    built alif_cuda in {part['elapsed_s']:.0f} s", flush=True)
        check = subprocess.run([PY, "-c", ENV_SNIPPET], cwd=ROOT, capture_output=True, text=True)
        m = re.search(r"^ENV (.*)$", check.stdout, re.M)
        after = json.loads(m.group(1)) if m else {}
        info.update({k: after.get(k) for k in ("alif_cuda_built", "cuda_kernels", "alif_cuda_error")})
        if not after.get("alif_cuda_built") or (not c.dry and not after.get("cuda_kernels")):
            c.amend(part, "failed", "the build finished but alif_cuda " + (
                "has no CUDA kernels" if after.get("alif_cuda_built") else f"does not import: {after.get('alif_cuda_error')}"))
    return part


# ---------------------------------------------------------------------------------------------
# verify
def stage_verify(c):
    if not part_env(c):
        return
    cmds = c.mode
    if not (ROOT / "wheels").is_dir():
        c.skip("wheels", "no wheels/ folder (SpikingJelly is used where installed)")
    else:
        c.run("wheels", c.fmt(COMMANDS[cmds]["wheels"]))
    build = part_build(c, always=not c.dry)
    if build["status"] == "failed":
        return

    kernel_json = c.work / "kernel_report.json"
    kr = c.run("kernel_report", c.fmt(COMMANDS[cmds]["kernel_report"], kernel_md=c.out / "kernel_report.md",
                                      kernel_json=kernel_json))
    if kr["status"] == "failed" and c.dry and re.search(r"cuobjdump not found|holds no CUDA machine code", kr["output"]):
        c.amend(kr, "skipped", "no cuobjdump or no CUDA code in this build: " + last_line(kr["output"]))
    if kernel_json.is_file():
        c.data["kernel_report"] = json.loads(kernel_json.read_text())["findings"]

    junit = c.work / "tests.xml"
    argv = c.fmt(COMMANDS[cmds]["tests"], junit=junit)
    if "-n" in argv and importlib.util.find_spec("xdist") is None:
        i = argv.index("-n")  # pytest-xdist is missing: one process rather than a failed part
        print(f"    pytest-xdist is not installed: running the tests without -n {argv[i + 1]}", flush=True)
        del argv[i:i + 2]
    tests = c.run("tests", argv, env=TEST_ENV if not c.dry else None)
    res = parse_junit(junit)
    c.data["tests"] = res
    if res is not None:
        c.junit_suites = [junit]
        c.amend(tests, tests["status"], (tests["note"] + "; " if tests["note"] else "") + (
            f"{res['passed']} passed, {res['failures']} failed, {res['errors']} errors, {res['skipped']} skipped "
            f"({res['gpu_skips']} for want of a GPU)"))
        if tests["status"] == "passed" and res["tests"] == 0:
            c.amend(tests, "failed", "no test selected")
        if not c.dry and res["gpu_skips"]:
            c.amend(tests, "failed", tests["note"] + ": a CUDA case skipped on the GPU machine")
    elif tests["status"] != "skipped":
        c.amend(tests, "failed" if tests["status"] == "passed" else tests["status"],
                (tests["note"] + "; " if tests["note"] else "") + "no junit file written")

    sanitizer = find_sanitizer()
    for tool in ("memcheck", "racecheck"):
        if c.dry:
            c.skip(tool, "dry run: no compute-sanitizer on the CPU")
            continue
        if sanitizer is None:
            c.record(tool, "failed", "compute-sanitizer not found on the PATH or in $CUDA_HOME/bin")
            continue
        part = c.run(tool, c.fmt(COMMANDS[cmds][tool], junit=c.work / f"{tool}.xml", sanitizer=sanitizer),
                     env=SANITIZER_ENV)
        found = parse_sanitizer(part["output"])
        c.data[tool] = found
        count = found["errors"] if tool == "memcheck" else found["hazards"]
        if count is None and tool == "racecheck":
            count = found["errors"]
        part["note"] = (part["note"] + "; " if part["note"] else "") + (
            f"{count} {'errors' if tool == 'memcheck' else 'hazards'} reported" if count is not None else "no sanitizer summary")
        if part["status"] == "passed" and count:
            c.amend(part, "failed", part["note"])

    run_benchmarks(c, ("bench_alif_fp32", "bench_alif_bf16", "bench_taid", "bench_train"))
    verify_targets(c)


def run_benchmarks(c, names):
    """Each benchmark script as a part; its results are the last table it prints."""
    for name in names:
        if name not in COMMANDS[c.mode]:
            c.skip(name, "not part of the dry run (the CPU kernels run float32 only)")
            continue
        part = c.run(name, c.fmt(COMMANDS[c.mode][name]))
        rows = parse_last_table(part["output"])
        c.data[name] = dict(copy_gbps=parse_copy_gbps(part["output"]), rows=rows,
                            table=last_table_text(part["output"]))
        if part["status"] == "passed" and not rows:
            c.amend(part, "failed", "finished but printed no results table")


# ---------------------------------------------------------------------------------------------
# sweep
def stage_sweep(c):
    if not part_env(c):
        return
    if part_build(c, always=False)["status"] == "failed":
        return
    run_benchmarks(c, ("sweep_alif_fp32", "sweep_alif_bf16", "sweep_train", "sweep_fsvae"))
    sweep_targets(c)


def sweep_targets(c):
    h = HEADLINE[c.mode]
    rows = c.data.get("sweep_alif_fp32", {}).get("rows", [])
    fb = "forward+backward"
    ours = [r for r in rows if r.get("provider") == "alif_cuda" and r.get("mode") == fb]
    for T in sorted({r["T"] for r in ours}, key=int):
        at_T = [r for r in ours if r["T"] == T]
        widest = max(at_T, key=lambda r: int(r["N"].split("^")[-1]))
        pct = number(widest.get("of copy"))
        target(c, f"alif_bw_T{T}", f"alif fp32 forward+backward T={T} N={widest['N']}: share of copy bandwidth", pct,
               ">= 90%", pct >= 90 if pct is not None else None, "sweep_alif_fp32")
    small = find_row(rows, provider="alif_cuda", T=h["T"], N=h["small_N"], mode=fb)
    ms = number(small.get("ms")) if small else None
    target(c, "alif_small_N_ms", f"alif fp32 forward+backward T={h['T']} N={h['small_N']}: one call (median time)", ms,
           "<= 0.10 ms", ms <= 0.10 if ms is not None else None, "sweep_alif_fp32")
    bf16 = c.data.get("sweep_alif_bf16", {}).get("rows", [])
    if bf16:
        r = ratio(number((find_row(bf16, provider="spikingjelly", T=h["T"], N=h["N"], mode=fb) or {}).get("ms")),
                  number((find_row(bf16, provider="alif_cuda", T=h["T"], N=h["N"], mode=fb) or {}).get("ms")))
        target(c, "alif_bf16_vs_sj", f"alif bf16 forward+backward T={h['T']} N={h['N']} against SpikingJelly", r and round(r, 2),
               ">= 1.8x", r >= 1.8 if r is not None else None, "sweep_alif_bf16")
    train = c.data.get("sweep_train", {}).get("rows", [])
    for net, batch, precision, need in (("cifar10", h["batch"], "fp32", 1.8), ("mnist", h["big_batch"], "fp32", 2.0),
                                        ("mnist", h["big_batch"], "bf16", 2.5)):
        ours = find_row(train, net=net, batch=batch, precision=precision, provider="alif_cuda")
        sj = find_row(train, net=net, batch=batch, precision=precision, provider="spikingjelly")
        r = ratio(number(ours.get("images/s")) if ours else None, number(sj.get("images/s")) if sj else None)
        target(c, f"train_{net}_{batch}_{precision}_vs_sj", f"Table 8 {net} training step B={batch} {precision}: images/s "
               "against SpikingJelly", r and round(r, 2), f">= {need}x", r >= need if r is not None else None, "sweep_train")
    fsvae = c.data.get("sweep_fsvae", {}).get("rows", [])
    r = ratio(number((find_row(fsvae, FSVAE="reference") or {}).get("ms/step")),
              number((find_row(fsvae, FSVAE="alif_cuda") or {}).get("ms/step")))
    target(c, "fsvae_vs_reference", "FSVAE+TAID training step against the same model on the reference ops", r and round(r, 2),
           ">= 3x", r >= 3 if r is not None else None, "sweep_fsvae")


def last_table_text(text):
    lines, block = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            block.append(line)
        elif block:
            lines, block = block, []
    return "\n".join(block or lines)


def find_row(rows, **want):
    """The first row whose cells equal `want` (a key naming a column prefix matches that column)."""
    for row in rows:
        ok = True
        for key, value in want.items():
            col = key if key in row else next((k for k in row if k.startswith(key)), None)
            if col is None or row[col] != value:
                ok = False
                break
        if ok:
            return row
    return None


def target(c, ident, text, value, wanted, met, source):
    c.targets.append(dict(id=ident, target=text, value=value, wanted=wanted, met=met, source=source))


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def verify_targets(c):
    """The targets of the standing GPU issue, read off what the parts measured."""
    h = HEADLINE[c.mode]
    tests = c.data.get("tests")
    if tests is not None:
        ok = tests["tests"] > 0 and tests["failures"] == 0 and tests["errors"] == 0 and (c.dry or tests["gpu_skips"] == 0)
        target(c, "cuda_tests", "every CUDA test case passes, none skipped for want of a GPU",
               f"{tests['passed']} passed, {tests['failures'] + tests['errors']} failed, {tests['gpu_skips']} GPU skips",
               "all pass", ok, "tests")
    for tool, key in (("memcheck", "errors"), ("racecheck", "hazards")):
        found = c.data.get(tool)
        if found:
            n = found[key] if found[key] is not None else found.get("errors")
            target(c, tool, f"compute-sanitizer {tool} reports nothing", n, 0, n == 0 if n is not None else None, tool)
    kr = c.data.get("kernel_report")
    if kr:
        target(c, "no_local_in_loops", "no local-memory (spill) instructions inside kernel loops",
               len(kr["local_memory_in_loops"]), 0, not kr["local_memory_in_loops"], "kernel_report")

    def alif(dtype_part, provider, mode, col):
        rows = c.data.get(f"bench_alif_{dtype_part}", {}).get("rows", [])
        row = find_row(rows, provider=provider, T=h["T"], N=h["N"], mode=mode)
        return number(row.get(col)) if row else None

    fb = "forward+backward"
    for dt, dtype_name in (("fp32", "float32"), ("bf16", "bfloat16")):
        if f"bench_alif_{dt}" not in c.data:
            continue
        ours = alif(dt, "alif_cuda", fb, "ms")
        sj = alif(dt, "spikingjelly", fb, "ms")
        if dt == "fp32":
            pct = alif(dt, "alif_cuda", fb, "of copy")
            target(c, "alif_fp32_bw", f"alif fp32 forward+backward T={h['T']} N={h['N']}: share of copy bandwidth", pct,
                   ">= 92%", pct >= 92 if pct is not None else None, "bench_alif_fp32")
            static = alif(dt, "alif_cuda", "static " + fb, "of copy")
            target(c, "alif_static_bw", f"alif static-input forward+backward T={h['T']} N={h['N']}: share of copy", static,
                   ">= 85%", static >= 85 if static is not None else None, "bench_alif_fp32")
            mem_ours, mem_sj = alif(dt, "alif_cuda", fb, "peak MB"), alif(dt, "spikingjelly", fb, "peak MB")
            r = ratio(mem_ours, mem_sj)
            target(c, "alif_memory", "alif fp32 extra peak memory against SpikingJelly's", r and round(r, 2), "<= 0.5x",
                   r <= 0.5 if r is not None else None, "bench_alif_fp32")
        speed = ratio(sj, ours)
        need = 1.4 if dt == "fp32" else 1.8
        target(c, f"alif_{dt}_vs_sj", f"alif {dtype_name} forward+backward speed against SpikingJelly 2.0.0",
               speed and round(speed, 2), f">= {need}x", speed >= need if speed is not None else None, f"bench_alif_{dt}")

    taid_rows = c.data.get("bench_taid", {}).get("rows", [])
    if "bench_taid" in c.data:
        row = find_row(taid_rows, plane=h["plane"], mode="forward", provider="alif_cuda")
        pct = number(row.get("of copy")) if row else None
        target(c, "taid_fwd_bw", f"taid forward {h['plane']} fp32: share of copy bandwidth", pct, ">= 80%",
               pct >= 80 if pct is not None else None, "bench_taid")
        ours = find_row(taid_rows, plane=h["plane"], mode="forward+backward", provider="alif_cuda")
        comp = find_row(taid_rows, plane=h["plane"], mode="forward+backward", provider="reference+compile")
        r = ratio(number(comp.get("ms")) if comp else None, number(ours.get("ms")) if ours else None)
        target(c, "taid_fb_vs_compile", f"taid forward+backward {h['plane']} against taid_ref under torch.compile",
               r and round(r, 2), ">= 3x", r >= 3 if r is not None else None, "bench_taid")

    train_rows = c.data.get("bench_train", {}).get("rows", [])
    if "bench_train" in c.data:
        for precision, need in (("fp32", 2.0), ("bf16", 2.5)):
            ours = find_row(train_rows, net="mnist", batch=h["batch"], precision=precision, provider="alif_cuda")
            sj = find_row(train_rows, net="mnist", batch=h["batch"], precision=precision, provider="spikingjelly")
            r = ratio(number(ours.get("images/s")) if ours else None, number(sj.get("images/s")) if sj else None)
            target(c, f"train_{precision}_vs_sj", f"Table 8 MNIST training step B={h['batch']} {precision}: images/s against SpikingJelly",
                   r and round(r, 2), f">= {need}x", r >= need if r is not None else None, "bench_train")
        ours = find_row(train_rows, net="mnist", batch=h["batch"], precision="fp32", provider="alif_cuda")
        sj = find_row(train_rows, net="mnist", batch=h["batch"], precision="fp32", provider="spikingjelly")
        r = ratio(number(ours.get("peak MB")) if ours else None, number(sj.get("peak MB")) if sj else None)
        target(c, "train_memory", f"Table 8 MNIST training step B={h['batch']} fp32: peak memory against SpikingJelly",
               r and round(r, 2), "<= 0.6x", r <= 0.6 if r is not None else None, "bench_train")


# ---------------------------------------------------------------------------------------------
# train
def option(argv, flag, default=None):
    """The last value of `flag` in argv (argparse's rule), else default."""
    value = default
    for i, a in enumerate(argv[:-1]):
        if a == flag:
            value = argv[i + 1]
    return value


def stage_train(c):
    if not part_env(c):
        return
    if part_build(c, always=False)["status"] == "failed":
        return
    table = COMMANDS[c.mode]
    run_dir = c.work / "train_run"
    base = c.fmt(table["train"], run_dir=run_dir)
    n_train = int(option(base, "--subset", 60000))
    n_test = min(int(option(base, "--test-subset", 10000)), 10000)

    if c.args.train_epochs:
        epochs = c.args.train_epochs
        c.skip("train_probe", f"--train-epochs {epochs} given")
    else:
        probe_dir = c.work / "train_probe"
        probe_argv = [a.replace("{epochs}", str(PROBE_EPOCHS))
                      for a in c.fmt(table["train"], run_dir=probe_dir)] + table["train_probe"]
        probe = c.run("train_probe", probe_argv)
        records = read_jsonl(probe_dir / "metrics.jsonl")
        if probe["status"] != "passed" or len(records) < PROBE_EPOCHS:
            c.amend(probe, "failed" if probe["status"] == "passed" else probe["status"],
                    probe["note"] or f"the probe wrote {len(records)} of {PROBE_EPOCHS} epochs' metrics")
            return
        # The last epoch's figures: the first one also pays for warm-up (cuDNN autotuning, caches).
        first, last = records[-2], records[-1]
        p_train, p_test = int(option(probe_argv, "--subset")), int(option(probe_argv, "--test-subset"))
        ips = last["images_per_s"]
        epoch_wall = last["wall_time_s"] - first["wall_time_s"]
        eval_s_per_image = max(0.0, epoch_wall - p_train / ips) / p_test
        startup_s = max(0.0, probe["elapsed_s"] - last["wall_time_s"])
        epoch_s = n_train / ips + n_test * eval_s_per_image
        train_cap = c.allowance("train")
        epochs = min(MAX_EPOCHS[c.mode], max(0, math.floor((train_cap - startup_s) / (epoch_s * 1.1))))
        c.data["probe"] = dict(images_per_s=ips, eval_s_per_image=round(eval_s_per_image, 6), startup_s=round(startup_s, 1),
                               epoch_s_estimate=round(epoch_s, 2), seconds_for_training=round(train_cap, 1), epochs=epochs)
        probe["note"] = (f"{ips:.0f} train images/s; an epoch ~{epoch_s:.1f} s + {startup_s:.0f} s start-up: "
                         f"{epochs} epochs fit in {train_cap:.0f} s")
        if epochs < 1:
            c.record("train", "skipped", f"not even one epoch fits in {train_cap:.0f} s", out_of_time=True)
            return
    argv = [a.replace("{epochs}", str(epochs)) for a in base]
    train = c.run("train", argv)
    records = read_jsonl(run_dir / "metrics.jsonl")
    done = records[-1]["epoch"] if records else 0
    c.data["train"] = dict(command=train.get("command"), epochs_planned=epochs, epochs_done=done)
    if train["status"] == "timeout":
        train["note"] += f"; {done} of {epochs} epochs done"
        if done and not (run_dir / "summary.json").exists():
            # --resume at the epochs reached only writes summary.json and curves.png.
            finish = [a.replace("{epochs}", str(done)) for a in base] + ["--resume"]
            c.run("train_finish", finish)
    else:
        c.skip("train_finish", "the run finished by itself" if train["status"] == "passed" else "the run failed")
    for src, dst in (("metrics.jsonl", "metrics.jsonl"), ("summary.json", "train_summary.json"), ("curves.png", "curves.png")):
        if (run_dir / src).is_file():
            shutil.copyfile(run_dir / src, c.out / dst)
    train_targets(c, records, epochs)


def train_targets(c, records, epochs):
    final = records[-1] if records else {}
    acc = final.get("test_acc")
    target(c, "mnist_final_acc", "Table 8 MNIST final-epoch test accuracy", acc, ">= 99.60%",
           acc >= 99.60 if acc is not None else None, "train")
    done = final.get("epoch", 0)
    target(c, "train_to_final_epoch", "the run reaches its final epoch inside the budget", f"{done} of {epochs} epochs",
           "all", done == epochs and epochs > 0, "train")
    wall = final.get("wall_time_s")
    target(c, "train_minutes", "training time (train stage on the GPU)", wall, "<= 540 s",
           wall <= 540 if wall is not None else None, "train")
    if final:
        best = max(r.get("test_acc", 0) for r in records)
        c.data["train"].update(final_test_acc=acc, best_test_acc=best, images_per_s=final.get("images_per_s"),
                               peak_gpu_mb=final.get("peak_gpu_mb"), wall_time_s=wall)


# ---------------------------------------------------------------------------------------------
# Files.
def fmt_value(v):
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_markdown(c, results):
    env = results["env"]
    met = {True: "met", False: "NOT met", None: "not measured"}
    lines = [
        f"# gpu_check {c.stage}{' (dry run)' if c.dry else ''}: {results['status'].upper()}"
        + (" (partial: out of time)" if results["partial"] else ""),
        "",
        f"- device: {env.get('device', 'unknown')}" + (f" ({env['nvidia_smi']})" if env.get("nvidia_smi") else ""),
        f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), Python {env.get('python')}; alif_cuda git {results['git']}",
        f"- command: `{results['command']}`; budget {c.budget:.0f} s, used {results['elapsed_s']:.0f} s; "
        f"started {results['started_utc']}",
        "",
        "## Targets",
        "| target | measured | wanted | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t['target']} | {fmt_value(t['value'])} | {t['wanted']} | {met[t['met']]} |" for t in c.targets]
    if c.dry:
        lines += ["", "Dry run: tiny CPU sizes; the targets' values say the plumbing works, not how fast anything is."]
    lines += ["", "## Parts", "| part | status | s | note |", "|---|---|---|---|"]
    lines += [f"| {p['name']} | {p['status']} | {p['elapsed_s']:.0f} | {p['note'].replace('|', '/')} |" for p in c.parts]
    tests = c.data.get("tests")
    if tests and tests["failed"]:
        lines += ["", "## Failed tests"] + [f"- `{f}`" for f in tests["failed"]]
    for name in ("bench_alif_fp32", "bench_alif_bf16", "bench_taid", "bench_train", "sweep_alif_fp32", "sweep_alif_bf16",
                 "sweep_train", "sweep_fsvae"):
        d = c.data.get(name)
        if d and d.get("table"):
            lines += ["", f"## {name} (copy bandwidth {fmt_value(d['copy_gbps'])} GB/s in the same run)", d["table"]]
    if "probe" in c.data:
        lines += ["", "## Train probe", json.dumps(c.data["probe"])]
    if "train" in c.data:
        t = c.data["train"]
        lines += ["", "## Training run", f"- command: `{t.get('command')}`",
                  f"- epochs {t.get('epochs_done')} of {t.get('epochs_planned')}; final test accuracy "
                  f"{fmt_value(t.get('final_test_acc'))}%, best {fmt_value(t.get('best_test_acc'))}%; "
                  f"{fmt_value(t.get('images_per_s'))} images/s; training {fmt_value(t.get('wall_time_s'))} s"]
    commands = [f"- {p['name']}: `{p['command']}`" for p in c.parts if p.get("command")]
    lines += ["", "## Commands"] + commands
    return "\n".join(lines) + "\n"


def write_junit(c, path):
    """One testsuite with a case per part, then pytest's own suites (verify)."""
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name=f"gpu_check.{c.stage}", tests=str(len(c.parts)),
                          failures=str(sum(p["status"] == "failed" for p in c.parts)),
                          errors=str(sum(p["status"] == "timeout" for p in c.parts)),
                          skipped=str(sum(p["status"] == "skipped" for p in c.parts)))
    for p in c.parts:
        case = ET.SubElement(suite, "testcase", classname=f"gpu_check.{c.stage}", name=p["name"], time=str(p["elapsed_s"]))
        if p["status"] == "failed":
            ET.SubElement(case, "failure", message=p["note"])
        elif p["status"] == "timeout":
            ET.SubElement(case, "error", type="timeout", message=p["note"])
        elif p["status"] == "skipped":
            ET.SubElement(case, "skipped", message=p["note"])
    for extra in c.junit_suites:
        try:
            other = ET.parse(extra).getroot()
        except (ET.ParseError, FileNotFoundError):
            continue
        for s in ([other] if other.tag == "testsuite" else list(other)):
            root.append(s)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def write_log(chunks, path):
    with open(path, "w") as f:
        for name, argv, rc, elapsed, output in chunks:
            if len(output) > LOG_PART_LIMIT:
                half = LOG_PART_LIMIT // 2
                output = output[:half] + f"\n[... {len(output) - LOG_PART_LIMIT} characters left out ...]\n" + output[-half:]
            f.write(f"===== {name}: exit {rc} after {elapsed:.1f} s\n$ {argv}\n")
            f.write(output + ("" if output.endswith("\n") else "\n"))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("verify", "train", "sweep"))
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU at tiny sizes with a short budget")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds for the whole stage (default {DEFAULT_BUDGET_S}; dry run {DRY_BUDGET_S})")
    parser.add_argument("--out", default=None, help="output folder when $OUT is not set (default results/gpu/<device>-<date>/)")
    parser.add_argument("--train-epochs", type=int, default=None, help="train: this many epochs instead of as many as fit")
    parser.add_argument("--no-build", action="store_true",
                        help="fail instead of building when alif_cuda is not built yet (tests: never rebuild a shared checkout)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.train_epochs is not None and args.train_epochs < 1:
        parser.error(f"--train-epochs must be >= 1, got {args.train_epochs}")
    c = Check(args.stage, args)
    print(f"gpu_check {args.stage}{' (dry run)' if c.dry else ''}: budget {c.budget:.0f} s", flush=True)
    try:
        {"verify": stage_verify, "train": stage_train, "sweep": stage_sweep}[args.stage](c)
    except KeyboardInterrupt:
        c.record("interrupted", "failed", "gpu_check itself was interrupted")
    env_failed = c.parts and c.parts[0]["name"] == "env" and c.parts[0]["status"] == "failed"
    code = c.finish()
    return 2 if env_failed else code


if __name__ == "__main__":
    sys.exit(main())
