"""What the first Adam steps do to the Table 8 MNIST network at each neuron preset: the loss, each
layer's firing rate, the output layer's drive (its input current) against its threshold, the share
of output neuron-steps inside the surrogate's window, and the gradient norm of each weight.

    python results/mnist_cpu_learning/probe_first_steps.py [--steps 6] [--out probe.json]

Batch 16, Adam lr 1e-3, seed 2020, the first training images without augmentation, both presets
from the same initial weights. The "window" is where the surrogate is at least 10% of its peak:
|h - v_th| < width / 2 for rect, |h - v_th| < 6 / (pi alpha) for atan.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models import train_classifier  # noqa: E402
from models.classifiers import NeuronConfig, SpikingClassifier, rate_mse_loss, table8_config  # noqa: E402
from models.data import classification_dataset, classifier_transforms  # noqa: E402


def window(neuron: NeuronConfig) -> float:
    return neuron.width / 2 if neuron.surrogate == "rect" else 6 / (math.pi * neuron.alpha)


def probe(preset: str, images, labels, steps: int, seed: int):
    torch.manual_seed(seed)
    neuron = NeuronConfig.preset(preset)
    model = SpikingClassifier(table8_config("mnist", neuron=neuron))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    out_layer = model.neurons()["classifier.6"]
    seen = {}
    out_layer.register_forward_pre_hook(lambda m, inputs: seen.__setitem__("drive", inputs[0].detach()))
    for name, m in model.neurons().items():
        m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.detach().mean().item()))
    rows = []
    for step in range(steps):
        batch = slice(16 * step, 16 * (step + 1))
        loss = rate_mse_loss(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        d = seen["drive"] - out_layer.v_th.detach()
        rows.append(dict(
            step=step, loss=round(loss.item(), 4),
            firing_rate={name: round(seen[name], 4) for name in model.neurons()},
            output_drive_minus_vth_mean=round(d.mean().item(), 3), output_drive_std=round(d.std().item(), 3),
            output_in_window=round((d.abs() < window(neuron)).float().mean().item(), 4),
            grad_norm={n: round(p.grad.norm().item(), 6) for n, p in model.named_parameters() if p.dim() > 1},
        ))
        optimizer.step()
    return dict(preset=preset, neuron=neuron.__dict__, window=window(neuron), steps=rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=train_classifier.HelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="Adam steps per preset")
    p.add_argument("--data-dir", default="data", help="holds MNIST/raw")
    p.add_argument("--seed", type=int, default=2020, help="seed of the initial weights and dropout")
    p.add_argument("--out", default=None, help="write the probe here (JSON)")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = classification_dataset("mnist", args.data_dir, train=True, transform=classifier_transforms("mnist", False))
    pairs = [data[i] for i in range(16 * args.steps)]
    images, labels = torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])
    result = [probe(preset, images, labels, args.steps, args.seed) for preset in ("paper", "plif")]
    for r in result:
        print(f"{r['preset']}: window |h - v_th| < {r['window']:.2f}")
        for s in r["steps"]:
            print(f"  step {s['step']}: loss {s['loss']:.4f}  rates {list(s['firing_rate'].values())}  "
                  f"output drive - v_th {s['output_drive_minus_vth_mean']:+.2f} +- {s['output_drive_std']:.2f}  "
                  f"in window {s['output_in_window']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            command="python results/mnist_cpu_learning/probe_first_steps.py " + " ".join(sys.argv[1:]),
            torch=torch.__version__, probes=result), indent=1) + "\n")


if __name__ == "__main__":
    main()
