"""Train a Table 8 ALIF classifier (MNIST, FashionMNIST or CIFAR-10).

    python -m models.train_classifier --dataset mnist --data-dir DIR --out RUN_DIR [options]
    torchrun --nproc_per_node=N -m models.train_classifier ...      (DistributedDataParallel)

Defaults follow the paper (PLIF's recipe): T=8, Adam lr 1e-3, cosine annealing stepped per
epoch, batch 16, PLIF's augmentation, rate-MSE loss. The neurons default to the operating point of
the paper's classifier code (--neuron plif: PLIF's neuron, in our op's units tau 0.5, v_th 2, ATan
alpha 1); --neuron paper gives the paper's text (tau 0.25, v_th 0.2, rect width 1), which at lr
1e-3 silences the output layer within a few steps and stays at chance (see models/classifiers.py).
RUN_DIR receives metrics.jsonl (one line per epoch, with each ALIF layer's firing rate in training
and on the test set), checkpoint.pt (written atomically after every epoch; --resume continues from
it exactly), summary.json and curves.png. A layer firing below 1% or above 99% of its neuron-steps
over an epoch is reported as a warning. Under torchrun, --batch-size is per process; rank 0 logs
and writes.
"""
import argparse
import math
import sys
from typing import Dict, List, Optional

import torch

from . import training as tr
from .classifiers import NEURON_PRESETS, NeuronConfig, SpikingClassifier, rate_mse_loss, table8_config
from .data import check_data_dir, classification_dataset, classifier_transforms
from .training import FiringRateWarning  # noqa: F401 (the warning its runs give, re-exported)

DATASETS = ("mnist", "fashion", "cifar10")
# The neuron options a --neuron preset fills in when they are not given.
PRESET_OPTIONS = ("tau", "v_th", "surrogate", "width", "alpha")


class HelpFormatter(tr.HelpFormatter):
    """The module docstring as written, and every option's default after its help (options whose
    default is None say in their help what they fall back to)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def preset_help(key: str) -> str:
    return ", ".join(f"{name} {values[key]}" for name, values in NEURON_PRESETS.items())


def build_parser(prog: str = "python -m models.train_classifier", description: str = __doc__,
                 skip: tuple = ()) -> argparse.ArgumentParser:
    """train_classifier's options; `skip` leaves out options a caller sets itself (the ablation)."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, required=True, help="which Table 8 network and dataset")
    tr.add_run_args(p, epochs=64, batch_size=16, lr=1e-3, seed=2020)
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam's L2 weight decay")
    p.add_argument("--cosine-tmax", type=int, default=None,
                   help="CosineAnnealingLR T_max in epochs (default: --epochs; PLIF used 64)")
    p.add_argument("--T", type=int, default=8, help="time steps")
    p.add_argument("--no-augment", action="store_true",
                   help="train on the images as they are, without PLIF's augmentation (which regularises long "
                        "runs and slows the first epoch)")
    # The neurons (Table 7's ablation varies tau, v_th and --fixed-neurons).
    p.add_argument("--neuron", choices=tuple(NEURON_PRESETS), default="plif",
                   help="the neurons' operating point: plif = the paper's classifier code (PLIF's neuron, "
                        "learns at lr 1e-3); paper = the paper's text (tau 0.25, v_th 0.2, rect), which needs a "
                        "much smaller --lr; the options below override single values")
    if "tau" not in skip:
        p.add_argument("--tau", type=float, default=None,
                       help=f"initial decay, 0 < tau < 1 (default: the preset's: {preset_help('tau')})")
    if "v_th" not in skip:
        p.add_argument("--v-th", type=float, default=None,
                       help=f"initial threshold (default: the preset's: {preset_help('v_th')})")
    p.add_argument("--surrogate", choices=("rect", "atan"), default=None,
                   help=f"spike surrogate gradient (default: the preset's: {preset_help('surrogate')})")
    p.add_argument("--width", type=float, default=None,
                   help=f"rect surrogate's window width around v_th (default: the preset's: {preset_help('width')})")
    p.add_argument("--alpha", type=float, default=None,
                   help=f"atan surrogate's sharpness (default: the preset's: {preset_help('alpha')})")
    if "fixed_neurons" not in skip:
        p.add_argument("--fixed-neurons", action="store_true", help="tau and v_th are not learned")
    p.add_argument("--per-channel", action="store_true", help="one tau and v_th per channel instead of per layer")
    p.add_argument("--no-second-dropout", action="store_true",
                   help="drop the dropout before the last linear layer (PLIF's CIFAR-10 code)")
    return p


def resolve_neuron_options(args: argparse.Namespace) -> None:
    """Fills the neuron options not given on the command line from the --neuron preset (so the
    checkpoint's recipe records the values used)."""
    for key in PRESET_OPTIONS:
        if getattr(args, key, None) is None:
            setattr(args, key, NEURON_PRESETS[args.neuron][key])


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every argument checked before any data is read or anything is computed."""
    resolve_neuron_options(args)
    tr.validate_run_args(args, parser, lambda: check_data_dir(args.dataset, args.data_dir, args.download))
    if args.T < 1:
        parser.error(f"--T must be >= 1, got {args.T}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.cosine_tmax is not None and args.cosine_tmax < 1:
        parser.error(f"--cosine-tmax must be >= 1, got {args.cosine_tmax}")
    if not 0 < args.tau < 1:
        parser.error(f"--tau must be in (0, 1), got {args.tau}")
    if not math.isfinite(args.v_th):
        parser.error(f"--v-th must be finite, got {args.v_th}")
    for name in ("width", "alpha"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            parser.error(f"--{name} must be > 0, got {value}")


def model_config(args: argparse.Namespace):
    resolve_neuron_options(args)
    neuron = NeuronConfig(
        tau=args.tau, v_th=args.v_th, learnable=not args.fixed_neurons, per_channel=args.per_channel,
        surrogate=args.surrogate, width=args.width, alpha=args.alpha,
    )
    return table8_config(args.dataset, T=args.T, neuron=neuron, second_dropout=not args.no_second_dropout)


def neuron_values(model: SpikingClassifier) -> Dict[str, Dict[str, float]]:
    """The learned tau and v_th of each ALIF layer (mean, min and max when per channel)."""
    out = {}
    with torch.no_grad():
        for name, m in model.neurons().items():
            entry = {}
            for key, value in (("tau", m.tau), ("v_th", m.v_th)):
                value = value.float().cpu()
                if value.dim() == 0:
                    entry[key] = round(value.item(), 6)
                else:
                    entry.update({f"{key}_mean": round(value.mean().item(), 6),
                                  f"{key}_min": round(value.min().item(), 6),
                                  f"{key}_max": round(value.max().item(), 6)})
            out[name] = entry
    return out


@torch.no_grad()
def evaluate(model: SpikingClassifier, loader, device, amp: str, classes: int = 10, progress: bool = False):
    """Test loss, accuracy and per-class accuracy (%) over a loader (with a progress bar if asked)."""
    model.eval()
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="evaluating", unit="batch", dynamic_ncols=True)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros(classes, device=device, dtype=torch.long)
    count = torch.zeros(classes, device=device, dtype=torch.long)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with tr.autocast(device, amp):
            rates = model(images)
        loss_sum += rate_mse_loss(rates.float(), labels).double() * labels.numel()
        hit = rates.argmax(1) == labels
        correct += torch.bincount(labels[hit], minlength=classes)
        count += torch.bincount(labels, minlength=classes)
    n = count.sum().item()
    per_class = (100.0 * correct.double() / count.clamp(min=1).double()).tolist()
    return loss_sum.item() / max(n, 1), 100.0 * correct.sum().item() / max(n, 1), per_class


def main(argv: Optional[List[str]] = None) -> SpikingClassifier:
    """Runs the training; returns the trained model (unwrapped from DDP)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args, parser)
    d, device, ckpt = tr.prepare_run(args, parser, inherit=("cosine_tmax",))
    if args.cosine_tmax is None:
        args.cosine_tmax = args.epochs
    cfg = model_config(args)
    model = SpikingClassifier(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def train_step(net, batch, epoch):
        images, labels = batch
        with tr.autocast(device, args.amp):
            rates = net(images)
        loss = rate_mse_loss(rates.float(), labels)
        return loss, {"acc": 100.0 * (rates.detach().argmax(1) == labels).sum()}, labels.numel()

    def epoch_info(model):
        """Tau and v_th per layer (fit() records the firing rates and warns about silent or
        saturated layers)."""
        return {"neurons": neuron_values(model)}

    def evaluate_test(model, loader):
        loss, acc, _ = evaluate(model, loader, device, args.amp)
        return {"test_loss": loss, "test_acc": acc}

    job = tr.Job(
        model=model, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.cosine_tmax),
        train_set=classification_dataset(
            args.dataset, args.data_dir, train=True, download=args.download,
            transform=classifier_transforms(args.dataset, train=False) if args.no_augment else None),
        test_set=classification_dataset(args.dataset, args.data_dir, train=False, download=args.download),
        train_step=train_step, evaluate=evaluate_test, model_config=cfg.to_dict(), best=("test_acc", "max"),
        curves=[("loss", ["train_loss", "test_loss"]), ("accuracy (%)", ["train_acc", "test_acc"])],
        title=f"training {args.dataset} T={args.T}", epoch_info=epoch_info, warn_firing=True,
    )
    return tr.fit(job, args, d, device, ckpt)


if __name__ == "__main__":
    main(sys.argv[1:])
