"""The first epoch's learning curve of the Table 8 MNIST network: test accuracy on a fixed test
subset after given numbers of training steps, for our classifier or SpikingJelly's.

    python results/mnist_cpu_learning/learning_curve.py --provider alif_cuda [--neuron plif] \
        [--steps 375] [--eval-at 25 50 75 150 225 300 375] [--out curve.json]

The training is train_classifier's, step for step: its argument defaults (batch 16, Adam lr 1e-3,
seed 2020, PLIF's augmentation, the first --subset training images shuffled by the same sampler),
its model_config for alif_cuda, and the RNG seeded before the model is built, as
`python -m models.train_classifier --dataset mnist --subset 6000 --epochs 1` trains, with test
points in between. spikingjelly is the same architecture from SpikingJelly 2.0 layers (bench/bench_train.py)
with ParametricLIFNode at the same operating point. Also logs each layer's firing rate over the
steps since the previous point (training) and on the test subset.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_train import spikingjelly_net  # noqa: E402
from models import training as tr  # noqa: E402
from models import train_classifier  # noqa: E402
from models.classifiers import FiringMonitor, SpikingClassifier, rate_mse_loss  # noqa: E402
from models.data import classification_dataset, classifier_transforms  # noqa: E402


def spiking_layers(model, provider):
    if provider == "alif_cuda":
        return model.neurons()
    from spikingjelly.activation_based.neuron import ParametricLIFNode

    return {name: m for name, m in model.named_modules() if isinstance(m, ParametricLIFNode)}


@torch.no_grad()
def accuracy(model, loader):
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images).argmax(1) == labels).sum().item()
        total += labels.numel()
    model.train()
    return 100.0 * correct / total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=train_classifier.HelpFormatter)
    p.add_argument("--provider", choices=("alif_cuda", "spikingjelly"), default="alif_cuda", help="whose network")
    p.add_argument("--neuron", choices=("plif", "paper"), default="plif", help="the neurons' operating point")
    p.add_argument("--data-dir", default="data", help="holds MNIST/raw")
    p.add_argument("--no-augment", action="store_true", help="as train_classifier's: no augmentation")
    p.add_argument("--subset", type=int, default=6000, help="training images (the first N)")
    p.add_argument("--test-subset", type=int, default=2000, help="test images (the first N)")
    p.add_argument("--steps", type=int, default=375, help="training steps (batch 16; at most one epoch of --subset)")
    p.add_argument("--eval-at", type=int, nargs="+", default=[25, 50, 75, 150, 225, 300, 375],
                   help="steps after which the test subset is evaluated")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write the curve here (JSON)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe = train_classifier.build_parser().parse_args(
        ["--dataset", "mnist", "--data-dir", args.data_dir, "--out", "unused", "--neuron", args.neuron])
    if args.steps * recipe.batch_size > args.subset:
        p.error(f"--steps {args.steps} x batch {recipe.batch_size} exceeds one epoch of --subset {args.subset}")

    tr.seed_everything(recipe.seed)
    if args.provider == "alif_cuda":
        model = SpikingClassifier(train_classifier.model_config(recipe))
    else:
        model = spikingjelly_net("mnist", args.neuron)
        if model is None:
            p.error("--provider spikingjelly needs spikingjelly==2.0.0 installed")
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    plain = classifier_transforms("mnist", train=False) if args.no_augment else None
    train_set = torch.utils.data.Subset(classification_dataset("mnist", args.data_dir, train=True, transform=plain),
                                        range(args.subset))
    test_set = torch.utils.data.Subset(classification_dataset("mnist", args.data_dir, train=False),
                                       range(args.test_subset))
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=recipe.seed)
    sampler.set_epoch(0)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=recipe.batch_size, sampler=sampler)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=256, generator=torch.Generator())
    monitor = FiringMonitor(spiking_layers(model, args.provider))

    result = dict(provider=args.provider, neuron=args.neuron, augment=not args.no_augment, steps=args.steps,
                  batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed, subset=args.subset,
                  test_subset=args.test_subset, device=tr.device_description(torch.device("cpu")), points=[],
                  command="python results/mnist_cpu_learning/learning_curve.py " + " ".join(sys.argv[1:]))
    losses, started = [], time.perf_counter()
    model.train()
    for step, (images, labels) in enumerate(train_loader, 1):
        loss = rate_mse_loss(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step in args.eval_at:
            train_rates = monitor.rates("train")
            monitor.clear()
            acc = accuracy(model, test_loader)
            point = dict(step=step, test_acc=acc, train_loss_mean=sum(losses) / len(losses),
                         train_firing_rate={k: round(v, 4) for k, v in train_rates.items()},
                         test_firing_rate={k: round(v, 4) for k, v in monitor.rates("eval").items()},
                         wall_s=round(time.perf_counter() - started, 1))
            monitor.clear()
            losses = []
            result["points"].append(point)
            print(json.dumps(point), flush=True)
            if args.out:  # after every point, so a run cut short keeps its curve so far
                Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        if step == args.steps:
            break

if __name__ == "__main__":
    main()
