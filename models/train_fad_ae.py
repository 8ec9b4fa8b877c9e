"""Train the per-dataset autoencoder that FAD (Frechet Autoencoder Distance) measures with.

    python -m models.train_fad_ae --dataset {mnist,fashion,cifar10,celeba} --data-dir DIR --out RUN_DIR

Defaults: AdamW lr 1e-3, weight decay 0.01, 150 epochs, batch 250, MSE on [-1, 1] images. Same
run-directory conventions as the other recipes; models.evaluate_vae reads RUN_DIR/checkpoint.pt.
"""
import argparse
import math
import sys
from typing import List, Optional

import torch
import torch.nn.functional as F

from . import training as tr
from .data import check_image_data_dir, image_dataset
from .fad import FadAutoencoder, fad_config
from .train_vae import DATASETS


@torch.no_grad()
def evaluate(model, loader, device):
    model.eval()
    total, n = 0.0, 0
    for images, _ in loader:
        images = images.to(device)
        total += F.mse_loss(model(images), images, reduction="sum").item() / images[0].numel()
        n += images.shape[0]
    return {"test_loss": total / max(n, 1)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.train_fad_ae", description=__doc__,
                                formatter_class=tr.HelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, required=True,
                   help="which dataset the FAD autoencoder learns (read from --data-dir)")
    tr.add_run_args(p, epochs=150, batch_size=250, lr=1e-3, seed=0)
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's weight decay")
    return p


def parse_args(argv: Optional[List[str]] = None, parser: Optional[argparse.ArgumentParser] = None):
    """The options, the device and the data checked (a usage error through `parser` otherwise)
    before anything is created."""
    p = parser or build_parser()
    args = p.parse_args(argv)
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        p.error(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    tr.validate_run_args(args, p, lambda: check_image_data_dir(args.dataset, args.data_dir, args.download))
    return args


def main(argv: Optional[List[str]] = None):
    p = build_parser()
    args = parse_args(argv, p)
    d, device, ckpt = tr.prepare_run(args, p)
    cfg = fad_config(args.dataset)
    model = FadAutoencoder(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def train_step(net, batch, epoch):
        images = batch[0]
        with tr.autocast(device, args.amp):
            loss = F.mse_loss(net(images).float(), images)
        return loss, {}, images.shape[0]

    job = tr.Job(
        model=model, optimizer=optimizer, scheduler=None,
        train_set=image_dataset(args.dataset, args.data_dir, train=True, download=args.download),
        test_set=image_dataset(args.dataset, args.data_dir, train=False, download=args.download),
        train_step=train_step, evaluate=lambda m, loader: evaluate(m, loader, device),
        model_config=cfg.to_dict(), best=("test_loss", "min"), curves=[("MSE", ["train_loss", "test_loss"])],
        title=f"training the FAD autoencoder on {args.dataset}",
    )
    return tr.fit(job, args, d, device, ckpt)


if __name__ == "__main__":
    main(sys.argv[1:])
