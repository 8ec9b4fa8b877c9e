"""Sample images from a trained VAE checkpoint (FSVAE or ANN).

    python -m models.sample_vae --checkpoint RUN_DIR/checkpoint.pt --out DIR [--num-samples 64] [--data-dir DIR]

Writes DIR/samples.png (a titled grid), DIR/samples.pt (the images, (N, C, H, W) in [-1, 1]) and, with
--data-dir, DIR/reconstructions.png (test images above their reconstructions), each atomically (a
full disk leaves the file as it was). A checkpoint of another trainer, or a DIR that cannot hold
the files, is a usage error saying so.
"""
import argparse
import io
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torchvision.utils import make_grid

from . import metrics
from . import training as tr
from .data import image_dataset
from .vae import VAEConfig, build_vae


OUTPUTS = ("samples.png", "samples.pt", "reconstructions.png")
def load_vae(checkpoint: str, device):
    """(model in eval mode, its checkpoint dict) from a train_vae checkpoint; ValueError for
    another kind of checkpoint, saying which."""
    ckpt = tr.load_checkpoint(checkpoint, what="train_vae checkpoint",
                              keys=("model_config", "model", "recipe", "epoch"))
    tr.require_kind(ckpt, checkpoint, "--checkpoint", "train_vae")
    try:
        model = build_vae(VAEConfig(**ckpt["model_config"])).to(device)
        model.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"{checkpoint} does not fit this version's VAE (written by an older one?): "
                         f"{str(e).splitlines()[0]}") from None
    return model.eval(), ckpt


def image_grid(images: torch.Tensor, nrow: Optional[int] = None) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> one (H', W', 3) grid in [0, 1] for matplotlib."""
    grid = make_grid((images.float().clamp(-1, 1) + 1) / 2, nrow=nrow or int(math.ceil(math.sqrt(len(images)))),
                     padding=2, pad_value=1.0)
    return grid.permute(1, 2, 0).clamp(0, 1)


def save_grids(panels: List[Tuple[str, torch.Tensor]], path: Path, title: Optional[str] = None,
               nrow: Optional[int] = None) -> None:
    """One PNG with each (title, images) panel side by side, each panel titled, written
    atomically (training.write_bytes_atomic: on an error, DiskFullError or OSError, `path` is left
    as it was)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = [(name, image_grid(images, nrow)) for name, images in panels]
    width = sum(g.shape[1] / g.shape[0] for _, g in grids)
    fig, axes = plt.subplots(1, len(grids), figsize=(1.0 + 3.2 * width, 3.8 if title else 3.5), squeeze=False)
    for ax, (name, grid) in zip(axes[0], grids):
        ax.imshow(grid.numpy(), interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=150)
    plt.close(fig)
    tr.write_bytes_atomic(png.getbuffer(), Path(path))


def save_grid(images: torch.Tensor, path: Path, title: str, nrow: Optional[int] = None) -> None:
    save_grids([(title, images)], path, nrow=nrow)


def describe(ckpt: Dict) -> str:
    """e.g. 'FSVAE + TAID decoding, epoch 150' from a train_vae checkpoint."""
    cfg = ckpt["model_config"]
    name = "ANN VAE" if cfg.get("model") == "ann" else f"FSVAE + {cfg.get('decoder', '?')} decoding"
    return f"{name}, epoch {ckpt['epoch']}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.sample_vae", description=__doc__,
                                formatter_class=tr.HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train_vae run's checkpoint.pt")
    p.add_argument("--out", required=True, help="directory for samples.png, samples.pt (and reconstructions.png)")
    p.add_argument("--num-samples", type=int, default=64, help="how many images to sample")
    p.add_argument("--data-dir", default=None, help="also write reconstructions of the first test images")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    return p


def parse_args(argv: Optional[List[str]] = None, parser: Optional[argparse.ArgumentParser] = None):
    """The options, checked (a usage error through `parser` otherwise) without reading any file."""
    p = parser or build_parser()
    args = p.parse_args(argv)
    if args.num_samples < 1:
        p.error(f"--num-samples must be >= 1, got {args.num_samples}")
    if not 0 <= args.seed < tr.SEED_LIMIT:
        p.error(f"--seed must be in [0, 2**63), got {args.seed}")
    if not args.out.strip():
        p.error("--out must name a directory, got an empty string")
    try:
        tr.check_device_and_amp(args.device, "none")
    except ValueError as e:
        p.error(str(e))
    return args


def check_output_dir(out: Path) -> None:
    """Raises ValueError unless OUTPUTS can be written in `out`: it is a directory or can be made
    one, writable, and none of the files is a directory."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; give a directory for {', '.join(OUTPUTS)}")
    nearest = next((d for d in (out, *out.parents) if d.exists()), Path("."))
    if not nearest.is_dir():
        raise ValueError(f"--out {out}: {nearest} is not a directory, so {out} cannot be made")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} cannot be written ({nearest}: permission denied)")
    for name in OUTPUTS:
        if (out / name).is_dir():
            raise ValueError(f"--out {out}: {out / name} is a directory; sample_vae writes a file of that name there")


def main(argv: Optional[List[str]] = None) -> Path:
    p = build_parser()
    args = parse_args(argv, p)
    if not Path(args.checkpoint).is_file():
        p.error(f"--checkpoint {args.checkpoint} does not exist")
    out = Path(args.out)
    try:
        check_output_dir(out)
        device = tr.pick_device(args.device, tr.Dist())
        model, ckpt = load_vae(args.checkpoint, device)
        test = image_dataset(ckpt["recipe"]["dataset"], args.data_dir, train=False) if args.data_dir else None
        out.mkdir(parents=True, exist_ok=True)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    except OSError as e:
        p.error(f"--out {out} cannot be made: {e.strerror or e}")
    torch.manual_seed(args.seed)
    samples = torch.cat([model.sample(min(256, args.num_samples - i)).cpu() for i in range(0, args.num_samples, 256)])
    if metrics.constant_samples(samples):
        print(f"warning: all {len(samples)} samples are the same image: the generator is silent or collapsed",
              file=sys.stderr, flush=True)
    try:
        save_grid(samples, out / "samples.png", f"{describe(ckpt)}: {len(samples)} samples")
        tr.save_atomic(samples, out / "samples.pt")
        if test is not None:
            originals = torch.stack([test[i][0] for i in range(min(16, len(test)))])
            with torch.no_grad():
                recon = model.reconstruct(originals.to(device)).cpu()
            save_grid(torch.cat([originals, recon]), out / "reconstructions.png",
                      f"{describe(ckpt)}: test images (top) and their reconstructions (bottom)", nrow=len(originals))
    except OSError as e:
        raise SystemExit(f"sample_vae: {e}") from None
    print(f"wrote {out / 'samples.png'} and {out / 'samples.pt'} ({len(samples)} samples)")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
