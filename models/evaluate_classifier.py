"""Evaluate a trained classifier checkpoint on its dataset's test set.

    python -m models.evaluate_classifier --checkpoint RUN_DIR/checkpoint.pt --data-dir DIR [--out report.json]

Prints and (with --out) writes JSON: test accuracy and loss, per-class accuracy, and the firing
rate of each ALIF layer (spikes per neuron per time step, averaged over the test set); warns about
a layer that fires below 1% or above 99% (a silent or saturated network).
"""
import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional

from torch.utils.data import DataLoader, Subset

from . import training as tr
from .classifiers import ClassifierConfig, SpikingClassifier
from .data import DEFAULT_DATA_DIR, check_data_dir, classification_dataset
from .train_classifier import HelpFormatter, evaluate
from .training import FiringMonitor, FiringRateWarning, firing_warnings


def load_classifier(ckpt: Dict, path) -> SpikingClassifier:
    """The network of a train_classifier checkpoint; ValueError when it does not fit this version's."""
    try:
        model = SpikingClassifier(ClassifierConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"--checkpoint {path} does not fit this version's classifier (written by an older one?): "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return model


def main(argv: Optional[List[str]] = None) -> Dict:
    p = argparse.ArgumentParser(prog="python -m models.evaluate_classifier", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train_classifier checkpoint.pt")
    p.add_argument("--data-dir", default=None,
                   help="datasets in torchvision's layout (see models/data.py) (default: this checkout's data/)")
    p.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu or cuda")
    p.add_argument("--amp", choices=tuple(tr.AMP_DTYPES), default="none", help="autocast precision, GPU only")
    p.add_argument("--batch-size", type=int, default=256, help="test images per batch")
    p.add_argument("--workers", type=int, default=4, help="data loader worker processes (at most the CPUs available)")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images (default: all)")
    p.add_argument("--progress", choices=("bar", "none"), default="bar", help="a progress bar over the test batches")
    p.add_argument("--out", default=None, help="also write the report here (JSON) (default: print only)")
    args = p.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        p.error(f"--checkpoint {args.checkpoint} does not exist")
    if args.batch_size < 1 or args.workers < 0:
        p.error(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    if args.test_subset is not None and args.test_subset < 1:
        p.error(f"--test-subset must be >= 1, got {args.test_subset}")
    args.data_dir = args.data_dir or DEFAULT_DATA_DIR
    args.workers = min(args.workers, tr.cpu_count())
    try:
        tr.check_device_and_amp(args.device, args.amp)
        if args.out:
            tr.check_output_file(args.out)
        ckpt = tr.load_checkpoint(args.checkpoint, what="train_classifier checkpoint",
                                  keys=("model_config", "model", "recipe", "epoch"))
        tr.require_kind(ckpt, args.checkpoint, "--checkpoint", "train_classifier")
        dataset = ckpt["recipe"]["dataset"]
        check_data_dir(dataset, args.data_dir, download=False)
        device = tr.pick_device(args.device, tr.Dist())
        model = load_classifier(ckpt, args.checkpoint).to(device)
        test_set = classification_dataset(dataset, args.data_dir, train=False)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    if args.test_subset is not None:
        test_set = Subset(test_set, range(min(args.test_subset, len(test_set))))
    loader = DataLoader(test_set, batch_size=args.batch_size, num_workers=args.workers,
                        pin_memory=device.type == "cuda")
    monitor = FiringMonitor(model.neurons())
    loss, acc, per_class = evaluate(model, loader, device, args.amp, progress=args.progress == "bar")
    monitor.remove()
    rates = monitor.rates("eval")
    for message in firing_warnings(rates):
        warnings.warn(f"{args.checkpoint} on the test set: {message}", FiringRateWarning, stacklevel=1)
    report = dict(
        checkpoint=str(args.checkpoint), dataset=dataset, epoch=ckpt["epoch"], test_images=len(test_set),
        test_loss=loss, test_acc=acc, per_class_acc=per_class, firing_rate=rates,
        device=tr.device_description(device),
    )
    print(json.dumps(report, indent=1))
    if args.out:
        try:
            tr.write_json_atomic(report, Path(args.out))
        except OSError as e:
            raise SystemExit(f"evaluate_classifier: {e}; the report is printed above") from None
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
