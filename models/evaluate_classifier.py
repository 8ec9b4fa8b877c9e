"""Evaluate a trained classifier checkpoint on its dataset's test set.

    python -m models.evaluate_classifier --checkpoint RUN_DIR/checkpoint.pt --data-dir DIR [--out report.json]

Prints and (with --out) writes JSON: test accuracy and loss, per-class accuracy, and the firing
rate of each ALIF layer (spikes per neuron per time step, averaged over the test set).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from . import training as tr
from .classifiers import ClassifierConfig, SpikingClassifier
from .data import check_data_dir, classification_dataset
from .train_classifier import evaluate


def firing_rates(model: SpikingClassifier):
    """Installs hooks that add up each ALIF layer's spikes; returns (totals, remove)."""
    totals: Dict[str, List] = {}
    handles = []
    for name, module in model.neurons().items():
        totals[name] = [0.0, 0]

        def hook(m, inputs, out, name=name):
            totals[name][0] = totals[name][0] + out.detach().float().sum()  # stays on the device: no sync per batch
            totals[name][1] += out.numel()

        handles.append(module.register_forward_hook(hook))
    return totals, lambda: [h.remove() for h in handles]


def main(argv: Optional[List[str]] = None) -> Dict:
    p = argparse.ArgumentParser(prog="python -m models.evaluate_classifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=tuple(tr.AMP_DTYPES), default="none")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", default=None, help="also write the report here (JSON)")
    args = p.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        p.error(f"--checkpoint {args.checkpoint} does not exist")
    if args.batch_size < 1 or args.workers < 0:
        p.error("--batch-size must be >= 1 and --workers >= 0")
    try:
        tr.check_device_and_amp(args.device, args.amp)
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        if "model_config" not in ckpt:
            raise ValueError(f"{args.checkpoint} is not a train_classifier checkpoint (no model_config)")
        dataset = ckpt["recipe"]["dataset"]
        check_data_dir(dataset, args.data_dir, download=False)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    device = tr.pick_device(args.device, tr.Dist())
    model = SpikingClassifier(ClassifierConfig.from_dict(ckpt["model_config"])).to(device)
    model.load_state_dict(ckpt["model"])
    test_set = classification_dataset(dataset, args.data_dir, train=False)
    loader = DataLoader(test_set, batch_size=args.batch_size, num_workers=args.workers,
                        pin_memory=device.type == "cuda")
    totals, remove = firing_rates(model)
    loss, acc, per_class = evaluate(model, loader, device, args.amp)
    remove()
    report = dict(
        checkpoint=str(args.checkpoint), dataset=dataset, epoch=ckpt["epoch"], test_images=len(test_set),
        test_loss=loss, test_acc=acc, per_class_acc=per_class,
        firing_rate={name: float(s) / max(n, 1) for name, (s, n) in totals.items()},
        device=tr.device_description(device),
    )
    print(json.dumps(report, indent=1))
    if args.out:
        tr.write_json_atomic(report, Path(args.out))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
