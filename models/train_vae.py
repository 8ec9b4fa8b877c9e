"""Train the paper's generative models: FSVAE with TAID or membrane decoding, or the ANN VAE.

    python -m models.train_vae --model {fsvae,ann} --decoder {taid,membrane} \
        --dataset {mnist,fashion,cifar10,celeba} --data-dir DIR --out RUN_DIR [options]
    torchrun --nproc_per_node=N -m models.train_vae ...          (DistributedDataParallel)

Defaults follow FSVAE: T=16, AdamW lr 1e-3, betas (0.9, 0.999), weight decay 1e-3, no schedule,
batch 250, 150 epochs, MSE + MMD loss, scheduled sampling of the prior (p 0.1 -> 0.3). The run
directory gets the same files as the classifier recipe's: metrics.jsonl, checkpoint.pt (atomic,
exact --resume), summary.json (best epoch by test loss) and curves.png.
"""
import argparse
import math
import sys
from typing import Dict, List, Optional

import torch

from . import training as tr
from .data import check_image_data_dir, image_dataset
from .vae import DECODERS, LATENT_LOSSES, MODELS, VAEConfig, build_vae, dataset_channels, scheduled_probability

DATASETS = ("mnist", "fashion", "cifar10", "celeba")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.train_vae", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="fsvae")
    p.add_argument("--decoder", choices=DECODERS, default="taid", help="FSVAE's image decoding (ignored by --model ann)")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    tr.add_run_args(p, epochs=150, batch_size=250, lr=1e-3, seed=0)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--T", type=int, default=16, help="time steps")
    p.add_argument("--latent-loss", choices=LATENT_LOSSES, default="mmd", help="FSVAE's prior matching: MMD or Bernoulli KL")
    p.add_argument("--taid-reduce", choices=("sum", "mean"), default="sum")
    p.add_argument("--learnable-neurons", action="store_true", help="learn tau and v_th (the paper's ALIF variant)")
    return p


def model_config(args) -> VAEConfig:
    channels, size = dataset_channels(args.dataset)
    return VAEConfig(model=args.model, in_channels=channels, image_size=size, T=args.T, decoder=args.decoder,
                     taid_reduce=args.taid_reduce, learnable_neurons=args.learnable_neurons,
                     latent_loss=args.latent_loss)


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


def main(argv: Optional[List[str]] = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    tr.validate_run_args(args, parser, lambda: check_image_data_dir(args.dataset, args.data_dir, args.download))
    if args.T < 1:
        parser.error(f"--T must be >= 1, got {args.T}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.model == "ann":
        args.decoder = "taid"  # unused by the ANN; fixed so the recipe does not depend on it
    d, device, ckpt = tr.prepare_run(args, parser)
    cfg = model_config(args)
    model = build_vae(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)

    def train_step(net, batch, epoch):
        images = batch[0]
        with tr.autocast(device, args.amp):
            out = net(images, scheduled_probability(epoch, args.epochs))
        loss, parts = model.loss(images, out)
        n = images.shape[0]
        return loss, {k: v.detach() * n for k, v in parts.items()}, n

    job = tr.Job(
        model=model, optimizer=optimizer, scheduler=None,
        train_set=image_dataset(args.dataset, args.data_dir, train=True, download=args.download),
        test_set=image_dataset(args.dataset, args.data_dir, train=False, download=args.download),
        train_step=train_step, evaluate=lambda m, loader: evaluate(m, loader, device, args.amp),
        model_config=cfg.to_dict(), best=("test_loss", "min"),
        curves=[("loss", ["train_loss", "test_loss"]), ("reconstruction MSE", ["train_recon_loss", "test_recon_loss"])],
        title=f"training {args.model}{'+' + args.decoder if args.model == 'fsvae' else ''} on {args.dataset}",
    )
    return tr.fit(job, args, d, device, ckpt)


if __name__ == "__main__":
    main(sys.argv[1:])
