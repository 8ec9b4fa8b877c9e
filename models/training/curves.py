"""curves.png, from the records of metrics.jsonl: the entry point's panels (losses, accuracy, ...),
then each spiking layer's firing rate in training and on the test set, and each neuron layer's
tau and v_th (its mean, with the range shaded when per channel).

The x axis is the step when a run has fewer than STEP_AXIS_EPOCHS epochs (the step series
every epoch record holds, the test probes and the epoch-end evaluations), the epoch otherwise.
A panel with no line of two points or more is left out."""
import io
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .files import CURVES, write_bytes_atomic

STEP_AXIS_EPOCHS = 5

Line = Tuple[List[float], List[float], Optional[Tuple[List[float], List[float]]]]  # xs, ys, (lows, highs)


def _neuron_value(entry: Dict, attr: str):
    """(mean, range or None) of tau or v_th in a "neurons" entry (scalar or per channel)."""
    if attr in entry:
        return entry[attr], None
    if f"{attr}_mean" in entry:
        return entry[f"{attr}_mean"], (entry[f"{attr}_min"], entry[f"{attr}_max"])
    return None, None


def _lines(points: List[Tuple[float, Dict]], field: str, key: Optional[str] = None) -> Dict[str, Line]:
    """{label: line} from (x, record) pairs: record[field] itself when key is None and it is a
    number, else one line per layer of the dict record[field] (with key: tau or v_th)."""
    lines: Dict[str, list] = {}
    for x, r in points:
        value = r.get(field)
        if isinstance(value, (int, float)) and key is None:
            items = [(field, value, None)]
        elif isinstance(value, dict):
            items = []
            for layer, v in value.items():
                spread = None
                if key is not None:
                    v, spread = _neuron_value(v, key) if isinstance(v, dict) else (None, None)
                if isinstance(v, (int, float)):
                    items.append((layer, v, spread))
        else:
            continue
        for label, v, spread in items:
            xs, ys, lows, highs = lines.setdefault(label, ([], [], [], []))
            xs.append(x)
            ys.append(v)
            lows.append(spread[0] if spread else v)
            highs.append(spread[1] if spread else v)
    return {label: (xs, ys, (lows, highs) if lows != ys or highs != ys else None)
            for label, (xs, ys, lows, highs) in lines.items()}


def _panels(records: List[Dict], pairs: List) -> List:
    """(title, x label, {label: (xs, ys, range or None)}) per panel, in order: the entry point's
    (title, [metric keys]) pairs, then firing rates (training, test), tau and v_th."""
    by_step = len(records) < STEP_AXIS_EPOCHS and any(r.get("steps") for r in records)
    if by_step:
        every = [p["step"] for r in records for p in r.get("steps", [])]
        chunk = every[1] - every[0] if len(every) > 1 else 1
        xlabel, unit = "step", f"by step (chunks of {chunk} steps)"
        train = [(p["step"], p) for r in records for p in r.get("steps", [])]
        test = [(r.get("step", 0), r) for r in records]
        # The probes evaluate other images than the epoch's evaluation: lines of their own.
        probes = [(p["step"], p) for r in records for p in r.get("probes", [])]
        neurons = train
    else:
        xlabel, unit = "epoch", "by epoch"
        train = test = [(r["epoch"], r) for r in records]
        probes = []
        # Epoch records hold the entry point's "neurons"; else the epoch's last step point has them.
        neurons = [(r["epoch"], r if "neurons" in r else (r.get("steps") or [{}])[-1]) for r in records]
    probe_label = f" (probe: {probes[0][1].get('test_images', '?')} images)" if probes else ""

    def test_lines(field: str) -> Dict[str, Line]:
        lines = _lines(test, field)
        lines.update({label + probe_label: line for label, line in _lines(probes, field).items()})
        return lines

    panels = []
    for title, keys in pairs:
        lines = {}
        for k in keys:
            lines.update(_lines(train, k) if k.startswith("train_") else test_lines(k))
        panels.append((f"{title}, {unit}", xlabel, lines))
    train_rates = "firing_rate" if by_step else "train_firing_rate"
    panels.append((f"firing rate per layer (training), {unit}", xlabel, _lines(train, train_rates)))
    panels.append((f"firing rate per layer (test), {unit}", xlabel, test_lines("firing_rate")))
    for attr in ("tau", "v_th"):
        panels.append((f"{attr} per layer, {unit}", xlabel, _lines(neurons, "neurons", attr)))
    return [(title, xlabel, lines) for title, xlabel, lines in panels
            if any(len(xs) > 1 for xs, _, _ in lines.values())]


def plot_curves(run_dir: Path, records: List[Dict], pairs: Iterable) -> None:
    """curves.png in run_dir: the panels of _panels, three to a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(records, list(pairs))
    cols = max(1, min(3, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, xlabel, lines) in zip(axes.flat, panels):
        colors: Dict[str, str] = {}  # a quantity and its probe share a colour
        for label, (xs, ys, spread) in lines.items():
            base, _, probe = label.partition(" (probe")
            style = dict(linestyle="--", marker="o") if probe else dict(marker="D" if len(xs) == 1 else "o")
            if len(xs) > 30:
                style["marker"] = None
            (drawn,) = ax.plot(xs, ys, markersize=3 if len(xs) > 1 else 5, label=label, color=colors.get(base),
                               **style)
            colors.setdefault(base, drawn.get_color())
            if spread is not None:
                ax.fill_between(xs, spread[0], spread[1], color=drawn.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(buffer.getvalue(), Path(run_dir) / CURVES)
