"""What a run watches as it goes: the firing rate of every spiking layer (training and evaluation
passes apart, with warnings for silent or saturated layers), per-step progress with the run's
ETA, and images per second."""
import sys
import time
from typing import Dict, List

import torch
from torch import nn


class FiringRateWarning(UserWarning):
    """A layer fired below 1% or above 99% of its neuron-steps over an epoch."""


class FiringMonitor:
    """Counts the output spikes of spiking layers ({name: module}), separately for training and
    evaluation passes, through forward hooks; the totals stay on the device (no sync per batch).

    ``rates(mode)`` returns {layer: spikes per neuron per time step} since the last ``clear()``.
    """

    MODES = ("train", "eval")

    def __init__(self, layers: Dict[str, nn.Module]):
        self.totals: Dict[str, Dict[str, List]] = {mode: {} for mode in self.MODES}
        self.paused = False  # while True, nothing is counted (fit's probe evaluations)
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name: str):
        def hook(module, inputs, spikes):
            if isinstance(spikes, torch.Tensor) and not self.paused:
                entry = self.totals["train" if module.training else "eval"].setdefault(name, [0.0, 0])
                entry[0] = entry[0] + spikes.detach().float().sum()
                entry[1] += spikes.numel()
        return hook

    def rates(self, mode: str = "train") -> Dict[str, float]:
        return {name: float(total) / max(count, 1) for name, (total, count) in self.totals[mode].items()}

    def clear(self) -> None:
        self.totals = {mode: {} for mode in self.MODES}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class StepSeries:
    """A run's training series in chunks of `every` steps: each chunk's mean loss and statistics,
    each spiking layer's firing rate over the chunk's training passes, and each neuron layer's
    tau / v_th at its end (mean, and min / max when per channel). Everything is accumulated on
    the device and an epoch's points are read in one transfer at its end: no host sync per step."""

    def __init__(self, every: int, monitor: FiringMonitor, layers: Dict[str, nn.Module]):
        self.every = every
        self.monitor = monitor
        self.neurons = {name: m for name, m in layers.items() if hasattr(m, "tau") and hasattr(m, "v_th")}
        self.start_epoch()

    def start_epoch(self) -> None:
        """Call after the monitor is cleared for the epoch."""
        self.pending: List = []
        self.sums: Dict[str, torch.Tensor] = {}
        self.samples = self.steps = 0
        self.spikes_before: Dict[str, tuple] = {}

    def add(self, sums: Dict[str, torch.Tensor], samples: int, global_step: int, last_in_epoch: bool) -> None:
        """One training step: {name: sum over its samples}, how many samples, the run's step count
        after it."""
        for key, value in sums.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().double()
        self.samples += samples
        self.steps += 1
        if self.steps == self.every or last_in_epoch:
            self._close_chunk(global_step)

    def _close_chunk(self, global_step: int) -> None:
        values = {("train_loss" if k == "loss" else f"train_{k}"): v / max(self.samples, 1)
                  for k, v in self.sums.items()}
        rates = {}
        for name, (total, count) in self.monitor.totals["train"].items():
            total_before, count_before = self.spikes_before.get(name, (0.0, 0))
            if count > count_before:
                rates[name] = (total - total_before) / (count - count_before)
            self.spikes_before[name] = (total, count)
        neurons = {}
        with torch.no_grad():
            for name, m in self.neurons.items():
                for attr in ("tau", "v_th"):
                    t = getattr(m, attr).detach().double()
                    neurons[(name, attr)] = torch.stack([t.mean(), t.min(), t.max()]) if t.numel() > 1 else t.reshape(1)
        self.pending.append((global_step, values, rates, neurons))
        self.sums, self.samples, self.steps = {}, 0, 0

    def take(self) -> List[Dict]:
        """The epoch's points, [{"step", "train_loss", "train_<stat>", "firing_rate": {layer},
        "neurons": {layer: {"tau", "v_th"}, or per channel "tau_mean", "tau_min", "tau_max", ...}}],
        read in one transfer."""
        tensors = [torch.as_tensor(v).double().reshape(-1) for _, values, rates, neurons in self.pending
                   for v in (*values.values(), *rates.values(), *neurons.values())]
        flat = iter(torch.cat(tensors).cpu().tolist()) if tensors else iter(())
        points = []
        for step, values, rates, neurons in self.pending:
            point = {"step": step, **{k: round(next(flat), 6) for k in values}}
            if rates:
                point["firing_rate"] = {name: round(next(flat), 6) for name in rates}
            layers: Dict[str, Dict[str, float]] = {}
            for (name, attr), t in neurons.items():
                got = [round(next(flat), 6) for _ in range(t.numel())]
                entry = layers.setdefault(name, {})
                if len(got) == 1:
                    entry[attr] = got[0]
                else:
                    entry.update({f"{attr}_mean": got[0], f"{attr}_min": got[1], f"{attr}_max": got[2]})
            if layers:
                point["neurons"] = layers
            points.append(point)
        self.pending = []
        return points


def firing_warnings(rates: Dict[str, float], low: float = 0.01, high: float = 0.99) -> List[str]:
    """A sentence for each layer whose firing rate is below `low` or above `high`: a silent or
    saturated layer passes (almost) no information and its surrogate gradient is (almost) zero."""
    out = []
    for name, rate in rates.items():
        if rate < low or rate > high:
            kind = "silent" if rate < low else "saturated"
            out.append(f"layer {name} fired at {100 * rate:.2f}% of its neuron-steps ({kind}: outside "
                       f"{100 * low:g}%..{100 * high:g}%); the network has likely stopped learning there")
    return out


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Per-step progress: a tqdm bar per epoch, or plain lines every `every` steps; both show the
    epoch's and the whole run's estimated time left (from the mean step time so far in this
    process, plus the last evaluation's time per remaining epoch)."""

    def __init__(self, mode: str, every: int, epochs: int, start_epoch: int, steps_per_epoch: int, enabled: bool):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if enabled else "none"
        self.every, self.epochs, self.steps = every, epochs, steps_per_epoch
        self.steps_left_total = (epochs - start_epoch) * steps_per_epoch
        self.step_time, self.steps_timed, self.eval_time = 0.0, 0, 0.0
        self.bar = None

    def start_epoch(self, epoch: int, loader):
        self.epoch = epoch
        self.t0 = time.perf_counter()
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", dynamic_ncols=True)
            return self.bar
        return loader

    def eta(self, step: int):
        """(epoch seconds left, run seconds left) after `step` + 1 steps of this epoch."""
        per_step = (self.step_time + time.perf_counter() - self.t0) / max(self.steps_timed + step + 1, 1)
        epoch_left = per_step * (self.steps - step - 1)
        run_steps_left = self.steps_left_total - step - 1
        epochs_left = self.epochs - self.epoch
        return epoch_left, per_step * run_steps_left + self.eval_time * epochs_left

    def due(self, step: int) -> bool:
        return self.mode != "none" and (step % self.every == 0 or step + 1 == self.steps)

    def show(self, step: int, loss: torch.Tensor, images_per_s: float) -> None:
        epoch_left, run_left = self.eta(step)
        if self.mode == "bar":
            self.bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{images_per_s:.0f}",
                                 run_eta=format_duration(run_left), refresh=False)
        else:
            print(f"epoch {self.epoch + 1}/{self.epochs} step {step + 1}/{self.steps} | loss {loss.item():.4f} | "
                  f"{images_per_s:.0f} img/s | epoch ETA {format_duration(epoch_left)} | "
                  f"run ETA {format_duration(run_left)}", flush=True)

    def end_epoch(self, steps_done: int) -> None:
        self.close()
        self.step_time += time.perf_counter() - self.t0
        self.steps_timed += steps_done
        self.steps_left_total -= steps_done

    def evaluated(self, seconds: float) -> None:
        self.eval_time = seconds

    def close(self) -> None:
        """Ends an open bar, so that a message after an interruption starts on its own line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
