"""curves.png: the entry point's per-epoch panels, the per-step training loss, and each layer's
firing rates, tau and v_th, from the records of metrics.jsonl."""
import io
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from .files import CURVES, write_bytes_atomic

STEP_LOSS_POINTS = 100  # per-step loss kept per epoch for curves.png (means over chunks of steps)


def step_curve(losses: List[torch.Tensor], first_step: int) -> List[List[float]]:
    """[[global step, mean loss over a chunk of steps]] with at most STEP_LOSS_POINTS points."""
    if not losses:
        return []
    values = torch.stack(losses).double().cpu()
    chunk = max(1, math.ceil(len(values) / STEP_LOSS_POINTS))
    return [[first_step + min(i + chunk, len(values)), round(values[i:i + chunk].mean().item(), 6)]
            for i in range(0, len(values), chunk)]


def _panels(records: List[Dict], pairs: List) -> List:
    """(title, x label, {label: (xs, ys)}) per panel: the entry point's per-epoch pairs, then what
    the records hold (per-step loss, per-layer firing rates, tau and v_th)."""
    epochs = [r["epoch"] for r in records]
    panels = [(title, "epoch", {k: (epochs, [r.get(k) for r in records]) for k in keys}) for title, keys in pairs]
    steps = [p for r in records for p in r.get("train_loss_steps", [])]
    if steps:
        panels.append(("training loss per step (chunk means)", "step",
                       {"train_loss": ([s for s, _ in steps], [v for _, v in steps])}))

    def per_layer(field: str, key: Optional[str] = None) -> Dict:
        lines: Dict[str, tuple] = {}
        for r in records:
            for layer, value in (r.get(field) or {}).items():
                if key is not None:
                    value = value.get(key, value.get(f"{key}_mean")) if isinstance(value, dict) else None
                if isinstance(value, (int, float)):
                    xs, ys = lines.setdefault(layer, ([], []))
                    xs.append(r["epoch"])
                    ys.append(value)
        return lines

    for title, field, key in (("firing rate per layer (test)", "firing_rate", None),
                              ("firing rate per layer (training)", "train_firing_rate", None),
                              ("tau per layer", "neurons", "tau"), ("v_th per layer", "neurons", "v_th")):
        lines = per_layer(field, key)
        if lines:
            panels.append((title, "epoch", lines))
    return panels


def plot_curves(run_dir: Path, records: List[Dict], pairs: Iterable) -> None:
    """curves.png: one panel per (title, [metric keys]) in `pairs` against epoch, then the
    per-step training loss and, where the records hold them, per-layer firing rates, tau and v_th."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(records, list(pairs))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, xlabel, lines) in zip(axes.flat, panels):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o" if xlabel == "epoch" else None, markersize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(buffer.getvalue(), Path(run_dir) / CURVES)
