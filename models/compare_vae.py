"""The paper's Tables 1-4 side by side at one budget: FSVAE+TAID, FSVAE+membrane and the ANN VAE
trained on one dataset, all measured with one FAD autoencoder.

    python -m models.compare_vae --dataset mnist [--data-dir DIR] --out results/vae_mnist \\
        [--budget fsvae|paper] [--epochs N] [--fad-epochs 150] [--batch-size N] [--num-samples 5000] [--subset N] ...

Runs go to OUT/<name>/ and are resumable (a finished run is skipped, an interrupted one resumes).
Writes OUT/comparison.md (reconstruction MSE, FAD as FSVAE computes it, IS / FID where Inception
weights are given, the paper's values beside), OUT/<name>_samples.png (one titled grid per model) and
OUT/samples_side_by_side.png (the three grids in one figure). A
model whose samples are all one image is flagged in the table and warned about: its metrics
rank nothing. A run below the budget is labelled a smoke run.
"""
import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import torch

from . import evaluate_vae, sample_vae, train_fad_ae, train_vae
from .data import DEFAULT_DATA_DIR
from .fad import FEATURE_BN
from .training import CHECKPOINT, HelpFormatter

SIDE_BY_SIDE = "samples_side_by_side.png"
LABELS = {"fsvae_taid": "FSVAE + TAID", "fsvae_membrane": "FSVAE + membrane", "ann_vae": "ANN VAE"}
MODELS = [("fsvae_taid", ["--model", "fsvae", "--decoder", "taid"]),
          ("fsvae_membrane", ["--model", "fsvae", "--decoder", "membrane"]),
          ("ann_vae", ["--model", "ann"])]
# The paper's (IS, FID, FAD): Tables 1-4.
PAPER = {
    "mnist": {"ann_vae": (5.95, 112.5, 17.09), "fsvae_membrane": (6.21, 97.06, 35.54), "fsvae_taid": (6.31, 98.2, 20.14)},
    "fashion": {"ann_vae": (4.25, 123.7, 18.08), "fsvae_membrane": (4.55, 90.12, 15.75), "fsvae_taid": (4.56, 93.24, 13.15)},
    "cifar10": {"ann_vae": (2.59, 229.6, 196.9), "fsvae_membrane": (2.94, 175.5, 133.9), "fsvae_taid": (3.53, 171.1, 120.5)},
    "celeba": {"ann_vae": (3.23, 92.53, 156.9), "fsvae_membrane": (3.69, 101.6, 112.9), "fsvae_taid": (4.31, 99.54, 105.3)},
}


def run_or_resume(main, run_dir: Path, args: List[str]) -> None:
    if (run_dir / "summary.json").is_file():
        return
    main(args + (["--resume"] if (run_dir / CHECKPOINT).is_file() else []))


def fmt(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}g}"


def main(argv: Optional[List[str]] = None) -> str:
    p = argparse.ArgumentParser(prog="python -m models.compare_vae", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=train_vae.DATASETS, required=True, help="which dataset (read from --data-dir)")
    p.add_argument("--data-dir", default=None, help=f"default: {DEFAULT_DATA_DIR}")
    p.add_argument("--out", required=True, help="directory for the runs, comparison.md and the sample figures (resumable)")
    p.add_argument("--budget", choices=tuple(train_vae.BUDGETS), default="fsvae",
                   help="the VAEs' epochs and batch size: fsvae 150 x 250, paper 300 x 200")
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.add_argument("--fad-epochs", type=int, default=150, help="epochs of the FAD autoencoder")
    p.add_argument("--batch-size", type=int, default=None, help="override the budget's batch size")
    p.add_argument("--fad-bn", choices=FEATURE_BN, default="batch", help="FAD features with batch statistics (FSVAE's way) or the running ones")
    p.add_argument("--num-samples", type=int, default=5000, help="generated images per model for FAD / IS / FID")
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images (default: all)")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images (default: all)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--amp", default="none", help="mixed precision of the training runs: none, bf16 or fp16")
    p.add_argument("--workers", type=int, default=4, help="data-loader workers (capped by the CPU count)")
    p.add_argument("--inception-weights", default=None, help="a local torchvision Inception-v3 weights file for IS / FID (nothing is downloaded; without it they are null)")
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or DEFAULT_DATA_DIR
    budget_epochs, budget_batch = train_vae.BUDGETS[args.budget]
    args.epochs = budget_epochs if args.epochs is None else args.epochs
    args.batch_size = budget_batch if args.batch_size is None else args.batch_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--batch-size", str(args.batch_size),
              "--device", args.device, "--workers", str(args.workers), "--progress", "none"]
    for flag, value in (("--subset", args.subset), ("--test-subset", args.test_subset)):
        if value is not None:
            common += [flag, str(value)]
    run_or_resume(train_fad_ae.main, out / "fad_ae", common + ["--out", str(out / "fad_ae"), "--epochs", str(args.fad_epochs)])
    rows, flagged, panels = [], [], []
    for name, model_args in MODELS:
        run_dir = out / name
        run_or_resume(train_vae.main, run_dir, common + model_args + ["--out", str(run_dir), "--epochs", str(args.epochs),
                                                                       "--amp", args.amp, "--budget", args.budget])
        eval_args = ["--checkpoint", str(run_dir / CHECKPOINT), "--data-dir", args.data_dir, "--fad-ae",
                     str(out / "fad_ae" / CHECKPOINT), "--num-samples", str(args.num_samples), "--device", args.device,
                     "--batch-size", str(args.batch_size), "--fad-bn", args.fad_bn,
                     "--out", str(run_dir / "metrics_eval.json")]
        if args.test_subset is not None:
            eval_args += ["--test-subset", str(args.test_subset)]
        if args.inception_weights:
            eval_args += ["--inception-weights", args.inception_weights]
        m = evaluate_vae.main(eval_args)
        sample_dir = sample_vae.main(["--checkpoint", str(run_dir / CHECKPOINT), "--out", str(run_dir / "samples"),
                                      "--num-samples", "64", "--device", args.device])
        shutil.copyfile(sample_dir / "samples.png", out / f"{name}_samples.png")
        panels.append((f"{LABELS[name]}{' (CONSTANT)' if m['samples_constant'] else ''}",
                       torch.load(sample_dir / "samples.pt")))
        paper = PAPER[args.dataset][name]
        if m["samples_constant"]:
            flagged.append(name)
            print(f"warning: {name}'s samples are all the same image; its metrics rank nothing", file=sys.stderr)
        rows.append(f"| {name} | {'CONSTANT' if m['samples_constant'] else 'varied'} | {fmt(m['recon_mse'])} | "
                    f"{fmt(m['fad'])} | {fmt(m['is_mean'])} | {fmt(m['fid'])} | {paper[2]} | {paper[0]} | {paper[1]} |")
    cmd = "python -m models.compare_vae " + " ".join(argv if argv is not None else sys.argv[1:])
    smoke = args.subset is not None or args.epochs < budget_epochs or args.fad_epochs < 150
    table = "\n".join([
        f"{args.dataset}: FSVAE+TAID, FSVAE+membrane and the ANN VAE at one budget ({args.epochs} epochs at batch "
        f"{args.batch_size}; FAD autoencoder {args.fad_epochs} epochs; {args.num_samples} samples), produced by "
        f"`{cmd}` on {m['device']}.",
        *(["**A smoke run**: far below the paper's budget, it shows the pipeline works, not how the models "
           "compare."] if smoke else []),
        f"FAD as FSVAE computes it (autoencoder BatchNorm: {args.fad_bn} statistics). FAD values depend on the "
        "run's own autoencoder: compare within this table, not with the paper's column.",
        *([f"**Warning**: constant samples from {', '.join(flagged)}: those rows' metrics are meaningless."]
          if flagged else []),
        "",
        "| model | samples | recon MSE | FAD | IS | FID | paper FAD | paper IS | paper FID |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])
    (out / "comparison.md").write_text(table + "\n")
    sample_vae.save_grids(panels, out / SIDE_BY_SIDE, title=f"{args.dataset}: 64 samples per model after {args.epochs} "
                          f"epochs{' (smoke run)' if smoke else ''}")
    print(table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
