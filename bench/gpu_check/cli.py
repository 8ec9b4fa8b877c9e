"""Verify and measure alif_cuda on a GPU inside a fixed time budget, in one command per stage.

    scripts/gpu_check.sh [--dry-run] [--budget-s S] [--out DIR] [--train-epochs E] [--no-build] STAGE

(the script runs `python -m bench.gpu_check`). Stages (run from the repository root):
  verify  (default budget 420 s) install the wheels in wheels/, build the extension, report its
          kernels (bench/kernel_report.py), run the test cases marked `cuda` (tests/conftest.py; a
          case that skips for want of a GPU fails), compute-sanitizer memcheck and racecheck over a
          focused selection, then the headline benchmarks (alif fp32/bf16 T=8 N=2^24, TAID T=16
          B=250, one Table 8 MNIST training step at B=128) against SpikingJelly 2.0.0 and the
          compiled reference.
  train   (default budget 540 s) the Table 8 MNIST recipe to its final epoch inside the budget:
          a two-epoch probe on a subset times an epoch, then the run with as many epochs as fit.
  sweep   (default budget 540 s) the wider benchmarks for a later session: alif at T in {4, 8, 16, 32}
          and N = 2^16..2^24 in fp32 (bf16 at 2^16, 2^20, 2^24), every mode (static input, inference,
          the small-N host-overhead regime), MNIST and CIFAR-10 training steps at B=128 and 512,
          and the FSVAE+TAID step against the reference ops. Its dry run works but is not in CI.

Every part runs as a subprocess through its script's command line (the command table in
bench/gpu_check/config.py is the one place to change a flag) under a deadline: a part that would
overrun is interrupted (SIGINT, then SIGTERM, then SIGKILL), recorded as a timeout, and the stage goes
on to the next part while time is left. Whatever ran is written, marked partial, to OUT/<stage>/
where OUT is $OUT when set, else --out, else results/gpu/<device>-<date>/: summary.md (each target's
threshold beside its measured value: pass, FAIL or not measured; the targets are one table in
bench/gpu_check/targets.py; device, torch version, commands), results.json, junit.xml, log.txt
(every part's output) and the stage's own files (kernel_report.md; metrics.jsonl,
train_summary.json, curves.png), at most 8 files per stage (what the GPU machine sends back).

--dry-run runs the same stages on the CPU at tiny sizes with a short budget, without
compute-sanitizer, building only if the extension is not built yet: CI proves the script, its
budget logic and its files. Exit status: 0 every part passed (or was skipped by design), 1 a part
failed, 3 out of time (partial results), 2 the stage could not run (no GPU, bad arguments).
"""
import argparse
import sys

from .check import Check
from .config import DEFAULT_BUDGET_S, DRY_BUDGET_S
from .stages import stage_sweep, stage_train, stage_verify

STAGES = {"verify": stage_verify, "train": stage_train, "sweep": stage_sweep}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=tuple(STAGES))
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU at tiny sizes with a short budget")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds for the whole stage (default {DEFAULT_BUDGET_S}; dry run {DRY_BUDGET_S})")
    parser.add_argument("--out", default=None,
                        help="output folder when $OUT is not set (default results/gpu/<device>-<date>/)")
    parser.add_argument("--train-epochs", type=int, default=None,
                        help="train: this many epochs instead of as many as fit")
    parser.add_argument("--no-build", action="store_true",
                        help="fail instead of building when alif_cuda is not built yet "
                             "(tests: never rebuild a shared checkout)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.train_epochs is not None and args.train_epochs < 1:
        parser.error(f"--train-epochs must be >= 1, got {args.train_epochs}")
    c = Check(args.stage, args)
    print(f"gpu_check {args.stage}{' (dry run)' if c.dry else ''}: budget {c.budget:.0f} s", flush=True)
    try:
        STAGES[args.stage](c)
    except KeyboardInterrupt:
        c.record("interrupted", "failed", "gpu_check itself was interrupted")
    env_failed = c.parts and c.parts[0]["name"] == "env" and c.parts[0]["status"] == "failed"
    code = c.finish()
    return 2 if env_failed else code
