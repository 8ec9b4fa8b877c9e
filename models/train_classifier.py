"""Train a Table 8 ALIF classifier (MNIST, FashionMNIST or CIFAR-10).

    python -m models.train_classifier --dataset mnist --data-dir DIR --out RUN_DIR [options]
    torchrun --nproc_per_node=N -m models.train_classifier ...      (DistributedDataParallel)

Defaults follow the paper (PLIF's recipe): T=8, Adam lr 1e-3, cosine annealing stepped per
epoch, batch 16, PLIF's augmentation, rate-MSE loss. RUN_DIR receives metrics.jsonl (one line per
epoch), checkpoint.pt (written atomically after every epoch; --resume continues from it exactly),
summary.json and curves.png. Under torchrun, --batch-size is per process; rank 0 logs and writes.
"""
import argparse
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from . import training as tr
from .classifiers import NeuronConfig, SpikingClassifier, rate_mse_loss, table8_config
from .data import check_data_dir, classification_dataset

DATASETS = ("mnist", "fashion", "cifar10")
# Arguments that only say how to run, not what is trained: they may change on --resume.
RUN_ONLY = {"out", "resume", "workers", "device", "data_dir", "download", "halt_after_steps", "epochs", "progress",
            "test_subset"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.train_classifier", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data-dir", required=True, help="torchvision layout: DIR/MNIST/raw, DIR/FashionMNIST/raw, DIR/cifar-10-batches-py")
    p.add_argument("--out", required=True, help="run directory (created; must be new unless --resume)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs a network)")
    p.add_argument("--epochs", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--cosine-tmax", type=int, default=None, help="CosineAnnealingLR T_max in epochs (default: --epochs; PLIF used 64)")
    p.add_argument("--T", type=int, default=8, help="time steps")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", choices=tuple(tr.AMP_DTYPES), default="none", help="autocast precision (GPU only)")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images (smoke runs)")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images (smoke runs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--workers", type=int, default=4, help="data loader worker processes")
    p.add_argument("--progress", choices=("bar", "none"), default="bar")
    # The neurons (Table 7's ablation varies the first three).
    p.add_argument("--tau", type=float, default=0.25, help="initial decay, 0 < tau < 1")
    p.add_argument("--v-th", type=float, default=0.2, help="initial threshold")
    p.add_argument("--fixed-neurons", action="store_true", help="tau and v_th are not learned")
    p.add_argument("--per-channel", action="store_true", help="one tau and v_th per channel instead of per layer")
    p.add_argument("--surrogate", choices=("rect", "atan"), default="rect")
    p.add_argument("--no-second-dropout", action="store_true", help="drop the dropout before the last linear layer (PLIF's CIFAR-10 code)")
    p.add_argument("--halt-after-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: die mid-epoch, as if killed
    return p


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every argument checked before any data is read or anything is computed."""
    for name in ("epochs", "batch_size", "T"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.cosine_tmax is not None and args.cosine_tmax < 1:
        parser.error(f"--cosine-tmax must be >= 1, got {args.cosine_tmax}")
    for name in ("subset", "test_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if not 0 < args.tau < 1:
        parser.error(f"--tau must be in (0, 1), got {args.tau}")
    if not math.isfinite(args.v_th):
        parser.error(f"--v-th must be finite, got {args.v_th}")
    try:
        tr.check_device_and_amp(args.device, args.amp)
        check_data_dir(args.dataset, args.data_dir, args.download)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    ckpt = Path(args.out) / tr.CHECKPOINT
    if args.resume and not ckpt.is_file():
        parser.error(f"--resume: {ckpt} does not exist; start the run without --resume")
    if not args.resume and Path(args.out).exists() and any(Path(args.out).iterdir()):
        parser.error(f"--out {args.out} already holds files; pass --resume to continue that run, or choose a new directory")


def recipe(args: argparse.Namespace) -> Dict:
    return {k: v for k, v in vars(args).items() if k not in RUN_ONLY}


def model_config(args: argparse.Namespace):
    neuron = NeuronConfig(
        tau=args.tau, v_th=args.v_th, learnable=not args.fixed_neurons, per_channel=args.per_channel,
        surrogate=args.surrogate,
    )
    return table8_config(args.dataset, T=args.T, neuron=neuron, second_dropout=not args.no_second_dropout)


def neuron_values(model: SpikingClassifier) -> Dict[str, Dict[str, float]]:
    """The learned tau and v_th of each ALIF layer (mean, min and max when per channel)."""
    out = {}
    with torch.no_grad():
        for name, m in model.neurons().items():
            entry = {}
            for key, value in (("tau", m.tau), ("v_th", m.v_th)):
                value = value.float().cpu()
                if value.dim() == 0:
                    entry[key] = round(value.item(), 6)
                else:
                    entry.update({f"{key}_mean": round(value.mean().item(), 6), f"{key}_min": round(value.min().item(), 6),
                                  f"{key}_max": round(value.max().item(), 6)})
            out[name] = entry
    return out


@torch.no_grad()
def evaluate(model: SpikingClassifier, loader, device, amp: str, classes: int = 10):
    """Test loss, accuracy and per-class accuracy (%) over a loader."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros(classes, device=device, dtype=torch.long)
    count = torch.zeros(classes, device=device, dtype=torch.long)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with tr.autocast(device, amp):
            rates = model(images)
        loss_sum += rate_mse_loss(rates.float(), labels).double() * labels.numel()
        hit = rates.argmax(1) == labels
        correct += torch.bincount(labels[hit], minlength=classes)
        count += torch.bincount(labels, minlength=classes)
    n = count.sum().item()
    per_class = (100.0 * correct.double() / count.clamp(min=1).double()).tolist()
    return loss_sum.item() / max(n, 1), 100.0 * correct.sum().item() / max(n, 1), per_class


def make_loaders(args, d: tr.Dist, device):
    train_set = classification_dataset(args.dataset, args.data_dir, train=True, download=args.download)
    test_set = classification_dataset(args.dataset, args.data_dir, train=False, download=args.download)
    if args.subset is not None:
        if args.subset > len(train_set):
            raise SystemExit(f"--subset {args.subset} exceeds the {len(train_set)} training images")
        train_set = Subset(train_set, range(args.subset))
    if args.test_subset is not None:
        test_set = Subset(test_set, range(min(args.test_subset, len(test_set))))
    # The shuffle is a function of (seed, epoch) through set_epoch, so a resumed run replays it.
    sampler = DistributedSampler(train_set, num_replicas=d.world, rank=d.rank, shuffle=True, seed=args.seed)
    common = dict(num_workers=args.workers, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, **common)
    # Its own generator: iterating a loader draws a seed, which must not move the training RNG.
    test_loader = DataLoader(test_set, batch_size=max(args.batch_size, 256), shuffle=False,
                             generator=torch.Generator(), **common)
    return train_loader, test_loader, sampler


def main(argv: Optional[List[str]] = None) -> SpikingClassifier:
    """Runs the training; returns the trained model (unwrapped from DDP)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args, parser)
    run_dir = Path(args.out)
    d = tr.init_distributed("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = tr.pick_device(args.device, d)

    ckpt = None
    if args.resume:
        ckpt = torch.load(run_dir / tr.CHECKPOINT, map_location="cpu", weights_only=False)
        saved = ckpt["recipe"]
        if args.cosine_tmax is None:  # not given now: the run's schedule goes on
            args.cosine_tmax = saved["cosine_tmax"]
        mine = recipe(args)
        diff = {k: (saved.get(k), mine.get(k)) for k in set(saved) | set(mine) if saved.get(k) != mine.get(k)}
        if diff:
            details = ", ".join(f"{k}: run has {a!r}, now {b!r}" for k, a, b in ((k, *v) for k, v in sorted(diff.items())))
            parser.error(f"--resume: the arguments differ from the run's ({details}); only {sorted(RUN_ONLY)} may change")
        if len(ckpt["rng"]) != d.world:
            parser.error(f"--resume: the run used {len(ckpt['rng'])} processes, this launch has {d.world}")
    else:
        if args.cosine_tmax is None:
            args.cosine_tmax = args.epochs
        run_dir.mkdir(parents=True, exist_ok=True)
    tr.seed_everything(args.seed + d.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    cfg = model_config(args)
    model = SpikingClassifier(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.cosine_tmax)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    start_epoch, wall_before, best_acc, best_epoch = 0, 0.0, -1.0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, wall_before = ckpt["epoch"], ckpt["wall_time_s"]
        best_acc, best_epoch = ckpt["best_test_acc"], ckpt["best_epoch"]
        tr.set_rng_state(ckpt["rng"][d.rank])
        if d.main:
            tr.truncate_metrics(run_dir, start_epoch)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if d.world > 1 else model

    train_loader, test_loader, sampler = make_loaders(args, d, device)
    started = time.perf_counter()
    steps_here = 0
    throughput = tr.Throughput(device)
    if d.main:
        print(f"training {args.dataset} T={args.T} on {tr.device_description(device)} x {d.world} process(es); "
              f"epochs {start_epoch + 1}..{args.epochs}; run dir {run_dir}", flush=True)
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        net.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        throughput.begin()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not d.main or args.progress == "none",
                   unit="batch", dynamic_ncols=True)
        for step, (images, labels) in enumerate(bar):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with tr.autocast(device, args.amp):
                rates = net(images)
            loss = rate_mse_loss(rates.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_sum += loss.detach().double() * labels.numel()
            correct += (rates.detach().argmax(1) == labels).sum()
            seen += labels.numel()
            throughput.add(labels.numel() * d.world)
            steps_here += 1
            if args.halt_after_steps is not None and steps_here >= args.halt_after_steps:
                raise SystemExit(f"halted after {steps_here} steps (--halt-after-steps), as if killed: no checkpoint written")
            if d.main and step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{throughput.rate():.0f}")
        images_per_s = throughput.rate()
        totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), device=device, dtype=torch.float64)])
        if d.world > 1:
            dist.all_reduce(totals)
            # DDP syncs gradients, and buffers only at the start of a forward: give every rank
            # rank 0's BatchNorm statistics now, so all hold the model the checkpoint holds.
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        scheduler.step()
        if d.main:
            test_loss, test_acc, _ = evaluate(model, test_loader, device, args.amp)
        # Every rank's RNG state as the next epoch will find it, for an exact --resume.
        rng = [None] * d.world
        if d.world > 1:
            dist.all_gather_object(rng, tr.rng_state())
        else:
            rng = [tr.rng_state()]
        if d.main:
            if test_acc > best_acc:
                best_acc, best_epoch = test_acc, epoch + 1
            wall = wall_before + time.perf_counter() - started
            record = dict(
                epoch=epoch + 1, train_loss=totals[0].item() / totals[2].item(),
                train_acc=100.0 * totals[1].item() / totals[2].item(), test_loss=test_loss, test_acc=test_acc,
                images_per_s=round(images_per_s, 1), peak_gpu_mb=tr.peak_gpu_mb(device),
                lr=optimizer.param_groups[0]["lr"], wall_time_s=round(wall, 1), neurons=neuron_values(model),
            )
            tr.append_metrics(run_dir, record)
            tr.save_atomic(dict(
                recipe=recipe(args), model_config=cfg.to_dict(), model=model.state_dict(),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else None, epoch=epoch + 1, rng=rng,
                wall_time_s=wall, best_test_acc=best_acc, best_epoch=best_epoch,
            ), run_dir / tr.CHECKPOINT)
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2f}% | "
                  f"test loss {test_loss:.4f} acc {test_acc:.2f}% | {images_per_s:.0f} img/s", flush=True)
        if d.world > 1:
            dist.barrier()

    if d.main:
        records = tr.read_metrics(run_dir)
        final = records[-1] if records else {}
        tr.write_json_atomic(dict(
            dataset=args.dataset, final_test_acc=final.get("test_acc"), best_test_acc=best_acc if best_acc >= 0 else None,
            best_epoch=best_epoch, epochs=args.epochs, wall_time_s=round(wall_before + time.perf_counter() - started, 1),
            images_per_s_last_epoch=final.get("images_per_s"), peak_gpu_mb=final.get("peak_gpu_mb"),
            device=tr.device_description(device), processes=d.world, recipe=recipe(args),
        ), run_dir / "summary.json")
        tr.plot_curves(run_dir, records, [("loss", ["train_loss", "test_loss"]), ("accuracy (%)", ["train_acc", "test_acc"])])
    return model


if __name__ == "__main__":
    main(sys.argv[1:])
