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
silent generator), a warning is printed and recorded under "warnings".
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

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


def load_fad_ae(path: str, device) -> FadAutoencoder:
    ckpt = tr.load_checkpoint(path, what="train_fad_ae checkpoint", keys=("model_config", "model"))
    ae = FadAutoencoder(FadConfig(**ckpt["model_config"])).to(device)
    try:
        ae.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"--fad-ae {path} does not fit this FAD autoencoder (trained by an older version?): "
                         f"{str(e).splitlines()[0]}") from None
    return ae


def constant_warning(samples: torch.Tensor) -> Optional[str]:
    if not metrics.constant_samples(samples):
        return None
    return (f"warning: all {len(samples)} generated samples are the same image (largest per-pixel std across "
            f"samples {samples.float().flatten(1).std(0).max().item():.2g}): the generator is silent or collapsed, "
            f"and FAD/IS/FID rank nothing useful")


def main(argv: Optional[List[str]] = None) -> Dict:
    p = argparse.ArgumentParser(prog="python -m models.evaluate_vae", description=__doc__, formatter_class=tr.HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train_vae run's checkpoint.pt")
    p.add_argument("--data-dir", default=None, help=f"default: {DEFAULT_DATA_DIR}")
    p.add_argument("--fad-ae", default=None, help="checkpoint of models.train_fad_ae for this dataset")
    p.add_argument("--fad-bn", choices=FEATURE_BN, default="batch",
                   help="FAD autoencoder BatchNorm: batch statistics per 256 images (FSVAE) or running (eval mode)")
    p.add_argument("--inception-weights", default=None, help="torchvision inception_v3 ImageNet state dict (local file)")
    p.add_argument("--num-samples", type=int, default=5000, help="generated images for FAD / IS / FID")
    p.add_argument("--test-subset", type=int, default=None, help="use the first N test images")
    p.add_argument("--batch-size", type=int, default=250, help="batch size of sampling and evaluation")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--out", default=None, help="also write the metrics here (JSON)")
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or DEFAULT_DATA_DIR
    if args.num_samples < 2 or args.batch_size < 1:
        p.error("--num-samples must be >= 2 and --batch-size >= 1")
    for name in ("checkpoint", "fad_ae", "inception_weights"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            p.error(f"--{name.replace('_', '-')} {path} does not exist")
    try:
        if args.out:
            tr.check_output_file(args.out)
        tr.check_device_and_amp(args.device, "none")
        device = tr.pick_device(args.device, tr.Dist())
        model, ckpt = load_vae(args.checkpoint, device)
        ae = load_fad_ae(args.fad_ae, device) if args.fad_ae is not None else None
        dataset = ckpt["recipe"]["dataset"]
        check_image_data_dir(dataset, args.data_dir, download=False)
        net = metrics.load_inception(args.inception_weights, device)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    torch.manual_seed(args.seed)
    test = image_dataset(dataset, args.data_dir, train=False)
    if args.test_subset is not None:
        test = torch.utils.data.Subset(test, range(min(args.test_subset, len(test))))
    loader = DataLoader(test, batch_size=args.batch_size)
    test_images = lambda: (images for images, _ in loader)  # noqa: E731

    result: Dict = {"checkpoint": args.checkpoint, "dataset": dataset, "epoch": ckpt["epoch"],
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
            result["fid"] = metrics.frechet_distance(*metrics.gaussian_fit(gen_pool.cpu()), *metrics.gaussian_fit(ref_pool.cpu()))
        else:
            result.update(is_mean=None, is_std=None, fid=None)
            reason = "no --inception-weights given (nothing can be downloaded here)"
            result["not_computed"].update({"is": reason, "fid": reason})
    result["device"] = tr.device_description(device)
    print(json.dumps(result, indent=1))
    if args.out:
        tr.write_json_atomic(result, Path(args.out))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
