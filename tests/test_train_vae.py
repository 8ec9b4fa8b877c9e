"""The VAE recipes end to end on tiny MNIST files: training, exact resume, sampling, evaluation,
the FAD autoencoder and the three-model comparison; and one short learning run on the shipped
MNIST (the FSVAE learns, its eval-mode latent spikes, its samples vary)."""
import json
import re
from pathlib import Path

import matplotlib
import matplotlib.axes
import matplotlib.pyplot as plt
import pytest
import torch

from classifier_data import write_tiny_mnist
from models import compare_vae, evaluate_vae, sample_vae, train_fad_ae, train_vae
from models.data import image_dataset
from models.metrics import constant_samples
from models.training import FiringRateWarning

SHIPPED = str(Path(__file__).resolve().parents[1] / "data")

FAST = ["--dataset", "mnist", "--batch-size", "8", "--workers", "0", "--progress", "none", "--T", "4",
        "--subset", "16", "--test-subset", "8"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_tiny_mnist(root, n_train=16, n_test=8, gz=False)  # plain IDX files this time
    return str(root)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A two-epoch FSVAE+TAID run and a one-epoch FAD autoencoder."""
    root = tmp_path_factory.mktemp("runs")
    train_vae.main(FAST + ["--data-dir", data_dir, "--out", str(root / "vae"), "--epochs", "2"])
    fad_args = [a for a in FAST if a not in ("--T", "4")]
    train_fad_ae.main(fad_args + ["--data-dir", data_dir, "--out", str(root / "fad"), "--epochs", "1"])
    return root


def test_train_vae_writes_the_run_files(trained):
    records = [json.loads(line) for line in (trained / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_recon_loss", "train_latent_loss", "test_loss", "test_recon_loss", "images_per_s"):
        assert all(key in r for r in records), key
    summary = json.loads((trained / "vae" / "summary.json").read_text())
    assert summary["best_test_loss"] == min(r["test_loss"] for r in records)
    assert (trained / "vae" / "curves.png").is_file()


def test_train_vae_resumes_exactly(data_dir, tmp_path):
    args = FAST + ["--data-dir", data_dir, "--model", "fsvae", "--decoder", "membrane", "--epochs", "2"]
    full = train_vae.main(args + ["--out", str(tmp_path / "full")])
    with pytest.raises(SystemExit, match="halted after 3 steps"):
        train_vae.main(args + ["--out", str(tmp_path / "cut"), "--halt-after-steps", "3"])
    resumed = train_vae.main(args + ["--out", str(tmp_path / "cut"), "--resume"])
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "extra,message",
    [(["--model", "gan"], "invalid choice: 'gan'"), (["--T", "0"], "--T must be >= 1"),
     (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a GPU"),
     (["--weight-decay", "-1"], "--weight-decay must be >= 0")],
)
def test_train_vae_rejects_bad_arguments(data_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        train_vae.main(FAST + ["--data-dir", data_dir, "--out", str(tmp_path / "bad"), *extra])
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()


def test_train_vae_names_missing_celeba_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_vae.main(["--dataset", "celeba", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    assert "missing: celeba/list_eval_partition.txt" in capsys.readouterr().err


def test_sample_vae_writes_grids_and_images_in_range(trained, data_dir, tmp_path):
    out = sample_vae.main(["--checkpoint", str(trained / "vae" / "checkpoint.pt"), "--out", str(tmp_path / "s"),
                           "--num-samples", "5", "--data-dir", data_dir])
    images = torch.load(out / "samples.pt")
    assert images.shape == (5, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert (out / "samples.png").stat().st_size > 0 and (out / "reconstructions.png").stat().st_size > 0


def test_sample_grids_are_titled_with_the_model_and_epoch(monkeypatch, tmp_path):
    titles = []
    real_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, t, **kw: (titles.append(t), real_title(ax, t, **kw)))
    ckpt = {"model_config": {"model": "fsvae", "decoder": "taid"}, "epoch": 7}
    sample_vae.save_grid(torch.rand(6, 1, 8, 8) * 2 - 1, tmp_path / "g.png", f"{sample_vae.describe(ckpt)}: 6 samples")
    assert titles == ["FSVAE + taid decoding, epoch 7: 6 samples"]
    image = plt.imread(tmp_path / "g.png")
    assert image.ndim == 3 and image.std() > 0
    assert sample_vae.describe({"model_config": {"model": "ann"}, "epoch": 3}) == "ANN VAE, epoch 3"


def test_evaluate_vae_reports_mse_fad_and_what_it_could_not_compute(trained, data_dir, tmp_path):
    report = evaluate_vae.main(["--checkpoint", str(trained / "vae" / "checkpoint.pt"), "--data-dir", data_dir,
                                "--fad-ae", str(trained / "fad" / "checkpoint.pt"), "--num-samples", "12",
                                "--batch-size", "8", "--out", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == report
    assert report["recon_mse"] > 0 and report["fad"] >= 0 and report["test_images"] == 8
    assert report["is_mean"] is None and report["fid"] is None
    assert "--inception-weights" in report["not_computed"]["is"] and "fid" in report["not_computed"]
    assert report["fad_bn"] == "batch" and report["samples_constant"] is False and report["warnings"] == []
    no_fad = evaluate_vae.main(["--checkpoint", str(trained / "vae" / "checkpoint.pt"), "--data-dir", data_dir,
                                "--num-samples", "4", "--batch-size", "4"])
    assert no_fad["fad"] is None and "train_fad_ae" in no_fad["not_computed"]["fad"]


def test_compare_vae_writes_the_table_and_one_grid_per_model(data_dir, tmp_path):
    table = compare_vae.main(["--dataset", "mnist", "--data-dir", data_dir, "--out", str(tmp_path / "cmp"),
                              "--epochs", "1", "--fad-epochs", "1", "--batch-size", "8", "--num-samples", "8",
                              "--workers", "0", "--subset", "8", "--test-subset", "8"])
    rows = [line for line in table.splitlines() if line.startswith("| fsvae") or line.startswith("| ann")]
    assert [r.split("|")[1].strip() for r in rows] == ["fsvae_taid", "fsvae_membrane", "ann_vae"]
    assert "A smoke run" in table and all(r.split("|")[2].strip() in ("varied", "CONSTANT") for r in rows)
    for name in ("fsvae_taid", "fsvae_membrane", "ann_vae"):
        assert (tmp_path / "cmp" / f"{name}_samples.png").is_file()
    side_by_side = plt.imread(tmp_path / "cmp" / compare_vae.SIDE_BY_SIDE)
    assert side_by_side.shape[1] > 2 * side_by_side.shape[0]  # three grids in a row under one title
    assert (tmp_path / "cmp" / "comparison.md").read_text().strip() == table.strip()


def test_fsvae_cold_tdbn_statistics_give_constant_samples_and_evaluate_warns(data_dir, tmp_path, capsys):
    """The trap: with FSVAE's running-statistics rule (momentum 0.1 from mean 0, var 1) a briefly
    trained FSVAE is silent in eval mode, so every sample is the same image; evaluate_vae says so."""
    run = tmp_path / "cold"
    with pytest.warns(FiringRateWarning) as caught:
        train_vae.main(FAST + ["--data-dir", data_dir, "--out", str(run), "--epochs", "2", "--bn-stats", "fsvae"])
    assert any(re.match(r"epoch 2 \(test\): layer prior\.\S+ fired at 0\.00% of its neuron-steps \(silent",
                        str(w.message))
               for w in caught), [str(w.message) for w in caught]
    report = evaluate_vae.main(["--checkpoint", str(run / "checkpoint.pt"), "--data-dir", data_dir,
                                "--num-samples", "8", "--batch-size", "8"])
    assert report["samples_constant"] is True and "same image" in report["warnings"][0]
    assert "warning: all 8 generated samples are the same image" in capsys.readouterr().err


def test_ann_kld_weight_and_lr_follow_fsvae(data_dir, tmp_path):
    ann = train_vae.main(FAST + ["--data-dir", data_dir, "--out", str(tmp_path / "ann"), "--epochs", "1",
                                 "--model", "ann"])
    assert ann.cfg.kld_weight == pytest.approx(1 / 2)  # 1 / len(train loader): 16 images at batch 8
    ann_record = json.loads((tmp_path / "ann" / "metrics.jsonl").read_text().splitlines()[0])
    assert ann_record["lr"] == pytest.approx(1e-3)  # FSVAE's ANN code does not scale the learning rate
    train_vae.main(FAST + ["--data-dir", data_dir, "--out", str(tmp_path / "snn"), "--epochs", "1"])
    snn_record = json.loads((tmp_path / "snn" / "metrics.jsonl").read_text().splitlines()[0])
    assert snn_record["lr"] == pytest.approx(1e-3 * 8 / 250)  # FSVAE: lr * batch / 250


def test_budgets_and_model_defaults():
    parse = lambda *extra: train_vae.build_parser().parse_args(["--dataset", "mnist", "--out", "x", *extra])  # noqa: E731
    for extra, want in [((), (150, 250, 1e-3)), (("--budget", "paper"), (300, 200, 1e-3)),
                        (("--budget", "paper", "--epochs", "3"), (3, 200, 1e-3)),
                        (("--model", "ann"), (150, 250, 1e-2))]:
        args = parse(*extra)
        train_vae.resolve_budget(args)
        assert (args.epochs, args.batch_size, args.weight_decay) == want, extra
    args = parse("--budget", "paper")
    train_vae.resolve_budget(args)
    assert train_vae.effective_lr(args, world=1) == pytest.approx(1e-3 * 200 / 250)
    assert train_vae.effective_lr(args, world=2) == pytest.approx(1e-3 * 400 / 250)
    args.lr_scaling = "none"
    assert train_vae.effective_lr(args, world=1) == pytest.approx(1e-3)
    assert train_vae.batches_per_epoch(60000, 250, 1) == 240 and train_vae.batches_per_epoch(10, 4, 2) == 2
    assert train_vae.batches_per_epoch(60000, 256, 1) == 235 and train_vae.batches_per_epoch(60000, 256, 1, True) == 234


def test_fsvae_learns_on_real_mnist(tmp_path):
    """80 steps at batch 32, T=4, on the shipped MNIST (100 s of training on a shared 2-core machine): the
    reconstruction error falls clearly below that of the training set's mean image, the eval-mode
    posterior and prior spike, and the prior's samples are not all one image."""
    run = tmp_path / "learn"
    model = train_vae.main(["--dataset", "mnist", "--data-dir", SHIPPED, "--out", str(run), "--epochs", "1",
                            "--subset", "2560", "--test-subset", "256", "--batch-size", "32", "--T", "4",
                            "--lr", "2e-3", "--lr-scaling", "none", "--workers", "0", "--progress", "none"])
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    train = image_dataset("mnist", SHIPPED, train=True)
    mean_image = torch.stack([train[i][0] for i in range(2560)]).mean(0)
    test = torch.stack([image_dataset("mnist", SHIPPED, train=False)[i][0] for i in range(256)])
    baseline = (test - mean_image).square().mean().item()
    assert record["test_recon_loss"] < 0.9 * baseline, (record["test_recon_loss"], baseline)
    assert record["test_latent_loss"] > 0  # exactly 0 when posterior and prior are both silent
    rates = record["firing_rate"]
    for layer in ("posterior.2.2", "prior.2.2", "encoder.4.2", "decoder_input.2"):
        assert 0.01 < rates[layer] < 0.99, (layer, rates[layer])
    torch.manual_seed(0)
    samples = model.eval().sample(16)
    assert not constant_samples(samples) and samples.flatten(1).std(0).mean().item() > 0.05
