"""What every training entry point shares: distributed set-up, devices and precision, atomic
checkpoints with every RNG state, the per-epoch metrics file and the curves plot."""
import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.distributed as dist

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class Dist:
    """This process's place in the run: world size 1 and rank 0 without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on
    the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(requested: str, d: Dist) -> torch.device:
    """"auto" is the GPU when there is one; under torchrun each process takes its local GPU."""
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested
    if kind == "cuda":
        device = torch.device("cuda", d.local_rank if d.world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
        return device
    return torch.device(kind)


def check_device_and_amp(device: str, amp: str) -> None:
    """Raises ValueError for a device that is not there or a precision it cannot run."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no GPU is visible (torch.cuda.is_available() is False)")
    kind = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if amp != "none" and kind != "cuda":
        raise ValueError(f"--amp {amp} needs a GPU: the CPU kernels compute in float32/float64; use --amp none")


def autocast(device: torch.device, amp: str):
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def rng_state() -> Dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: a crash mid-write leaves the
    previous checkpoint intact, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json_atomic(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def append_metrics(run_dir: Path, record: Dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> List[Dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """Drops metric lines of epochs after the checkpoint (a run killed between writing the
    metrics line and the checkpoint would otherwise log that epoch twice after --resume)."""
    records = [r for r in read_metrics(run_dir) if r["epoch"] <= epochs_done]
    path = Path(run_dir) / METRICS
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def plot_curves(run_dir: Path, records: List[Dict], pairs: Iterable) -> None:
    """curves.png: one panel per (title, [metric keys]) in `pairs`, against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(pairs)
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 3.5), squeeze=False)
    epochs = [r["epoch"] for r in records]
    for ax, (title, keys) in zip(axes[0], pairs):
        for key in keys:
            ax.plot(epochs, [r.get(key) for r in records], marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(Path(run_dir) / "curves.png", dpi=120)
    plt.close(fig)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def peak_gpu_mb(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


class Throughput:
    """Images per second over a span of training steps (synchronising the GPU at the ends)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = None
        self.images = 0

    def begin(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.start = time.perf_counter()
        self.images = 0

    def add(self, n: int) -> None:
        self.images += n

    def rate(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0


# ---- the shared training driver ------------------------------------------------------------
# Arguments that only say how to run, not what is trained: they may change on --resume.
RUN_ONLY = {"out", "resume", "workers", "device", "data_dir", "download", "halt_after_steps", "epochs", "progress",
            "test_subset"}


def add_run_args(p, *, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """The options every training entry point has."""
    import argparse

    p.add_argument("--data-dir", required=True, help="datasets in torchvision's layout (see models/data.py)")
    p.add_argument("--out", required=True, help="run directory (created; must be new unless --resume)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs a network)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none", help="autocast precision (GPU only)")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images (smoke runs)")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images (smoke runs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--workers", type=int, default=4, help="data loader worker processes")
    p.add_argument("--progress", choices=("bar", "none"), default="bar")
    p.add_argument("--halt-after-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: die mid-epoch, as if killed


def validate_run_args(args, parser, check_data) -> None:
    """Checks the shared options, the device, the data directory and the run directory; exits
    with a usage error naming the problem before anything is computed."""
    import math

    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be > 0, got {args.lr}")
    for name in ("subset", "test_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    try:
        check_device_and_amp(args.device, args.amp)
        check_data()
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    ckpt = Path(args.out) / CHECKPOINT
    if args.resume and not ckpt.is_file():
        parser.error(f"--resume: {ckpt} does not exist; start the run without --resume")
    if not args.resume and Path(args.out).exists() and any(Path(args.out).iterdir()):
        parser.error(f"--out {args.out} already holds files; pass --resume to continue that run, or choose a new directory")


def recipe(args) -> Dict:
    """What a run trains: every argument but the RUN_ONLY ones."""
    return {k: v for k, v in vars(args).items() if k not in RUN_ONLY}


def prepare_run(args, parser, inherit=()):
    """Joins torchrun's group, picks the device, and on --resume loads the checkpoint and checks
    that the arguments describe the same run (arguments in `inherit` left as None take the run's
    value). Seeds every RNG. Returns (dist, device, checkpoint or None)."""
    kind = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    d = init_distributed(kind)
    device = pick_device(args.device, d)
    ckpt = None
    run_dir = Path(args.out)
    if args.resume:
        ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
        saved = ckpt["recipe"]
        for key in inherit:
            if getattr(args, key) is None:
                setattr(args, key, saved.get(key))
        mine = recipe(args)
        diff = {k: (saved.get(k), mine.get(k)) for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)}
        if diff:
            details = ", ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in diff.items())
            parser.error(f"--resume: the arguments differ from the run's ({details}); only {sorted(RUN_ONLY)} may change")
        if len(ckpt["rng"]) != d.world:
            parser.error(f"--resume: the run used {len(ckpt['rng'])} processes, this launch has {d.world}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed + d.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return d, device, ckpt


@dataclass
class Job:
    """What an entry point hands to fit().

    train_step(net, batch, epoch) runs the forward pass and the loss under autocast and returns
    (loss to minimise, {name: sum over the batch's samples} of per-sample statistics, samples);
    the epoch's record gets train_loss and train_<name> as means over the epoch's samples.
    evaluate(model, loader) returns the test metrics (rank 0, on the unwrapped model);
    epoch_info(model) adds fields to each epoch's record; `best` = (metric, "max" or "min")."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]
    train_set: object
    test_set: object
    train_step: object
    evaluate: object
    model_config: Dict
    best: tuple
    curves: List
    title: str
    epoch_info: object = None


def make_loaders(job: Job, args, d: Dist, device):
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    train_set, test_set = job.train_set, job.test_set
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


def fit(job: Job, args, d: Dist, device: torch.device, ckpt: Optional[Dict]) -> torch.nn.Module:
    """Trains job.model for args.epochs epochs (from the checkpoint's epoch on --resume); after
    each one evaluates, appends to metrics.jsonl and writes checkpoint.pt atomically (rank 0);
    finally writes summary.json and curves.png. Returns the unwrapped model."""
    from torch.nn.parallel import DistributedDataParallel
    from tqdm import tqdm

    run_dir = Path(args.out)
    model, optimizer, scheduler = job.model, job.optimizer, job.scheduler
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    best_key, best_mode = job.best
    start_epoch, wall_before, best, best_epoch = 0, 0.0, None, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, wall_before = ckpt["epoch"], ckpt["wall_time_s"]
        best, best_epoch = ckpt["best"], ckpt["best_epoch"]
        set_rng_state(ckpt["rng"][d.rank])
        if d.main:
            truncate_metrics(run_dir, start_epoch)
    net = model
    if d.world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_loader, test_loader, sampler = make_loaders(job, args, d, device)
    started = time.perf_counter()
    steps_here = 0
    throughput = Throughput(device)
    if d.main:
        print(f"{job.title} on {device_description(device)} x {d.world} process(es); epochs {start_epoch + 1}.."
              f"{args.epochs}; run dir {run_dir}", flush=True)
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        net.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sums: Dict[str, torch.Tensor] = {}
        seen = 0
        throughput.begin()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", dynamic_ncols=True,
                   disable=not d.main or args.progress == "none")
        for step, batch in enumerate(bar):
            batch = [b.to(device, non_blocking=True) for b in batch]
            loss, stats, n = job.train_step(net, batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            for key, value in {"loss": loss.detach() * n, **stats}.items():
                sums[key] = sums.get(key, 0) + value.detach().double()
            seen += n
            throughput.add(n * d.world)
            steps_here += 1
            if args.halt_after_steps is not None and steps_here >= args.halt_after_steps:
                raise SystemExit(f"halted after {steps_here} steps (--halt-after-steps), as if killed: no checkpoint written")
            if d.main and step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{throughput.rate():.0f}")
        images_per_s = throughput.rate()
        keys = sorted(sums)
        totals = torch.stack([sums[k] for k in keys] + [torch.tensor(float(seen), device=device, dtype=torch.float64)])
        if d.world > 1:
            dist.all_reduce(totals)
            # DDP syncs gradients, and buffers only at the start of a forward: give every rank
            # rank 0's buffers (BatchNorm statistics) now, so all hold the model the checkpoint holds.
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        if scheduler is not None:
            scheduler.step()
        test = job.evaluate(model, test_loader) if d.main else {}
        # Every rank's RNG state as the next epoch will find it, for an exact --resume.
        rng = [None] * d.world
        if d.world > 1:
            dist.all_gather_object(rng, rng_state())
        else:
            rng = [rng_state()]
        if d.main:
            value = test[best_key]
            if best is None or (value > best if best_mode == "max" else value < best):
                best, best_epoch = value, epoch + 1
            wall = wall_before + time.perf_counter() - started
            count = max(totals[-1].item(), 1.0)
            record = {"epoch": epoch + 1}
            record.update({("train_loss" if k == "loss" else f"train_{k}"): totals[i].item() / count
                           for i, k in enumerate(keys)})
            record.update(test)
            record.update(images_per_s=round(images_per_s, 1), peak_gpu_mb=peak_gpu_mb(device),
                          lr=optimizer.param_groups[0]["lr"], wall_time_s=round(wall, 1))
            if job.epoch_info is not None:
                record.update(job.epoch_info(model))
            append_metrics(run_dir, record)
            save_atomic(dict(
                recipe=recipe(args), model_config=job.model_config, model=model.state_dict(),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict() if scheduler is not None else None,
                scaler=scaler.state_dict() if scaler is not None else None, epoch=epoch + 1, rng=rng,
                wall_time_s=wall, best=best, best_epoch=best_epoch, best_key=best_key,
            ), run_dir / CHECKPOINT)
            shown = " | ".join(f"{k} {v:.4g}" for k, v in record.items()
                               if isinstance(v, float) and (k.startswith("train_") or k.startswith("test_")))
            print(f"epoch {epoch + 1}: {shown} | {images_per_s:.0f} img/s", flush=True)
        if d.world > 1:
            dist.barrier()

    if d.main:
        records = read_metrics(run_dir)
        final = records[-1] if records else {}
        summary = {f"final_{best_key}": final.get(best_key), f"best_{best_key}": best, "best_epoch": best_epoch}
        summary.update(
            epochs=args.epochs, wall_time_s=round(wall_before + time.perf_counter() - started, 1),
            images_per_s_last_epoch=final.get("images_per_s"), peak_gpu_mb=final.get("peak_gpu_mb"),
            device=device_description(device), processes=d.world, recipe=recipe(args),
        )
        write_json_atomic(summary, run_dir / "summary.json")
        plot_curves(run_dir, records, job.curves)
    return model
