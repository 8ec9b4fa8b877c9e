"""Train the paper's generative models: FSVAE with TAID or membrane decoding, or the ANN VAE.

    python -m models.train_vae --model {fsvae,ann} --decoder {taid,membrane} \\
        --dataset {mnist,fashion,cifar10,celeba} --data-dir DIR --out RUN_DIR [options]
    torchrun --nproc_per_node=N -m models.train_vae ...          (DistributedDataParallel)

Defaults follow FSVAE's code: T=16, AdamW betas (0.9, 0.999), no schedule, MSE + MMD loss,
scheduled sampling of the prior (p 0.1 -> 0.3), and --budget fsvae: 150 epochs at batch 250
(--budget paper: the paper text's 300 epochs at batch 200; --epochs / --batch-size override
either). The learning rate is --lr scaled by (global batch) / 250 for the FSVAE, as FSVAE's code
scales it (--lr-scaling none: --lr as given; FSVAE's ANN code does not scale). Weight decay 1e-3
for the FSVAE, 1e-2 (AdamW's default, which FSVAE's ANN code keeps) for the ANN VAE; the ANN
VAE's KL weight is 1 / (batches per epoch), as in FSVAE's ANN code. The run directory gets the
same files as the classifier recipe's: metrics.jsonl (with per-layer firing rates for the
FSVAE), checkpoint.pt (atomic, exact --resume), summary.json (best epoch by test loss), curves.png.
"""
import argparse
import math
import os
import sys
from typing import Dict, List, Optional

import torch

from . import training as tr
from .data import check_image_data_dir, image_dataset
from .vae import DECODERS, LATENT_LOSSES, MODELS, VAEConfig, build_vae, dataset_channels, scheduled_probability

DATASETS = ("mnist", "fashion", "cifar10", "celeba")
# (epochs, batch size): FSVAE's configs, and the paper's text.
BUDGETS = {"fsvae": (150, 250), "paper": (300, 200)}
# Options that --resume takes from the run when left unset.
INHERIT = ("schedule_epochs",)


def drops_last(dataset: str) -> bool:
    """Whether the training loader drops each epoch's last incomplete batch, as FSVAE's loaders do."""
    return dataset in ("fashion", "cifar10")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.train_vae", description=__doc__,
                                formatter_class=tr.HelpFormatter)
    p.add_argument("--model", choices=MODELS, default="fsvae", help="fsvae: the fully spiking VAE; ann: its ANN twin")
    p.add_argument("--decoder", choices=DECODERS, default="taid",
                   help="FSVAE's image decoding (ignored by --model ann)")
    p.add_argument("--dataset", choices=DATASETS, required=True,
                   help="which dataset to train on (read from --data-dir)")
    tr.add_run_args(p, epochs=150, batch_size=250, lr=1e-3, seed=0)
    p.set_defaults(epochs=None, batch_size=None)
    budget_help = {"epochs": "from --budget (fsvae 150, paper 300)",
                   "batch_size": "per process; from --budget (fsvae 250, paper 200)"}
    for action in p._actions:
        action.help = budget_help.get(action.dest, action.help)
    p.add_argument("--budget", choices=tuple(BUDGETS), default="fsvae",
                   help="epochs and batch size: fsvae 150 x 250 (FSVAE's configs), paper 300 x 200 (the paper's text)")
    p.add_argument("--lr-scaling", choices=("fsvae", "batch", "none"), default="fsvae",
                   help="fsvae: lr * global batch / 250 for the FSVAE, unscaled for the ANN (FSVAE's code); "
                        "batch: scaled for both; none: --lr as given")
    p.add_argument("--weight-decay", type=float, default=None, help="default 1e-3 (FSVAE), 1e-2 (ANN VAE)")
    p.add_argument("--kld-weight", type=float, default=None,
                   help="the ANN VAE's KL weight (default 1 / batches per epoch, FSVAE's rule)")
    p.add_argument("--bn-stats", choices=("warm", "fsvae"), default="warm",
                   help="tdBN running statistics: warm (the first batches averaged in with weight 1/n) or "
                        "fsvae (momentum 0.1 from mean 0, var 1, which leaves an early eval-mode network silent)")
    p.add_argument("--T", type=int, default=16, help="time steps")
    p.add_argument("--latent-loss", choices=LATENT_LOSSES, default="mmd",
                   help="FSVAE's prior matching: MMD or Bernoulli KL")
    p.add_argument("--taid-reduce", choices=("sum", "mean"), default="sum",
                   help="TAID's reduction over time: sum (the official code) or mean (the paper's text)")
    p.add_argument("--learnable-neurons", action="store_true", help="learn tau and v_th (the paper's ALIF variant)")
    p.add_argument("--schedule-epochs", type=int, default=None,
                   help="epochs over which scheduled sampling rises 0.1 -> 0.3 (default: --epochs)")
    return p


def model_config(args) -> VAEConfig:
    channels, size = dataset_channels(args.dataset)
    return VAEConfig(model=args.model, in_channels=channels, image_size=size, T=args.T, decoder=args.decoder,
                     taid_reduce=args.taid_reduce, learnable_neurons=args.learnable_neurons,
                     latent_loss=args.latent_loss, bn_warm_start=args.bn_stats == "warm")


def resolve_budget(args) -> None:
    """Fills in what the defaults leave to the model and the budget: epochs, batch size, weight
    decay. Runs before validation, so the recipe records the values used."""
    epochs, batch = BUDGETS[args.budget]
    args.epochs = epochs if args.epochs is None else args.epochs
    args.batch_size = batch if args.batch_size is None else args.batch_size
    if args.weight_decay is None:
        args.weight_decay = 1e-2 if args.model == "ann" else 1e-3


def effective_lr(args, world: int) -> float:
    """--lr scaled by the global batch over 250 where --lr-scaling says so (FSVAE's code scales
    the FSVAE's learning rate, not the ANN's)."""
    scaled = args.lr_scaling == "batch" or (args.lr_scaling == "fsvae" and args.model == "fsvae")
    return args.lr * args.batch_size * world / 250 if scaled else args.lr


def batches_per_epoch(n_train: int, batch: int, world: int, drop_last: bool = False) -> int:
    """Each process's batches per epoch (DistributedSampler pads to a multiple of the world size)."""
    per_rank = math.ceil(n_train / world)
    return per_rank // batch if drop_last else math.ceil(per_rank / batch)


@torch.no_grad()
def evaluate(model, loader, device, amp: str) -> Dict[str, float]:
    """Test loss and its parts (reconstruction MSE, latent loss), averaged over images."""
    model.eval()
    sums: Dict[str, float] = {}
    n = 0
    for images, _ in loader:
        images = images.to(device, non_blocking=True)
        with tr.autocast(device, amp):
            out = model(images)
        loss, parts = model.loss(images, out)
        for key, value in {"loss": loss, **parts}.items():
            sums[key] = sums.get(key, 0.0) + value.item() * images.shape[0]
        n += images.shape[0]
    return {f"test_{k}": v / max(n, 1) for k, v in sums.items()}


def parse_args(argv: Optional[List[str]] = None, parser: Optional[argparse.ArgumentParser] = None):
    """The options (budget resolved), the device and the data checked (a usage error through
    `parser` otherwise) before anything is created."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    resolve_budget(args)
    if args.T < 1:
        parser.error(f"--T must be >= 1, got {args.T}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.kld_weight is not None and not (math.isfinite(args.kld_weight) and args.kld_weight >= 0):
        parser.error(f"--kld-weight must be >= 0, got {args.kld_weight}")
    if args.schedule_epochs is not None and args.schedule_epochs < 1:
        parser.error(f"--schedule-epochs must be >= 1, got {args.schedule_epochs}")
    if args.model == "ann":
        args.decoder = "taid"  # unused by the ANN; fixed so the recipe does not depend on it
    tr.validate_run_args(args, parser, lambda: check_image_data_dir(args.dataset, args.data_dir, args.download))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if (drops_last(args.dataset) and args.subset is not None
            and batches_per_epoch(args.subset, args.batch_size, world, drop_last=True) == 0):
        parser.error(f"--subset {args.subset} gives each of the {world} process(es) less than one batch (--batch-size "
                     f"{args.batch_size}), and {args.dataset}'s loader drops the last incomplete batch (as FSVAE's): "
                     f"no step would train")
    return args


def main(argv: Optional[List[str]] = None):
    parser = build_parser()
    args = parse_args(argv, parser)
    d, device, ckpt = tr.prepare_run(args, parser, inherit=INHERIT)
    if args.schedule_epochs is None:
        args.schedule_epochs = args.epochs
    train_set = image_dataset(args.dataset, args.data_dir, train=True, download=args.download)
    drop_last = drops_last(args.dataset)
    cfg = model_config(args)
    if args.kld_weight is not None:
        cfg.kld_weight = args.kld_weight
    elif cfg.model == "ann":
        n_train = len(train_set) if args.subset is None else args.subset
        cfg.kld_weight = 1.0 / max(batches_per_epoch(n_train, args.batch_size, d.world, drop_last), 1)
    model = build_vae(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=effective_lr(args, d.world), betas=(0.9, 0.999),
                                  weight_decay=args.weight_decay)

    def train_step(net, batch, epoch):
        images = batch[0]
        with tr.autocast(device, args.amp):
            out = net(images, scheduled_probability(epoch, args.schedule_epochs))
        loss, parts = model.loss(images, out)
        n = images.shape[0]
        return loss, {k: v.detach() * n for k, v in parts.items()}, n

    job = tr.Job(
        model=model, optimizer=optimizer, scheduler=None,
        train_set=train_set,
        test_set=image_dataset(args.dataset, args.data_dir, train=False, download=args.download),
        train_step=train_step, evaluate=lambda m, loader: evaluate(m, loader, device, args.amp),
        model_config=cfg.to_dict(), best=("test_loss", "min"),
        curves=[("loss", ["train_loss", "test_loss"]), ("reconstruction MSE", ["train_recon_loss", "test_recon_loss"]),
                ("latent loss", ["train_latent_loss", "test_latent_loss"])],
        warn_firing=True, drop_last=drop_last,
        title=f"training {args.model}{'+' + args.decoder if args.model == 'fsvae' else ''} on {args.dataset}",
    )
    return tr.fit(job, args, d, device, ckpt)


if __name__ == "__main__":
    main(sys.argv[1:])
