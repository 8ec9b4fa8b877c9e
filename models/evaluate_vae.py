"""Evaluate a trained VAE: reconstruction MSE, FAD, and (given local Inception weights) IS and FID.

    python -m models.evaluate_vae --checkpoint RUN_DIR/checkpoint.pt [--data-dir DIR] \\
        [--fad-ae FAD_RUN/checkpoint.pt] [--inception-weights inception_v3.pth] [--num-samples 5000] [--out m.json]

FAD, as FSVAE computes it: the Frechet distance between Gaussian fits of the FAD autoencoder's
latent over --num-samples generated images and over the test set, the autoencoder's BatchNorms
using each batch's own statistics, in batches of 256 (--fad-bn running: eval mode instead).
IS and FID use torchvision's Inception-v3 with ImageNet weights from --inception-weights
(nothing is downloaded): IS fed as FSVAE fed it ([0, 255], bilinear); FID from the 2048-d pool
features with clean-fid's input conventions (PIL-bicubic resize, [-1, 1] scaling), which is not
clean-fid's own TF Inception, so the values are not the paper's. A metric that cannot be
computed is reported as null with the reason. When every generated sample is the same image (a
silent generator), a warning is printed and recorded under "warnings". A checkpoint of another
trainer, a FAD autoencoder of another dataset, or fewer test images or samples than a metric
needs is a usage error saying so.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import metrics
from . import training as tr
from .data import DEFAULT_DATA_DIR, check_image_data_dir, image_dataset
from .fad import FEATURE_BATCH, FEATURE_BN, FadAutoencoder, FadConfig, fad_features
from .sample_vae import load_vae


def generated_batches(model, n: int, batch: int):
    for i in range(0, n, batch):
        yield model.sample(min(batch, n - i))


def load_fad_ae(path: str, device, dataset: Optional[str] = None) -> Tuple[FadAutoencoder, Dict]:
    """(the FAD autoencoder, its checkpoint dict) from a train_fad_ae checkpoint; ValueError for
    another kind of checkpoint or, given `dataset`, one trained on another dataset."""
    ckpt = tr.load_checkpoint(path, what="train_fad_ae checkpoint", keys=("model_config", "model"))
    tr.require_kind(ckpt, path, "--fad-ae", "train_fad_ae")
    recipe = ckpt.get("recipe")
    trained_on = recipe.get("dataset") if isinstance(recipe, dict) else None
    if dataset is not None and trained_on is not None and trained_on != dataset:
        raise ValueError(f"--fad-ae {path} is the FAD autoencoder of {trained_on}, but --checkpoint's VAE was trained "
                         f"on {dataset}: FAD compares within one dataset's autoencoder (train one with "
                         f"models.train_fad_ae --dataset {dataset})")
    try:
        ae = FadAutoencoder(FadConfig(**ckpt["model_config"])).to(device)
        ae.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"--fad-ae {path} does not fit this FAD autoencoder (trained by an older version?): "
                         f"{str(e).splitlines()[0]}") from None
    return ae, ckpt


def constant_warning(samples: torch.Tensor) -> Optional[str]:
    if not metrics.constant_samples(samples):
        return None
    return (f"warning: all {len(samples)} generated samples are the same image (largest per-pixel std across "
            f"samples {samples.float().flatten(1).std(0).max().item():.2g}): the generator is silent or collapsed, "
            f"and FAD/IS/FID rank nothing useful")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.evaluate_vae", description=__doc__,
                                formatter_class=tr.HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train_vae run's checkpoint.pt")
    p.add_argument("--data-dir", default=None, help=f"default: {DEFAULT_DATA_DIR}")
    p.add_argument("--fad-ae", default=None, help="checkpoint of models.train_fad_ae for this dataset")
    p.add_argument("--fad-bn", choices=FEATURE_BN, default="batch",
                   help="FAD autoencoder BatchNorm: batch statistics per 256 images (FSVAE) or running (eval mode)")
    p.add_argument("--inception-weights", default=None,
                   help="torchvision inception_v3 ImageNet state dict (local file)")
    p.add_argument("--num-samples", type=int, default=5000,
                   help="generated images for FAD / IS / FID (at least 2; 10 with --inception-weights)")
    p.add_argument("--test-subset", type=int, default=None,
                   help="use the first N test images (at least 2 with --fad-ae or --inception-weights)")
    p.add_argument("--batch-size", type=int, default=250, help="batch size of sampling and evaluation")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--out", default=None, help="also write the metrics here (JSON)")
    return p


def parse_args(argv: Optional[List[str]] = None, parser: Optional[argparse.ArgumentParser] = None):
    """The options, checked (a usage error through `parser` otherwise); of the files, only
    --inception-weights is looked at (the checkpoints and --out may not exist yet)."""
    p = parser or build_parser()
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or DEFAULT_DATA_DIR
    fitted = [opt for opt, given in (("--fad-ae", args.fad_ae), ("--inception-weights", args.inception_weights))
              if given]
    if args.num_samples < 2:
        p.error(f"--num-samples must be >= 2 (FAD and FID fit a Gaussian to the samples, and constant samples are "
                f"told by their spread), got {args.num_samples}")
    if args.inception_weights is not None and args.num_samples < metrics.IS_SPLITS:
        p.error(f"--num-samples must be >= {metrics.IS_SPLITS} with --inception-weights (the Inception Score "
                f"averages over {metrics.IS_SPLITS} splits of the samples), got {args.num_samples}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.test_subset is not None and args.test_subset < 1:
        p.error(f"--test-subset must be >= 1, got {args.test_subset}")
    if args.test_subset is not None and fitted and args.test_subset < 2:
        p.error(f"--test-subset must be >= 2 with {' and '.join(fitted)}: FAD and FID fit a Gaussian (mean and "
                f"covariance) to the test images' features, which needs two or more; got {args.test_subset}")
    if not 0 <= args.seed < tr.SEED_LIMIT:
        p.error(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.inception_weights is not None and not Path(args.inception_weights).is_file():
        p.error(f"--inception-weights {args.inception_weights} does not exist")
    try:
        tr.check_device_and_amp(args.device, "none")
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: Optional[List[str]] = None) -> Dict:
    p = build_parser()
    args = parse_args(argv, p)
    for name in ("checkpoint", "fad_ae"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            p.error(f"--{name.replace('_', '-')} {path} does not exist")
    try:
        if args.out:
            tr.check_output_file(args.out)
        device = tr.pick_device(args.device, tr.Dist())
        model, ckpt = load_vae(args.checkpoint, device)
        dataset = ckpt["recipe"]["dataset"]
        ae, ae_ckpt = load_fad_ae(args.fad_ae, device, dataset) if args.fad_ae is not None else (None, {})
        check_image_data_dir(dataset, args.data_dir, download=False)
        net = metrics.load_inception(args.inception_weights, device)
        test = image_dataset(dataset, args.data_dir, train=False)
        if args.test_subset is not None:
            test = torch.utils.data.Subset(test, range(min(args.test_subset, len(test))))
        if (ae is not None or net is not None) and len(test) < 2:
            raise ValueError(f"the {dataset} test set in {args.data_dir} holds {len(test)} image(s); FAD and FID "
                             f"fit a Gaussian to the test images' features, which needs two or more")
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    torch.manual_seed(args.seed)
    loader = DataLoader(test, batch_size=args.batch_size)
    test_images = lambda: (images for images, _ in loader)  # noqa: E731

    result: Dict = {"checkpoint": args.checkpoint, "dataset": dataset, "epoch": ckpt["epoch"],
                    "fad_ae": args.fad_ae, "fad_ae_epoch": ae_ckpt.get("epoch"),
                    "num_samples": args.num_samples, "test_images": len(test), "fad_bn": args.fad_bn,
                    "not_computed": {}, "warnings": []}
    with torch.no_grad():
        se, n = 0.0, 0
        for images in test_images():
            images = images.to(device)
            se += F.mse_loss(model.reconstruct(images), images, reduction="sum").item() / images[0].numel()
            n += images.shape[0]
        result["recon_mse"] = se / max(n, 1)

        samples = torch.cat(list(generated_batches(model, args.num_samples, args.batch_size))).cpu()
        warning = constant_warning(samples)
        result["samples_constant"] = warning is not None
        if warning:
            print(warning, file=sys.stderr, flush=True)
            result["warnings"].append(warning)
        if ae is not None:
            ref = metrics.gaussian_fit(fad_features(ae, test_images(), device, args.fad_bn))
            gen = metrics.gaussian_fit(fad_features(ae, samples.split(FEATURE_BATCH), device, args.fad_bn))
            result["fad"] = metrics.frechet_distance(*gen, *ref)
        else:
            result["fad"] = None
            result["not_computed"]["fad"] = "no --fad-ae checkpoint given (train one with models.train_fad_ae)"
        if net is not None:
            gen_probs, gen_pool = (torch.cat(t) for t in zip(*(metrics.inception_outputs(net, b.to(device))
                                                               for b in samples.split(args.batch_size))))
            ref_pool = torch.cat([metrics.inception_outputs(net, b.to(device))[1] for b in test_images()])
            result["is_mean"], result["is_std"] = metrics.inception_score(gen_probs.cpu())
            result["fid"] = metrics.frechet_distance(*metrics.gaussian_fit(gen_pool.cpu()),
                                                     *metrics.gaussian_fit(ref_pool.cpu()))
        else:
            result.update(is_mean=None, is_std=None, fid=None)
            reason = "no --inception-weights given (nothing can be downloaded here)"
            result["not_computed"].update({"is": reason, "fid": reason})
    result["device"] = tr.device_description(device)
    print(json.dumps(result, indent=1))
    if args.out:
        try:
            tr.write_json_atomic(result, Path(args.out))
        except OSError as e:
            raise SystemExit(f"evaluate_vae: {e}; the metrics are printed above") from None
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
