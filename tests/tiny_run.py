"""A tiny training entry point on the shared driver (models/training/) for the run tests: a
784-16-10 network with one ALIF layer over T=2 steps, trained on the tiny MNIST files of
classifier_data.py in milliseconds per step. Runnable as a script (the SIGKILL test does).

    python tests/tiny_run.py --data-dir DIR --out RUN_DIR [shared options] [--hidden H]
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alif_cuda.nn import ALIF  # noqa: E402
from models import training as tr  # noqa: E402
from models.data import check_data_dir, classification_dataset  # noqa: E402

# Tests set this to a function of the global step count run before each step (to raise
# KeyboardInterrupt or poison a gradient at a chosen step).
STEP_HOOK: Optional[Callable] = None


class Tiny(nn.Module):
    def __init__(self, hidden: int, T: int = 2):
        super().__init__()
        self.T = T
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.neuron = ALIF(tau=0.5, v_th=0.2)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, images):
        current = self.fc1(images.flatten(1))
        spikes = self.neuron(current.unsqueeze(0).expand(self.T, *current.shape))
        return self.fc2(spikes).mean(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tests/tiny_run.py", description=__doc__, formatter_class=tr.HelpFormatter)
    tr.add_run_args(p, epochs=3, batch_size=8, lr=0.01, seed=0)
    p.add_argument("--hidden", type=int, default=16, help="hidden neurons (default: %(default)s)")
    return p


def main(argv: Optional[List[str]] = None) -> Tiny:
    parser = build_parser()
    args = parser.parse_args(argv)
    tr.validate_run_args(args, parser, lambda: check_data_dir("mnist", args.data_dir, args.download))
    d, device, ckpt = tr.prepare_run(args, parser)
    model = Tiny(args.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = [0]

    def train_step(net, batch, epoch):
        if STEP_HOOK is not None:
            STEP_HOOK(steps[0], net)
        steps[0] += 1
        images, labels = batch
        logits = net(images)
        loss = F.cross_entropy(logits, labels)
        return loss, {"acc": 100.0 * (logits.detach().argmax(1) == labels).sum()}, labels.numel()

    @torch.no_grad()
    def evaluate(model, loader):
        model.eval()
        loss, hits, n = 0.0, 0, 0
        for images, labels in loader:
            logits = model(images)
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            hits += (logits.argmax(1) == labels).sum().item()
            n += labels.numel()
        return {"test_loss": loss / n, "test_acc": 100.0 * hits / n}

    job = tr.Job(
        model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4),
        train_set=classification_dataset("mnist", args.data_dir, train=True),
        test_set=classification_dataset("mnist", args.data_dir, train=False),
        train_step=train_step, evaluate=evaluate, model_config={"hidden": args.hidden}, best=("test_acc", "max"),
        curves=[("loss", ["train_loss", "test_loss"])], title="tiny run",
        epoch_info=lambda m: {"neurons": {"neuron": {"tau": round(m.neuron.tau.item(), 6),
                                                      "v_th": round(m.neuron.v_th.item(), 6)}}},
    )
    return tr.fit(job, args, d, device, ckpt)


if __name__ == "__main__":
    main(sys.argv[1:])
