"""What a run shows of itself (issue 36): every epoch record holds its step series (chunk means of
the loss and statistics, firing rates, tau / v_th), short runs evaluate a probe of the test set
inside the epoch without changing the training, curves.png plots steps for short runs and epochs
for long ones with no single-point panel, and the benchmark commands print their table only."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny_run
from classifier_data import write_tiny_mnist
from models import train_classifier
from models import training as tr
from test_runs import FAST, TIMING, data_dir, full, quick_curves, run  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
REAL_PLOT = tr.plot_curves


def test_every_epoch_record_holds_its_step_series_and_probes(data_dir, tmp_path):  # noqa: F811
    run(data_dir, tmp_path / "r", "--epochs", "2", "--probes", "2", "--probe-size", "4")
    records = tr.read_metrics(tmp_path / "r")
    assert [r["step"] for r in records] == [3, 6]  # 24 images in steps of 8
    for r, first in zip(records, (1, 4)):
        points = r["steps"]
        assert [p["step"] for p in points] == [first, first + 1, first + 2]  # 6 steps, 200 points: chunks of 1
        for p in points:
            assert set(p) == {"step", "train_loss", "train_acc", "firing_rate", "neurons"}
            assert 0 <= p["firing_rate"]["neuron"] <= 1 and 0 <= p["train_acc"] <= 100
            assert set(p["neurons"]["neuron"]) == {"tau", "v_th"}
        # Every chunk has 8 images: the epoch's means are the means of the chunks'.
        assert r["train_loss"] == pytest.approx(sum(p["train_loss"] for p in points) / 3, rel=1e-5)
        assert r["train_acc"] == pytest.approx(sum(p["train_acc"] for p in points) / 3, rel=1e-5)
        assert r["train_firing_rate"]["neuron"] == pytest.approx(
            sum(p["firing_rate"]["neuron"] for p in points) / 3, abs=2e-6)
        assert [p["step"] for p in r["probes"]] == [first, first + 1]  # evenly spaced inside the epoch
        for p in r["probes"]:
            assert set(p) == {"step", "test_images", "test_loss", "test_acc", "firing_rate"} and p["test_images"] == 4
            assert p["test_acc"] in (0, 25, 50, 75, 100)
    # The last point's tau is the one the entry point records at the epoch's end.
    assert records[-1]["steps"][-1]["neurons"]["neuron"]["tau"] == records[-1]["neurons"]["neuron"]["tau"]


def test_probes_change_nothing_in_the_training(data_dir, tmp_path, full):  # noqa: F811
    model = run(data_dir, tmp_path / "r", "--probes", "2", "--probe-size", "8")
    state, records = full
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    got = tr.read_metrics(tmp_path / "r")
    assert all(len(r["probes"]) == 2 for r in got) and not any("probes" in r for r in records)
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING | {"probes"}}  # noqa: E731
    assert [strip(r) for r in got] == [strip(r) for r in records]


@pytest.mark.parametrize("epochs,images,probes,expected", [
    (1, 6000, None, 4),    # the CPU main job: 4 x 256 images at half a training image's cost, 8.5 %
    (4, 60000, None, 4),
    (5, 60000, None, 0),   # long enough for an epoch axis
    (1, 24, None, 0),      # the probes would cost more than the training
    (1, 24, 3, 3),         # asked for
    (60, 60000, 0, 0),
])
def test_probes_are_on_for_short_runs_where_they_are_cheap(epochs, images, probes, expected):
    args = argparse.Namespace(epochs=epochs, probes=probes, probe_size=256)
    assert tr.loop._probes_per_epoch(args, images) == expected


def test_short_runs_plot_steps_and_long_ones_epochs(data_dir, tmp_path):  # noqa: F811
    run(data_dir, tmp_path / "r", "--epochs", "1", "--probes", "2", "--probe-size", "4")
    records = tr.read_metrics(tmp_path / "r")
    panels = tr.curves._panels(records, [("loss", ["train_loss", "test_loss"]),
                                         ("accuracy (%)", ["train_acc", "test_acc"])])
    titles = [title for title, _, _ in panels]
    assert titles == [f"{t}, by step (chunks of 1 steps)" for t in (
        "loss", "accuracy (%)", "firing rate per layer (training)", "firing rate per layer (test)", "tau per layer",
        "v_th per layer")]
    lines = dict((title.split(",")[0], lines) for title, _, lines in panels)
    assert lines["loss"]["train_loss"][0] == [1, 2, 3]
    # The probes (4 images) and the epoch's evaluation (all 8) are lines of their own.
    assert lines["loss"]["test_loss (probe: 4 images)"][0] == [1, 2] and lines["loss"]["test_loss"][0] == [3]
    assert lines["accuracy (%)"]["test_acc"][1] == [records[0]["test_acc"]]
    assert set(lines["firing rate per layer (test)"]) == {"neuron", "neuron (probe: 4 images)"}
    assert all(xlabel == "step" for _, xlabel, _ in panels)
    # Six epochs: the epoch axis, from the epoch records (the step series are not plotted).
    long = [dict(records[0], epoch=e, step=3 * e) for e in range(1, 7)]
    panels = tr.curves._panels(long, [("loss", ["train_loss", "test_loss"])])
    assert [(title, xlabel) for title, xlabel, _ in panels][0] == ("loss, by epoch", "epoch")
    assert dict(panels[0][2])["train_loss"][0] == [1, 2, 3, 4, 5, 6]
    # A panel whose lines have one point each is left out.
    one = [{"epoch": 1, "train_loss": 1.0, "test_loss": 2.0, "firing_rate": {"x": 0.5}}]
    assert tr.curves._panels(one, [("loss", ["train_loss", "test_loss"])]) == []


def test_per_channel_parameters_are_plotted_with_their_range():
    records = [{"epoch": 1, "step": 2, "steps": [
        {"step": s, "train_loss": 1.0, "neurons": {"n": {"tau_mean": 0.5 + s, "tau_min": 0.1, "tau_max": 0.9 + s,
                                                          "v_th": 1.0}}} for s in (1, 2)]}]
    panels = {title.split(",")[0]: lines for title, _, lines in tr.curves._panels(records, [])}
    xs, ys, spread = panels["tau per layer"]["n"]
    assert xs == [1, 2] and ys == [1.5, 2.5] and spread == ([0.1, 0.1], [1.9, 2.9])
    assert panels["v_th per layer"]["n"][2] is None  # scalar: no range


def test_the_main_jobs_picture_shows_every_quantity_over_steps(tmp_path, monkeypatch):
    """The main job's entry point (train_classifier, one epoch) on a small MNIST, with its probes:
    every panel of curves.png shows its quantities over steps (lines of more than one point), and
    the real figure is drawn."""
    monkeypatch.setattr(tr.curves, "plot_curves", REAL_PLOT)
    write_tiny_mnist(tmp_path / "data", n_train=32, n_test=16)
    out = tmp_path / "run"
    train_classifier.main(["--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                           "--epochs", "1", "--batch-size", "8", "--workers", "0", "--progress", "none",
                           "--no-augment", "--probes", "2", "--probe-size", "8"])
    records = tr.read_metrics(out)
    panels = tr.curves._panels(records, [("loss", ["train_loss", "test_loss"]),
                                         ("accuracy (%)", ["train_acc", "test_acc"])])
    assert len(panels) == 6
    for title, _, lines in panels:
        assert "by step" in title and lines
        # Every training line is a series; on the test side the probes are (the epoch's one evaluation is a dot).
        assert all(len(xs) > 1 for label, (xs, _, _) in lines.items()
                   if "test" not in title and not label.startswith("test_") or "probe" in label), title
    assert set(panels[2][2]) == {"features.0", "features.3", "classifier.3", "classifier.6"}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_steps_make_no_host_sync(data_dir, tmp_path, monkeypatch):  # noqa: F811
    """torch.cuda.set_sync_debug_mode("error") from the start of step 2 to the start of step 5 of
    the tiny run on the GPU (7 steps an epoch): the step series, the firing-rate counts and the
    training steps between make no host synchronisation."""
    write_tiny_mnist(tmp_path / "data", n_train=56, n_test=8)
    previous = torch.cuda.get_sync_debug_mode()

    def hook(step, net):
        torch.cuda.set_sync_debug_mode("error" if 1 <= step < 4 else previous)

    monkeypatch.setattr(tiny_run, "STEP_HOOK", hook)
    try:
        run(str(tmp_path / "data"), tmp_path / "r", "--device", "cuda", "--epochs", "1", "--probes", "0")
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert len(tr.read_metrics(tmp_path / "r")[0]["steps"]) == 7


def test_bench_output_is_the_header_and_the_table_only():
    """bench_alif on the CPU reads peak memory through PyTorch's profiler, whose C++ side prints
    "USDT: ... profiler_start" lines as it starts and stops: none reach the output."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_alif.py"), "--device", "cpu", "--T", "3",
                           "--N", "8", "--dtypes", "float32", "--reps", "1", "--providers", "alif_cuda", "reference",
                           "--no-save"], cwd=ROOT / "bench", capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    table = [i for i, line in enumerate(lines) if line.startswith("|")]
    assert len(table) >= 4 and table == list(range(table[0], table[-1] + 1))  # one block of rows
    assert lines[0].startswith("alif on CPU") and lines[table[-1] + 1:] == []
    # Between the header and the table: blank lines and one progress row per timing, nothing else.
    rows = [line for line in lines[1:table[0]] if line.strip()]
    assert len(rows) == len(table) - 2
    assert all(line.split()[0] in ("alif_cuda", "reference") and line.startswith("  ") for line in rows)
