"""The paper's Tables 1-4 side by side at one budget: FSVAE+TAID, FSVAE+membrane and the ANN VAE
trained on one dataset, all measured with one FAD autoencoder.

    python -m models.compare_vae --dataset mnist [--data-dir DIR] --out results/vae_mnist \\
        [--budget fsvae|paper] [--epochs N] [--fad-epochs 150] [--batch-size N] [--num-samples 5000] [--subset N] ...

Runs go to OUT/<name>/, each trained with the trainer's --resume: a new run starts, an interrupted
one continues, a finished one is kept (a larger --epochs trains it further), and one trained with
other options is refused. Every option, and every existing run's recipe, is checked before
anything trains. Writes OUT/comparison.md (reconstruction MSE, FAD as FSVAE computes it, IS / FID
where Inception weights are given, the paper's values beside; the epochs, batch and training
images stated are read from the runs), OUT/<name>_samples.png (one titled grid per model) and
OUT/samples_side_by_side.png (the three grids in one figure). A model whose samples are all one
image is flagged in the table and warned about: its metrics rank nothing. A run below the budget
is labelled a smoke run.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import evaluate_vae, sample_vae, train_fad_ae, train_vae
from . import training as tr
from .data import DEFAULT_DATA_DIR, check_image_data_dir
from .fad import FEATURE_BN
from .metrics import IS_SPLITS
from .training import CHECKPOINT, SUMMARY, HelpFormatter

SIDE_BY_SIDE = "samples_side_by_side.png"
GRID_SAMPLES = 64
FAD_BUDGET = 150
LABELS = {"fsvae_taid": "FSVAE + TAID", "fsvae_membrane": "FSVAE + membrane", "ann_vae": "ANN VAE"}
MODELS = [("fsvae_taid", ["--model", "fsvae", "--decoder", "taid"]),
          ("fsvae_membrane", ["--model", "fsvae", "--decoder", "membrane"]),
          ("ann_vae", ["--model", "ann"])]
# The paper's (IS, FID, FAD): Tables 1-4.
PAPER = {
    "mnist": {"ann_vae": (5.95, 112.5, 17.09), "fsvae_membrane": (6.21, 97.06, 35.54),
              "fsvae_taid": (6.31, 98.2, 20.14)},
    "fashion": {"ann_vae": (4.25, 123.7, 18.08), "fsvae_membrane": (4.55, 90.12, 15.75),
                "fsvae_taid": (4.56, 93.24, 13.15)},
    "cifar10": {"ann_vae": (2.59, 229.6, 196.9), "fsvae_membrane": (2.94, 175.5, 133.9),
                "fsvae_taid": (3.53, 171.1, 120.5)},
    "celeba": {"ann_vae": (3.23, 92.53, 156.9), "fsvae_membrane": (3.69, 101.6, 112.9),
               "fsvae_taid": (4.31, 99.54, 105.3)},
}


def fmt(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}g}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.compare_vae", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=train_vae.DATASETS, required=True, help="which dataset (read from --data-dir)")
    p.add_argument("--data-dir", default=None, help=f"default: {DEFAULT_DATA_DIR}")
    p.add_argument("--out", required=True,
                   help="directory for the runs, comparison.md and the sample figures (resumable)")
    p.add_argument("--budget", choices=tuple(train_vae.BUDGETS), default="fsvae",
                   help="the VAEs' epochs and batch size: fsvae 150 x 250, paper 300 x 200")
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.add_argument("--fad-epochs", type=int, default=FAD_BUDGET, help="epochs of the FAD autoencoder")
    p.add_argument("--batch-size", type=int, default=None, help="override the budget's batch size")
    p.add_argument("--fad-bn", choices=FEATURE_BN, default="batch",
                   help="FAD features with batch statistics (FSVAE's way) or the running ones")
    p.add_argument("--num-samples", type=int, default=5000,
                   help="generated images per model for FAD / IS / FID (at least 2; 10 with --inception-weights)")
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images (default: all)")
    p.add_argument("--test-subset", type=int, default=None,
                   help="evaluate on the first N test images, N >= 2 (default: all)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--amp", choices=tuple(tr.AMP_DTYPES), default="none", help="mixed precision of the training runs")
    p.add_argument("--workers", type=int, default=4, help="data-loader workers (capped by the CPU count)")
    p.add_argument("--inception-weights", default=None,
                   help="a local torchvision Inception-v3 weights file for IS / FID (nothing is downloaded; without it "
                        "they are null)")
    return p


def check_options(args, p: argparse.ArgumentParser) -> None:
    """compare_vae's own options, each refused with a usage error naming it; nothing is read but
    the data's headers and nothing is created."""
    gaussian = "FAD fits a Gaussian (mean and covariance) to the features of the"
    least = {"epochs": (1, ""), "fad_epochs": (1, ""), "batch_size": (1, ""), "subset": (1, ""), "workers": (0, ""),
             "num_samples": ((IS_SPLITS, f" ({gaussian} samples, and the Inception Score averages over {IS_SPLITS} "
                                         f"splits of them)") if args.inception_weights is not None
                             else (2, f" ({gaussian} samples)")),
             "test_subset": (2, f" ({gaussian} test images, so two or more are needed)")}
    for name, (minimum, why) in least.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            p.error(f"--{name.replace('_', '-')} must be >= {minimum}{why}, got {value}")
    if args.inception_weights is not None and not Path(args.inception_weights).is_file():
        p.error(f"--inception-weights {args.inception_weights} does not exist (a local torchvision Inception-v3 "
                f"state dict is expected)")
    if not args.out.strip():
        p.error("--out must name a directory, got an empty string")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} exists and is not a directory")
    try:
        tr.check_device_and_amp(args.device, args.amp)
        check_image_data_dir(args.dataset, args.data_dir, download=False)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))


def checked(module, argv: List[str], p: argparse.ArgumentParser):
    """`module`'s own checks of `argv` (its parse_args), a failure reported as compare_vae's usage
    error naming the command it came from."""
    sub = module.build_parser()
    sub.error = lambda message: p.error(f"{message} (in the {sub.prog} command that compare_vae runs)")
    return module.parse_args(argv, sub)


def check_resumable(run_dir: Path, args, inherit, epochs_option: str, p: argparse.ArgumentParser) -> None:
    """What the trainer's --resume would refuse in `run_dir` (a directory that is not a run, a
    damaged checkpoint, other options, more epochs than asked), refused now, before anything
    trains; a new run directory passes. Reads, never writes."""
    try:
        if tr.plan_run_dir(run_dir, resume=True) != "resume":
            return
        ckpt = tr.load_checkpoint(run_dir / CHECKPOINT, what="training checkpoint", keys=("recipe", "epoch"))
    except (tr.RunDirError, tr.CheckpointError) as e:
        p.error(f"{e}; nothing was trained")
    diff = tr.recipe_differences(ckpt["recipe"], args, inherit)
    if diff:
        details = ", ".join(f"{k}: the run has {a!r}, this command {b!r}" for k, (a, b) in diff.items())
        p.error(f"{run_dir} was trained with other options ({details}), so this table would label it wrongly; repeat "
                f"the options it was trained with, or choose a new --out. Nothing was trained")
    if args.epochs < ckpt["epoch"]:
        p.error(f"{run_dir} has already trained {ckpt['epoch']} epochs, more than the {args.epochs} asked for; pass "
                f"{epochs_option} {ckpt['epoch']} or more, or choose a new --out. Nothing was trained")


def stated(values: Dict[str, object]) -> str:
    """One value when every run has it, else each run's."""
    distinct = set(values.values())
    return str(next(iter(distinct))) if len(distinct) == 1 else ", ".join(f"{k} {v}" for k, v in values.items())


def main(argv: Optional[List[str]] = None) -> str:
    p = build_parser()
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or DEFAULT_DATA_DIR
    check_options(args, p)
    args.workers = min(args.workers, tr.cpu_count())
    budget_epochs, budget_batch = train_vae.BUDGETS[args.budget]
    args.epochs = budget_epochs if args.epochs is None else args.epochs
    args.batch_size = budget_batch if args.batch_size is None else args.batch_size
    out = Path(args.out)
    common = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--batch-size", str(args.batch_size),
              "--device", args.device, "--workers", str(args.workers), "--progress", "none", "--resume"]
    for flag, value in (("--subset", args.subset), ("--test-subset", args.test_subset)):
        if value is not None:
            common += [flag, str(value)]
    fad_dir = out / "fad_ae"
    fad_argv = common + ["--out", str(fad_dir), "--epochs", str(args.fad_epochs)]
    runs = [(name, out / name, common + model_args + ["--out", str(out / name), "--epochs", str(args.epochs),
                                                      "--amp", args.amp, "--budget", args.budget])
            for name, model_args in MODELS]

    def eval_argv(run_dir: Path) -> List[str]:
        extra = [] if args.test_subset is None else ["--test-subset", str(args.test_subset)]
        extra += [] if args.inception_weights is None else ["--inception-weights", args.inception_weights]
        return ["--checkpoint", str(run_dir / CHECKPOINT), "--data-dir", args.data_dir, "--fad-ae",
                str(fad_dir / CHECKPOINT), "--num-samples", str(args.num_samples), "--device", args.device,
                "--batch-size", str(args.batch_size), "--fad-bn", args.fad_bn,
                "--out", str(run_dir / "metrics_eval.json"), *extra]

    def sample_argv(run_dir: Path) -> List[str]:
        return ["--checkpoint", str(run_dir / CHECKPOINT), "--out", str(run_dir / "samples"),
                "--num-samples", str(GRID_SAMPLES), "--device", args.device]

    # Every command's options and every existing run, checked before the first one trains.
    check_resumable(fad_dir, checked(train_fad_ae, fad_argv, p), (), "--fad-epochs", p)
    for _, run_dir, run_argv in runs:
        check_resumable(run_dir, checked(train_vae, run_argv, p), train_vae.INHERIT, "--epochs", p)
        checked(evaluate_vae, eval_argv(run_dir), p)
        checked(sample_vae, sample_argv(run_dir), p)

    out.mkdir(parents=True, exist_ok=True)
    train_fad_ae.main(fad_argv)
    results, summaries, panels = {}, {}, []
    for name, run_dir, run_argv in runs:
        train_vae.main(run_argv)
        summaries[name] = json.loads((run_dir / SUMMARY).read_text())
        results[name] = m = evaluate_vae.main(eval_argv(run_dir))
        sample_dir = sample_vae.main(sample_argv(run_dir))
        panels.append((f"{LABELS[name]}{' (CONSTANT)' if m['samples_constant'] else ''}",
                       torch.load(sample_dir / "samples.pt")))
    # What the runs hold (the checkpoints' epochs, the recipes' batch and subset), not this command's arguments.
    epochs = {name: m["epoch"] for name, m in results.items()}
    batch = {name: s["recipe"]["batch_size"] for name, s in summaries.items()}
    subset = {name: s["recipe"].get("subset") for name, s in summaries.items()}
    first = next(iter(results.values()))
    fad_epochs = first["fad_ae_epoch"]
    smoke = (any(v is not None for v in subset.values()) or min(epochs.values()) < budget_epochs
             or fad_epochs < FAD_BUDGET)
    flagged = [name for name, m in results.items() if m["samples_constant"]]
    for name in flagged:
        print(f"warning: {name}'s samples are all the same image; its metrics rank nothing", file=sys.stderr)
    rows = []
    for name, m in results.items():
        paper = PAPER[args.dataset][name]
        rows.append(f"| {name} | {'CONSTANT' if m['samples_constant'] else 'varied'} | {fmt(m['recon_mse'])} | "
                    f"{fmt(m['fad'])} | {fmt(m['is_mean'])} | {fmt(m['fid'])} | {paper[2]} | {paper[0]} | {paper[1]} |")
    train_images = stated({name: n or "all" for name, n in subset.items()})
    cmd = "python -m models.compare_vae " + " ".join(argv if argv is not None else sys.argv[1:])
    table = "\n".join([
        f"{args.dataset}: FSVAE+TAID, FSVAE+membrane and the ANN VAE at one budget ({stated(epochs)} epochs at batch "
        f"{stated(batch)} on {train_images} training images; FAD autoencoder {fad_epochs} epochs; "
        f"{args.num_samples} samples against {first['test_images']} test images), produced by `{cmd}` "
        f"on {first['device']}.",
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
    try:
        for name, run_dir, _ in runs:
            tr.write_bytes_atomic((run_dir / "samples" / "samples.png").read_bytes(), out / f"{name}_samples.png")
        tr.write_bytes_atomic((table + "\n").encode(), out / "comparison.md")
        sample_vae.save_grids(panels, out / SIDE_BY_SIDE, title=f"{args.dataset}: {GRID_SAMPLES} samples per model "
                              f"after {stated(epochs)} epochs{' (smoke run)' if smoke else ''}")
    except OSError as e:
        raise SystemExit(f"compare_vae: {e}; the runs are complete: the same command, run again once there is "
                         f"space, evaluates them and writes the comparison") from None
    print(table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
