"""fit(): the epochs of a run. Each epoch trains, evaluates (rank 0), and writes the checkpoint
atomically before appending its record to metrics.jsonl; the run ends with curves.png and
summary.json. Ctrl-C, a full disk or a NaN (--stop-on-nonfinite) end it with a message saying
how to resume."""
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from . import curves, files
from .cli import _note
from .env import Dist, device_description, peak_gpu_mb, rng_state, set_rng_state
from .files import (CHECKPOINT, CURVES, METRICS, SUMMARY, DiskFullError, append_metrics, save_atomic,
                    write_json_atomic, write_metrics)
from .monitor import (FiringMonitor, FiringRateWarning, Progress, StepSeries, Throughput, firing_warnings,
                      format_duration)
from .rundir import _undo_run_dir, recipe, release_lock

# Training more image-epochs than this on a CPU gets a warning (the paper's MNIST recipe is 3.84M).
CPU_SCALE_IMAGES = 1_000_000
# A run's training series gets about this many points (chunks of steps) in all.
SERIES_POINTS = 200
# --probes auto: this many test-set probes per epoch in runs of fewer than PROBE_EPOCHS epochs, when
# their estimated cost is at most PROBE_COST of the training time. EVAL_IMAGE_COST is what an
# evaluated image costs beside a trained one, an upper bound: forward only, in large batches (the
# MNIST classifier on a CPU evaluates an image in about a quarter of the time it trains one).
AUTO_PROBES, PROBE_EPOCHS, PROBE_COST, EVAL_IMAGE_COST = 4, 5, 0.10, 0.5


@dataclass
class Job:
    """What an entry point hands to fit().

    train_step(net, batch, epoch) runs the forward pass and the loss under autocast and returns
    (loss to minimise, {name: sum over the batch's samples} of per-sample statistics, samples);
    the epoch's record gets train_loss and train_<name> as means over the epoch's samples.
    evaluate(model, loader) returns the test metrics (rank 0, on the unwrapped model);
    epoch_info(model) adds fields to each epoch's record; `best` = (metric, "max" or "min").
    spiking_layers(model) gives the {name: module} whose outputs are spikes: their firing rates
    in evaluation and in training go into each record as firing_rate and train_firing_rate
    (default: every alif_cuda ALIF); with warn_firing, a layer whose rate lies outside
    [1 %, 99 %] gets a FiringRateWarning;
    drop_last drops each epoch's last incomplete training batch (FSVAE's FashionMNIST/CIFAR-10)."""

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
    spiking_layers: Optional[Callable] = None
    warn_firing: bool = False
    drop_last: bool = False


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
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=job.drop_last, **common)
    # Its own generator: iterating a loader draws a seed, which must not move the training RNG.
    test_loader = DataLoader(test_set, batch_size=max(args.batch_size, 256), shuffle=False,
                             generator=torch.Generator(), **common)
    probe_set = Subset(test_set, range(min(args.probe_size, len(test_set))))
    probe_loader = DataLoader(probe_set, batch_size=max(args.batch_size, 256), shuffle=False,
                              generator=torch.Generator(), num_workers=0, pin_memory=device.type == "cuda")
    return train_loader, test_loader, sampler, probe_loader


def default_spiking_layers(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    from alif_cuda.nn import ALIF

    return {name: m for name, m in model.named_modules() if isinstance(m, ALIF)}


def _nonfinite(loss: torch.Tensor, model: torch.nn.Module, check_grads: bool) -> Optional[str]:
    """None if the loss (and, with check_grads, every gradient) is finite, else what is not."""
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None] if check_grads else []
    flags = torch.stack([loss.detach().isfinite().all()] + [p.grad.isfinite().all() for _, p in named])
    if bool(flags.all()):
        return None
    if not bool(flags[0]):
        return f"the loss is {loss.item()}"
    name = next(n for (n, _), ok in zip(named, flags[1:].tolist()) if not ok)
    layer = name.rsplit(".", 1)[0] if "." in name else "(top level)"
    module = model.get_submodule(layer) if "." in name else model
    return f"the gradient of {name} (layer {layer}, {type(module).__name__}) is not finite (loss {loss.item():.6g})"


class NonFiniteError(RuntimeError):
    """--stop-on-nonfinite found a NaN or infinity."""


def _probes_per_epoch(args, images_per_epoch: int) -> int:
    """--probes, or for auto: AUTO_PROBES in a run of fewer than PROBE_EPOCHS epochs whose probes
    would cost at most PROBE_COST of its training time (EVAL_IMAGE_COST per evaluated image),
    else 0."""
    if args.probes is not None:
        return args.probes
    cost = AUTO_PROBES * args.probe_size * EVAL_IMAGE_COST / max(images_per_epoch, 1)
    return AUTO_PROBES if args.epochs < PROBE_EPOCHS and cost <= PROBE_COST else 0


class Probe:
    """Test-set evaluations inside an epoch (rank 0), on the first --probe-size test images, at
    evenly spaced steps: the test curve of a short run. They change nothing in the training: the
    RNG state is restored after each, the model evaluates in eval mode (no BatchNorm update) and
    the epoch's firing-rate monitor does not count them."""

    def __init__(self, loader, per_epoch: int, steps: int, monitor: FiringMonitor, layers: Dict):
        self.loader, self.monitor, self.layers = loader, monitor, layers
        self.at = {round(steps * (i + 1) / (per_epoch + 1)) for i in range(per_epoch)} - {0, steps}
        self.points: List[Dict] = []

    def due(self, step_in_epoch: int) -> bool:
        return step_in_epoch in self.at

    def run(self, run: "Run", global_step: int) -> None:
        device = run.device
        counter = FiringMonitor(self.layers)
        self.monitor.paused = True
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                metrics = run.job.evaluate(run.job.model, self.loader)
        finally:
            counter.remove()
            self.monitor.paused = False
        point = {"step": global_step, "test_images": len(self.loader.dataset), **metrics}
        rates = counter.rates("eval")
        if rates:
            point["firing_rate"] = {k: round(v, 6) for k, v in rates.items()}
        self.points.append(point)

    def take(self) -> List[Dict]:
        points, self.points = self.points, []
        return points


@dataclass
class Run:
    """What a run carries from epoch to epoch, and where it is (for the messages of an
    interruption)."""

    job: Job
    args: object
    d: Dist
    device: torch.device
    scaler: Optional[object]
    start_epoch: int = 0
    wall_before: float = 0.0
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    records: List[Dict] = field(default_factory=list)
    epoch: int = 0
    step: int = -1
    steps_here: int = 0
    started: float = 0.0
    wall: float = 0.0  # the run's training time up to the end of the last recorded epoch

    @property
    def run_dir(self) -> Path:
        return Path(self.args.out)


def fit(job: Job, args, d: Dist, device: torch.device, ckpt: Optional[Dict]) -> torch.nn.Module:
    """Trains job.model for args.epochs epochs (from the checkpoint's epoch on --resume); after
    each one evaluates and (rank 0) writes checkpoint.pt atomically, then appends its record to
    metrics.jsonl; finally writes curves.png and summary.json and prints a one-line summary.
    Ctrl-C, a full disk or (with --stop-on-nonfinite) a NaN end the run with a message saying how
    to resume it. Returns the unwrapped model."""
    try:
        return _fit(job, args, d, device, ckpt)
    finally:
        if d.main:
            release_lock(Path(args.out))


def _fit(job: Job, args, d: Dist, device: torch.device, ckpt: Optional[Dict]) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    run = Run(job, args, d, device, torch.amp.GradScaler(device.type) if args.amp == "fp16" else None)
    if ckpt is not None:
        _resume(run, ckpt)
    if run.start_epoch >= args.epochs:
        if d.main:
            _already_finished(run)
        return job.model
    net = job.model
    if d.world > 1:
        net = DistributedDataParallel(job.model, device_ids=[device.index] if device.type == "cuda" else None)
    train_loader, test_loader, sampler, probe_loader = make_loaders(job, args, d, device)
    images = (args.epochs - run.start_epoch) * len(sampler) * d.world
    if d.main and device.type == "cpu" and images > CPU_SCALE_IMAGES:
        _note(f"warning: this is a GPU-scale run on a CPU ({args.epochs - run.start_epoch} epochs x "
              f"{len(sampler) * d.world} images): expect many hours (see the run ETA below). For a short CPU run, "
              f"pass e.g. --epochs 1 --subset 6000 --test-subset 2000 (what scripts/train.sh does on a CPU).")
    layers = (job.spiking_layers or default_spiking_layers)(job.model)
    monitor = FiringMonitor(layers)
    series = StepSeries(max(1, -(-args.epochs * len(train_loader) // SERIES_POINTS)), monitor, layers)
    per_epoch = _probes_per_epoch(args, len(sampler) * d.world) if d.main else 0
    probe = Probe(probe_loader, per_epoch, len(train_loader), monitor, layers) if per_epoch else None
    run.started = time.perf_counter()
    progress = Progress(args.progress, args.log_every, args.epochs, run.start_epoch, len(train_loader), d.main)
    if d.main:
        print(f"{job.title} on {device_description(device)} x {d.world} process(es); epochs {run.start_epoch + 1}.."
              f"{args.epochs} of {len(train_loader)} steps; run dir {run.run_dir}", flush=True)
    run.epoch = run.start_epoch
    try:
        for run.epoch in range(run.start_epoch, args.epochs):
            sampler.set_epoch(run.epoch)
            monitor.clear()
            series.start_epoch()
            totals, keys, images_per_s = _train_epoch(run, net, train_loader, progress, series, probe)
            if job.scheduler is not None:
                job.scheduler.step()
            test, rates = _evaluate(run, test_loader, monitor, progress) if d.main else ({}, {})
            # Every rank's RNG state as the next epoch will find it, for an exact --resume.
            rng = [None] * d.world
            if d.world > 1:
                dist.all_gather_object(rng, rng_state())
            else:
                rng = [rng_state()]
            if d.main:
                record = _record(run, totals, keys, test, rates, images_per_s, len(train_loader))
                record["steps"] = series.take()
                if probe is not None:
                    record["probes"] = probe.take()
                _save(run, record, rng)
            if d.world > 1:
                dist.barrier()
        if d.main:
            _finish(run, time.perf_counter() - run.started)
    except KeyboardInterrupt:
        progress.close()
        if d.main:
            _interrupted(run, len(train_loader), "interrupted (Ctrl-C)")
        raise SystemExit(130) from None
    except (DiskFullError, NonFiniteError) as e:
        if not d.main:
            raise
        progress.close()
        _interrupted(run, len(train_loader), str(e))
        raise SystemExit(1) from None
    return job.model


def _resume(run: Run, ckpt: Dict) -> None:
    """The model, optimizer, scheduler, scaler, records and RNG state of the checkpoint; rank 0
    rewrites metrics.jsonl from its records (a line torn by a kill goes)."""
    job, args = run.job, run.args
    job.model.load_state_dict(ckpt["model"])
    if ckpt.get("optimizer") is not None:
        job.optimizer.load_state_dict(ckpt["optimizer"])
    elif ckpt["epoch"] < args.epochs:
        _note(f"note: {run.run_dir / CHECKPOINT} is a finished run's and holds no optimizer state (it was trained "
              f"without --keep-optimizer): the optimizer starts afresh, so these extra epochs differ from "
              f"what one longer run would have trained")
    if job.scheduler is not None and ckpt.get("scheduler") is not None:
        job.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler") is not None:
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch, run.wall_before = ckpt["epoch"], ckpt["wall_time_s"]
    run.best, run.best_epoch, run.records = ckpt["best"], ckpt["best_epoch"], list(ckpt["records"])
    set_rng_state(ckpt["rng"][run.d.rank])
    if run.d.main:
        try:
            write_metrics(run.run_dir, run.records)
        except DiskFullError as e:
            raise SystemExit(f"{e}; {run.run_dir} is unchanged: free some space, then run\n  "
                             f"{args.resume_command}") from None


def _already_finished(run: Run) -> None:
    """--resume of a finished run: writes again what a kill after its last checkpoint left
    unwritten, and says there is nothing to train."""
    run_dir, best_key = run.run_dir, run.job.best[0]
    missing = [name for name in (CURVES, SUMMARY) if not (run_dir / name).is_file()]
    try:
        summarised = json.loads((run_dir / SUMMARY).read_text()).get("epochs")
    except (OSError, ValueError, AttributeError):
        summarised = None
    if SUMMARY not in missing and summarised != run.start_epoch:
        # A run trained further (--resume --epochs) and killed after its last checkpoint: the
        # summary (and maybe the picture, written before it) is the shorter run's.
        _note(f"the summary.json in {run_dir} is of {summarised} epochs, the run has {run.start_epoch}: "
              f"writing it and curves.png again")
        missing = [CURVES, SUMMARY]
    elif missing:
        _note(f"the finished run in {run_dir} lacks {' and '.join(missing)}: writing them again")
    if missing:
        _finish(run, 0.0, only=missing)
    final = run.records[-1].get(best_key) if run.records else None
    print(f"the run in {run_dir} already finished its {run.start_epoch} epochs ({best_key} {final}, best "
          f"{run.best} at epoch {run.best_epoch}); nothing to train. To train it further, pass a larger --epochs "
          f"with --resume. Its files: {run_dir / METRICS}, {run_dir / SUMMARY}, {run_dir / CURVES}", flush=True)


def _train_epoch(run: Run, net, loader, progress: Progress, series: StepSeries, probe: Optional[Probe]):
    """One epoch of training steps, its series points and probes; returns (the epoch's sums over
    every rank, their keys, images per second)."""
    job, args, d, device = run.job, run.args, run.d, run.device
    optimizer, scaler = job.optimizer, run.scaler
    net.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sums: Dict[str, torch.Tensor] = {}
    seen = 0
    throughput = Throughput(device)
    throughput.begin()
    run.step = -1
    for run.step, batch in enumerate(progress.start_epoch(run.epoch, loader)):
        batch = [b.to(device, non_blocking=True) for b in batch]
        loss, stats, n = job.train_step(net, batch, run.epoch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if args.stop_on_nonfinite:
            # Under fp16 loss scaling, inf gradients are expected (the scaler skips those steps).
            problem = _nonfinite(loss, job.model, check_grads=scaler is None)
            if problem is not None:
                raise NonFiniteError(f"stopped at epoch {run.epoch + 1}, step {run.step + 1} of {len(loader)} "
                                     f"(--stop-on-nonfinite): {problem}")
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        step_sums = {"loss": loss.detach() * n, **stats}
        for key, value in step_sums.items():
            sums[key] = sums.get(key, 0) + value.detach().double()
        global_step = run.epoch * len(loader) + run.step + 1
        series.add(step_sums, n, global_step, last_in_epoch=run.step + 1 == len(loader))
        seen += n
        throughput.add(n * d.world)
        run.steps_here += 1
        if args.halt_after_steps is not None and run.steps_here >= args.halt_after_steps:
            raise SystemExit(f"halted after {run.steps_here} steps (--halt-after-steps), as if killed: "
                             f"no checkpoint written")
        if d.main and progress.due(run.step):
            progress.show(run.step, loss, throughput.rate())
        if probe is not None and probe.due(run.step + 1):
            probe.run(run, global_step)
            net.train()
    progress.end_epoch(run.step + 1)
    images_per_s = throughput.rate()
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys] + [torch.tensor(float(seen), device=device, dtype=torch.float64)])
    if d.world > 1:
        dist.all_reduce(totals)
        # DDP syncs gradients, and buffers only at the start of a forward: give every rank
        # rank 0's buffers (BatchNorm statistics) now, so all hold the model the checkpoint holds.
        for buffer in job.model.buffers():
            dist.broadcast(buffer, 0)
    return totals, keys, images_per_s


def _evaluate(run: Run, loader, monitor: FiringMonitor, progress: Progress):
    """The test metrics (rank 0, on the unwrapped model) and the firing rates of the epoch's
    training and evaluation passes, {"train": ..., "eval": ...}; with job.warn_firing, a
    FiringRateWarning for each silent or saturated layer."""
    started = time.perf_counter()
    test = run.job.evaluate(run.job.model, loader)
    rates = {mode: {k: round(v, 6) for k, v in monitor.rates(mode).items()} for mode in FiringMonitor.MODES}
    if run.job.warn_firing:
        for mode, where in (("train", "training"), ("eval", "test")):
            for message in firing_warnings(rates[mode]):
                warnings.warn(f"epoch {run.epoch + 1} ({where}): {message}", FiringRateWarning, stacklevel=1)
    progress.evaluated(time.perf_counter() - started)
    return test, rates


def _record(run: Run, totals, keys, test: Dict, rates: Dict, images_per_s: float, steps: int) -> Dict:
    """The epoch's record (rank 0), appended to run.records (fit adds its step series and
    probes); the best epoch updated. "step" is the run's step count at the epoch's end."""
    best_key, best_mode = run.job.best
    value = test[best_key]
    if run.best is None or (value > run.best if best_mode == "max" else value < run.best):
        run.best, run.best_epoch = value, run.epoch + 1
    run.wall = run.wall_before + time.perf_counter() - run.started
    count = max(totals[-1].item(), 1.0)
    record = {"epoch": run.epoch + 1, "step": (run.epoch + 1) * steps}
    record.update({("train_loss" if k == "loss" else f"train_{k}"): totals[i].item() / count
                   for i, k in enumerate(keys)})
    record.update(test)
    record.update(images_per_s=round(images_per_s, 1), peak_gpu_mb=peak_gpu_mb(run.device),
                  lr=run.job.optimizer.param_groups[0]["lr"], wall_time_s=round(run.wall, 1))
    if rates["eval"]:
        record["firing_rate"] = rates["eval"]
    if rates["train"]:
        record["train_firing_rate"] = rates["train"]
    if run.job.epoch_info is not None:
        record.update(run.job.epoch_info(run.job.model))
    run.records.append(record)
    return record


def _save(run: Run, record: Dict, rng: List) -> None:
    """checkpoint.pt (atomically), then the record's line in metrics.jsonl, then the epoch's line
    on stdout."""
    job, args = run.job, run.args
    last = run.epoch + 1 == args.epochs
    keep_optimizer = not last or args.keep_optimizer
    scaler = run.scaler
    save_atomic(dict(
        recipe=recipe(args), model_config=job.model_config, model=job.model.state_dict(),
        optimizer=job.optimizer.state_dict() if keep_optimizer else None,
        scheduler=job.scheduler.state_dict() if job.scheduler is not None else None,
        scaler=scaler.state_dict() if scaler is not None and keep_optimizer else None,
        epoch=run.epoch + 1, rng=rng, wall_time_s=run.wall,
        best=run.best, best_epoch=run.best_epoch, best_key=job.best[0], records=run.records, finished=last,
    ), run.run_dir / CHECKPOINT)
    files.fault_point("checkpoint_written")
    append_metrics(run.run_dir, record)
    files.fault_point("metrics_written")
    shown = " | ".join(f"{k} {v:.4g}" for k, v in record.items()
                       if isinstance(v, float) and (k.startswith("train_") or k.startswith("test_")))
    print(f"epoch {run.epoch + 1}: {shown} | {record['images_per_s']:.0f} img/s", flush=True)


def _interrupted(run: Run, steps: int, why: str) -> None:
    """Says what state the run directory is in and how to go on."""
    args, run_dir = run.args, run.run_dir
    where = f"in epoch {run.epoch + 1} at step {max(run.step + 1, 0)} of {steps}"
    ckpt = run_dir / CHECKPOINT
    if ckpt.is_file():
        _note(f"{why} {where}. {ckpt} holds the run as of the end of the last finished epoch and is intact; "
              f"continue with:\n  {args.resume_command}")
        return
    if getattr(args, "run_dir_created", False) or getattr(args, "lock_created", False):
        _undo_run_dir(args)
        gone = "" if run_dir.exists() else f"; {run_dir} was removed"
        _note(f"{why} {where}: nothing was saved yet (the first checkpoint comes at the end of epoch 1){gone}. "
              f"Start again with:\n  {args.resume_command}")
    else:
        _note(f"{why} {where}: nothing was saved yet. Start again with:\n  {args.resume_command}")


def _finish(run: Run, wall_here: float, only=(CURVES, SUMMARY)) -> None:
    """curves.png, then summary.json (the mark of a finished run, so it comes last), and the
    closing line; `only` names which of the two files to write."""
    job, args, records, best = run.job, run.args, run.records, run.best
    run_dir, best_key = run.run_dir, job.best[0]
    final = records[-1] if records else {}
    wall = round(run.wall_before + wall_here, 1)
    summary = {f"final_{best_key}": final.get(best_key), f"best_{best_key}": best, "best_epoch": run.best_epoch}
    summary.update(
        epochs=args.epochs, wall_time_s=wall,
        images_per_s_last_epoch=final.get("images_per_s"), peak_gpu_mb=final.get("peak_gpu_mb"),
        device=device_description(run.device), processes=run.d.world, recipe=recipe(args),
    )
    if CURVES in only:
        curves.plot_curves(run_dir, records, job.curves)
        files.fault_point("curves_written")
    if SUMMARY in only:
        write_json_atomic(summary, run_dir / SUMMARY)
    unit = "%" if best_key.endswith("_acc") else ""
    value = final.get(best_key)
    shown = f"{value:.2f}{unit}" if isinstance(value, float) else str(value)
    best_shown = f"{best:.2f}{unit}" if isinstance(best, float) else str(best)
    print(f"done: {best_key} {shown} (best {best_shown} at epoch {run.best_epoch}) | "
          f"{final.get('images_per_s', 0):.0f} img/s | wall {format_duration(wall)} | "
          f"{run_dir / METRICS}, {run_dir / SUMMARY}, {run_dir / CURVES}", flush=True)
