"""The VAE recipes end to end on tiny MNIST files: training, exact resume, sampling, evaluation,
the FAD autoencoder and the three-model comparison."""
import json
import re

import pytest
import torch

from classifier_data import write_tiny_mnist
from models import compare_vae, evaluate_vae, sample_vae, train_fad_ae, train_vae

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
    records = [json.loads(l) for l in (trained / "vae" / "metrics.jsonl").read_text().splitlines()]
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
     (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a GPU"), (["--weight-decay", "-1"], "--weight-decay must be >= 0")],
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


def test_evaluate_vae_reports_mse_fad_and_what_it_could_not_compute(trained, data_dir, tmp_path):
    report = evaluate_vae.main(["--checkpoint", str(trained / "vae" / "checkpoint.pt"), "--data-dir", data_dir,
                                "--fad-ae", str(trained / "fad" / "checkpoint.pt"), "--num-samples", "12",
                                "--batch-size", "8", "--out", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == report
    assert report["recon_mse"] > 0 and report["fad"] >= 0 and report["test_images"] == 8
    assert report["is_mean"] is None and report["fid"] is None
    assert "--inception-weights" in report["not_computed"]["is"] and "fid" in report["not_computed"]
    no_fad = evaluate_vae.main(["--checkpoint", str(trained / "vae" / "checkpoint.pt"), "--data-dir", data_dir,
                                "--num-samples", "4", "--batch-size", "4"])
    assert no_fad["fad"] is None and "train_fad_ae" in no_fad["not_computed"]["fad"]


def test_compare_vae_writes_the_table_and_one_grid_per_model(data_dir, tmp_path):
    table = compare_vae.main(["--dataset", "mnist", "--data-dir", data_dir, "--out", str(tmp_path / "cmp"), "--epochs", "1",
                              "--fad-epochs", "1", "--batch-size", "8", "--num-samples", "8", "--workers", "0",
                              "--subset", "8", "--test-subset", "8"])
    rows = [l for l in table.splitlines() if l.startswith("| fsvae") or l.startswith("| ann")]
    assert [r.split("|")[1].strip() for r in rows] == ["fsvae_taid", "fsvae_membrane", "ann_vae"]
    for name in ("fsvae_taid", "fsvae_membrane", "ann_vae"):
        assert (tmp_path / "cmp" / f"{name}_samples.png").is_file()
    assert (tmp_path / "cmp" / "comparison.md").read_text().strip() == table.strip()
