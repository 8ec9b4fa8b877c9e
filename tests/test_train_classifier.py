"""The classifier recipe end to end on tiny data written by the test: outputs, exact resume,
argument checks, DDP on gloo, evaluation and the ablation table."""
import json
import os
import re
import socket
import zipfile

import pytest
import torch
import torch.multiprocessing as mp

from classifier_data import write_tiny_mnist
from models import ablation_classifier, evaluate_classifier, train_classifier
from models import training as tr

FAST = ["--dataset", "mnist", "--batch-size", "16", "--workers", "0", "--progress", "none", "--test-subset", "16"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_tiny_mnist(root, n_train=48, n_test=16)
    return str(root)


def run(data_dir, out, *extra):
    return train_classifier.main(FAST + ["--data-dir", data_dir, "--out", str(out), *extra])


def test_training_writes_metrics_checkpoint_summary_and_curves(data_dir, tmp_path):
    run(data_dir, tmp_path / "run", "--epochs", "2")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "images_per_s", "peak_gpu_mb", "neurons"):
            assert key in r
        assert set(r["neurons"]) == {"features.0", "features.3", "classifier.3", "classifier.6"}
        assert {"tau", "v_th"} <= set(r["neurons"]["features.0"])
        assert 0 <= r["test_acc"] <= 100 and r["images_per_s"] > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_test_acc"] == records[-1]["test_acc"]
    assert summary["best_test_acc"] == max(r["test_acc"] for r in records)
    assert summary["device"].startswith("CPU")
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng", "recipe", "records"} <= set(ckpt)
    assert ckpt["optimizer"] is None and ckpt["records"] == records  # a finished run keeps no Adam state


def test_resume_after_a_kill_mid_epoch_is_bitwise_exact(data_dir, tmp_path):
    full = run(data_dir, tmp_path / "full", "--epochs", "3")
    # 3 steps per epoch: die in the middle of epoch 2 (after 4 steps), then resume.
    with pytest.raises(SystemExit, match="halted after 4 steps"):
        run(data_dir, tmp_path / "cut", "--epochs", "3", "--halt-after-steps", "4")
    assert tr.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    resumed = run(data_dir, tmp_path / "cut", "--epochs", "3", "--resume")
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    full_lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut_lines = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in cut_lines] == [1, 2, 3]
    assert [r["test_loss"] for r in cut_lines] == [r["test_loss"] for r in full_lines]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--tau", "1.5"], r"--tau must be in \(0, 1\)"),
        (["--amp", "bf16", "--device", "cpu"], "--amp bf16 needs a GPU"),
        (["--subset", "0"], "--subset must be >= 1"),
        (["--log-every", "0"], "--log-every must be >= 1, got 0"),
    ],
)
def test_bad_arguments_fail_before_any_compute(data_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        run(data_dir, tmp_path / "bad", *extra)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()


def test_missing_data_and_reused_run_dir_are_explained(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_classifier.main(FAST + ["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert "missing: MNIST/raw/train-images-idx3-ubyte" in capsys.readouterr().err
    run(data_dir, tmp_path / "r", "--epochs", "1", "--subset", "16")
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path / "r", "--epochs", "1")
    assert "already holds files; pass --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path / "r", "--epochs", "2", "--subset", "16", "--resume", "--lr", "0.01")
    assert "lr: run has 0.001, now 0.01" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, data_dir, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = run(data_dir, out, "--epochs", "1", "--device", "cpu")
    torch.save(model.state_dict(), os.path.join(result_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_on_gloo_keeps_ranks_identical(data_dir, tmp_path):
    """Two CPU processes (as torchrun would start them): after training, identical weights."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), data_dir, str(tmp_path / "ddp"), str(tmp_path)), nprocs=2)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    start = train_classifier.SpikingClassifier(train_classifier.model_config(
        train_classifier.build_parser().parse_args(FAST + ["--data-dir", data_dir, "--out", "x"]))).state_dict()
    changed = False
    for name in a:
        assert torch.equal(a[name], b[name]), name
        changed |= not torch.equal(a[name], start[name])
    assert changed
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2


def test_evaluate_reports_accuracy_per_class_and_firing_rates(data_dir, tmp_path):
    run(data_dir, tmp_path / "run", "--epochs", "1")
    out = tmp_path / "eval.json"
    report = evaluate_classifier.main(["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--data-dir", data_dir,
                                       "--workers", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert len(report["per_class_acc"]) == 10 and 0 <= report["test_acc"] <= 100
    assert report["test_images"] == 16
    assert set(report["firing_rate"]) == {"features.0", "features.3", "classifier.3", "classifier.6"}
    assert all(0 <= r <= 1 for r in report["firing_rate"].values())
    # The training record's per-layer rates (same model, same 16 test images) agree with evaluation's.
    recorded = tr.read_metrics(tmp_path / "run")[-1]["firing_rate"]
    assert recorded == pytest.approx(report["firing_rate"], abs=1e-6)


def test_evaluate_refuses_damaged_checkpoints_and_bad_outputs_before_evaluating(data_dir, tmp_path, capsys):
    run(data_dir, tmp_path / "run", "--epochs", "1", "--subset", "16")
    good = tmp_path / "run" / "checkpoint.pt"
    content = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    content[info.header_offset + 30 + len(info.filename) + 64 + info.file_size // 2] ^= 0x01
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(content))
    args = ["--data-dir", data_dir, "--workers", "0", "--progress", "none"]
    with pytest.raises(SystemExit) as exc:
        evaluate_classifier.main(["--checkpoint", str(bad), *args])
    assert exc.value.code == 2 and f"{bad} is damaged: the CRC-32 of its record" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_classifier.main(["--checkpoint", str(good), "--out", str(tmp_path / "nowhere" / "r.json"), *args])
    captured = capsys.readouterr()
    assert "nowhere does not exist" in captured.err and "test_acc" not in captured.out


def test_ablation_runs_six_configurations_and_writes_a_table(data_dir, tmp_path, capsys):
    table = ablation_classifier.main(["--data-dir", data_dir, "--out", str(tmp_path / "abl"), "--epochs", "1",
                                      "--subset", "16", "--test-subset", "16", "--batch-size", "16", "--workers", "0"])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Learnable" not in line]
    assert len(rows) == 6
    assert (tmp_path / "abl" / "ablation.md").read_text().strip().endswith(rows[-1])
    assert {(r.split("|")[1].strip(), r.split("|")[2].strip(), r.split("|")[3].strip()) for r in rows} == {
        (learnable, t, v) for learnable in ("no", "yes") for t, v in (("0.25", "0.2"), ("0.5", "0.2"), ("0.5", "0.5"))
    }
    # Again with another recipe on the same --out: refused by the first run's recipe check, nothing changed.
    before = {p: p.read_bytes() for p in (tmp_path / "abl").rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        ablation_classifier.main(["--data-dir", data_dir, "--out", str(tmp_path / "abl"), "--epochs", "1",
                                  "--subset", "32", "--test-subset", "16", "--batch-size", "16", "--workers", "0"])
    assert exc.value.code == 2 and "subset: run has 16, now 32" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "abl").rglob("*") if p.is_file()} == before
