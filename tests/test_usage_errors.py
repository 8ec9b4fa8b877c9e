"""Usage errors, not tracebacks, and nothing computed on empty data (issue 37, items 6, 9 and 10):
compare_vae resumes its runs through the trainers' recipe check and checks every option before
anything trains; empty IDX splits and a plain file that disagrees with its .gz are refused naming
the file; --test-subset and --num-samples below what a metric needs, checkpoints of another
trainer, unwritable --out paths and NaN weight decay are usage errors (exit status 2) saying what
was expected; a full disk leaves an evaluator's output file as it was (exit status 1)."""
import errno
import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier_data import write_idx, write_tiny_mnist
from models import compare_vae, data, evaluate_classifier, evaluate_vae, sample_vae, train_fad_ae, train_vae
from models.classifiers import table8_config
from models.training import load_checkpoint

COMPARE = ["--dataset", "mnist", "--epochs", "1", "--fad-epochs", "1", "--batch-size", "8", "--num-samples", "4",
           "--workers", "0", "--subset", "8", "--test-subset", "4"]


def with_option(argv, flag: str, value: str):
    """argv with `flag`'s value replaced."""
    i = argv.index(flag)
    return argv[:i + 1] + [value] + argv[i + 2:]


def usage_error(main, argv, capsys) -> str:
    """main(argv)'s usage error (exit status 2) on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2, exc.value.code
    return capsys.readouterr().err


def snapshot(root: Path):
    """Every file under root (hidden ones too): its size and SHA-256."""
    return {str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_tiny_mnist(root, n_train=16, n_test=8)
    return root


@pytest.fixture(scope="module")
def compared(data_dir, tmp_path_factory):
    """One compare_vae run (1 epoch on 8 images): its OUT, holding a train_vae and a train_fad_ae run."""
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    compare_vae.main(COMPARE + ["--data-dir", str(data_dir), "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def checkpoints(compared, tmp_path_factory):
    """A checkpoint of each kind: the VAE and FAD autoencoder of `compared`, a classifier's (its
    model_config and recipe, an empty state dict), a FAD autoencoder trained on another dataset,
    and a run of no trainer here."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = {"vae": compared / "fsvae_taid" / "checkpoint.pt", "fad": compared / "fad_ae" / "checkpoint.pt"}
    made = {"classifier": {"model_config": table8_config("mnist").to_dict(), "model": {},
                           "recipe": {"dataset": "mnist"}, "epoch": 1},
            "other": {"model_config": {"hidden": 16}, "model": {}, "recipe": {"dataset": "mnist"}, "epoch": 1}}
    fashion_fad = load_checkpoint(paths["fad"])
    fashion_fad["recipe"]["dataset"] = "fashion"
    made["fashion_fad"] = fashion_fad
    for name, ckpt in made.items():
        paths[name] = root / f"{name}.pt"
        torch.save(ckpt, paths[name])
    return {k: str(v) for k, v in paths.items()}


# ---- item 6: compare_vae ----------------------------------------------------------------------
def test_compare_vae_states_what_its_runs_hold(compared):
    table = (compared / "comparison.md").read_text()
    assert ("(1 epochs at batch 8 on 8 training images; FAD autoencoder 1 epochs; 4 samples against 4 test images)"
            in table)


def test_compare_vae_refuses_runs_of_another_recipe_before_training(compared, data_dir, capsys):
    before = snapshot(compared)
    err = usage_error(compare_vae.main,
                      with_option(COMPARE, "--subset", "16") + ["--data-dir", str(data_dir), "--out", str(compared)],
                      capsys)
    assert f"{compared / 'fad_ae'} was trained with other options (subset: the run has 8, this command 16)" in err
    assert "Nothing was trained" in err
    assert snapshot(compared) == before


def test_compare_vae_trains_its_runs_further_and_says_so(compared, data_dir, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(compared, out)
    table = compare_vae.main(with_option(COMPARE, "--epochs", "2") + ["--data-dir", str(data_dir), "--out", str(out)])
    assert "(2 epochs at batch 8 on 8 training images; FAD autoencoder 1 epochs;" in table
    for name in ("fsvae_taid", "fsvae_membrane", "ann_vae"):
        assert load_checkpoint(out / name / "checkpoint.pt")["epoch"] == 2


@pytest.mark.parametrize("extra,message", [
    (["--num-samples", "1"], "--num-samples must be >= 2 (FAD fits a Gaussian"),
    (["--inception-weights", "MISSING"], "--inception-weights MISSING does not exist"),
    (["--num-samples", "5", "--inception-weights", "WEIGHTS"], "--num-samples must be >= 10 (FAD fits a Gaussian"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--fad-epochs", "0"], "--fad-epochs must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--subset", "0"], "--subset must be >= 1, got 0"),
    (["--test-subset", "1"], "--test-subset must be >= 2 (FAD fits a Gaussian"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--amp", "fp32"], "argument --amp: invalid choice: 'fp32'"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda, got 'tpu'"),
    (["--amp", "bf16", "--device", "cpu"], "--amp bf16 needs a GPU"),
    (["--data-dir", "EMPTY"], "missing: MNIST/raw/train-images-idx3-ubyte"),
])
def test_compare_vae_checks_every_option_before_training(data_dir, tmp_path, capsys, extra, message):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "WEIGHTS").write_bytes(b"")
    extra = [str(tmp_path / a) if a in ("MISSING", "EMPTY", "WEIGHTS") else a for a in extra]
    message = message.replace("MISSING", str(tmp_path / "MISSING"))
    out = tmp_path / "cmp"
    err = usage_error(compare_vae.main, ["--dataset", "mnist", "--data-dir", str(data_dir), "--out", str(out),
                                         "--epochs", "1", "--fad-epochs", "1", *extra], capsys)
    assert message in err
    assert not out.exists()


def test_compare_vae_runs_its_commands_checks_before_training(tmp_path, capsys):
    """FashionMNIST's loader drops the last incomplete batch: train_vae refuses a subset smaller
    than a batch, and compare_vae says so before the FAD autoencoder (which would train) starts."""
    write_tiny_mnist(tmp_path / "data", n_train=16, n_test=8, folder="FashionMNIST")
    out = tmp_path / "cmp"
    err = usage_error(compare_vae.main, ["--dataset", "fashion", "--data-dir", str(tmp_path / "data"),
                                         "--out", str(out), "--epochs", "1", "--fad-epochs", "1",
                                         "--batch-size", "8", "--subset", "4"],
                      capsys)
    assert "--subset 4 gives each of the 1 process(es) less than one batch (--batch-size 8)" in err
    assert "(in the python -m models.train_vae command that compare_vae runs)" in err
    assert not out.exists()


def test_compare_vae_refuses_an_out_that_is_a_file(data_dir, tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    err = usage_error(compare_vae.main, ["--dataset", "mnist", "--data-dir", str(data_dir),
                                         "--out", str(tmp_path / "f")], capsys)
    assert f"--out {tmp_path / 'f'} exists and is not a directory" in err
    assert (tmp_path / "f").read_text() == "mine"


# ---- item 9: empty data sets, too few test images ---------------------------------------------
@pytest.mark.parametrize("split,kind", [("train", "training"), ("t10k", "test")])
def test_an_empty_split_is_refused_naming_the_file(tmp_path, capsys, split, kind):
    write_tiny_mnist(tmp_path, n_train=16, n_test=8)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((0, 28, 28), dtype=np.uint8), gz=True)
    write_idx(raw / f"{split}-labels-idx1-ubyte", np.zeros(0, dtype=np.uint8), gz=True)
    message = (f"{raw / f'{split}-images-idx3-ubyte.gz'} holds no images (its header says (0, 28, 28)): "
               f"an empty {kind} split")
    with pytest.raises(data.DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.check_data_dir("mnist", str(tmp_path), download=False)
    with pytest.raises(data.DataError, match="holds no images"):
        data.MNIST(str(tmp_path), train=split == "train")
    err = usage_error(train_fad_ae.main, ["--dataset", "mnist", "--data-dir", str(tmp_path),
                                          "--out", str(tmp_path / "r"), "--workers", "0"], capsys)
    assert message in err
    assert not (tmp_path / "r").exists()


def test_an_empty_test_split_is_refused_by_the_evaluators(checkpoints, tmp_path, capsys):
    write_tiny_mnist(tmp_path, n_train=16, n_test=8)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), dtype=np.uint8), gz=True)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(0, dtype=np.uint8), gz=True)
    for main, argv in [(evaluate_vae.main, ["--checkpoint", checkpoints["vae"], "--num-samples", "2"]),
                       (sample_vae.main, ["--checkpoint", checkpoints["vae"], "--out", str(tmp_path / "s")])]:
        err = usage_error(main, argv + ["--data-dir", str(tmp_path)], capsys)
        assert "t10k-images-idx3-ubyte.gz holds no images" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("subset,fad,message", [
    ("-5", False, "--test-subset must be >= 1, got -5"),
    ("0", False, "--test-subset must be >= 1, got 0"),
    ("1", True, "--test-subset must be >= 2 with --fad-ae: FAD and FID fit a Gaussian"),
])
def test_evaluate_vae_refuses_a_test_subset_its_metrics_cannot_use(checkpoints, data_dir, capsys, subset, fad, message):
    argv = ["--checkpoint", checkpoints["vae"], "--data-dir", str(data_dir), "--num-samples", "2",
            "--test-subset", subset]
    err = usage_error(evaluate_vae.main, argv + (["--fad-ae", checkpoints["fad"]] if fad else []), capsys)
    assert message in err


def test_evaluate_vae_on_one_test_image_without_fad(checkpoints, data_dir):
    report = evaluate_vae.main(["--checkpoint", checkpoints["vae"], "--data-dir", str(data_dir), "--num-samples", "2",
                                "--batch-size", "2", "--test-subset", "1"])
    assert report["test_images"] == 1 and report["recon_mse"] > 0 and report["fad"] is None


@pytest.mark.parametrize("main,argv,message", [
    (evaluate_vae.main, ["--num-samples", "9", "--inception-weights", "WEIGHTS"],
     "--num-samples must be >= 10 with --inception-weights (the Inception Score averages over 10 splits"),
    (evaluate_vae.main, ["--seed", str(2**70)], f"--seed must be in [0, 2**63), got {2**70}"),
    (sample_vae.main, ["--seed", "-1", "--out", "OUT"], "--seed must be in [0, 2**63), got -1"),
    (evaluate_classifier.main, ["--test-subset", "0"], "--test-subset must be >= 1, got 0"),
    (train_fad_ae.main, ["--dataset", "mnist", "--test-subset", "-5", "--out", "OUT"],
     "--test-subset must be >= 1, got -5"),
])
def test_evaluator_options_below_their_minimum(checkpoints, data_dir, tmp_path, capsys, main, argv, message):
    (tmp_path / "WEIGHTS").write_bytes(b"")
    argv = [str(tmp_path / a) if a in ("WEIGHTS", "OUT") else a for a in argv]
    if main is not train_fad_ae.main:
        argv += ["--checkpoint", checkpoints["vae"]]
    assert message in usage_error(main, argv + ["--data-dir", str(data_dir)], capsys)
    assert not (tmp_path / "OUT").exists()


# ---- item 10: usage errors, not tracebacks ----------------------------------------------------
@pytest.mark.parametrize("main,option,kind,message", [
    (evaluate_classifier.main, "--checkpoint", "vae", "is a train_vae checkpoint (a VAE); expected a train_classifier"),
    (evaluate_classifier.main, "--checkpoint", "fad", "is a train_fad_ae checkpoint (the FAD autoencoder); expected a "
                                                      "train_classifier"),
    (evaluate_classifier.main, "--checkpoint", "classifier", "does not fit this version's classifier"),
    (evaluate_vae.main, "--checkpoint", "classifier", "is a train_classifier checkpoint (a spiking classifier); "
                                                      "expected a train_vae checkpoint (a VAE)"),
    (evaluate_vae.main, "--checkpoint", "fad", "is a train_fad_ae checkpoint (the FAD autoencoder); expected a "
                                               "train_vae"),
    (evaluate_vae.main, "--checkpoint", "other", "is not a checkpoint of this project's VAE, classifier or FAD "
                                                 "trainers (its model_config holds ['hidden'])"),
    (evaluate_vae.main, "--fad-ae", "vae", "is a train_vae checkpoint (a VAE); expected a train_fad_ae checkpoint"),
    (evaluate_vae.main, "--fad-ae", "classifier", "is a train_classifier checkpoint (a spiking classifier); expected a "
                                                  "train_fad_ae"),
    (evaluate_vae.main, "--fad-ae", "fashion_fad", "is the FAD autoencoder of fashion, but --checkpoint's VAE was "
                                                   "trained on mnist"),
    (sample_vae.main, "--checkpoint", "classifier", "is a train_classifier checkpoint (a spiking classifier); "
                                                    "expected a train_vae"),
    (sample_vae.main, "--checkpoint", "fad", "is a train_fad_ae checkpoint (the FAD autoencoder); expected a "
                                             "train_vae"),
])
def test_a_checkpoint_of_another_trainer_is_named(checkpoints, data_dir, tmp_path, capsys, main, option, kind, message):
    argv = ["--data-dir", str(data_dir)]
    if main is sample_vae.main:
        argv += ["--out", str(tmp_path / "s")]
    if main is evaluate_vae.main:
        argv += ["--num-samples", "2"]
    argv += [option, checkpoints[kind]] + (["--checkpoint", checkpoints["vae"]] if option != "--checkpoint" else [])
    assert f"{option} {checkpoints[kind]} {message}" in usage_error(main, argv, capsys)
    assert not (tmp_path / "s").exists()


def test_inception_weights_that_are_not_a_state_dict_are_named(checkpoints, data_dir, tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"not a torch file")
    err = usage_error(evaluate_vae.main, ["--checkpoint", checkpoints["vae"], "--data-dir", str(data_dir),
                                          "--num-samples", "10", "--inception-weights", str(tmp_path / "w.pth")],
                      capsys)
    assert f"--inception-weights {tmp_path / 'w.pth'} could not be read as a state dict of tensors" in err


def test_a_plain_file_that_disagrees_with_its_gz_is_a_usage_error(checkpoints, tmp_path, capsys):
    write_tiny_mnist(tmp_path, n_train=16, n_test=8)
    raw = tmp_path / "MNIST" / "raw"
    gz, plain = raw / "train-images-idx3-ubyte.gz", raw / "train-images-idx3-ubyte"
    content = bytearray(gzip.decompress(gz.read_bytes()))
    content[100] ^= 0xFF
    plain.write_bytes(bytes(content))
    message = (f"{plain} and {gz} hold different data (from byte 100 of the uncompressed data on): the .gz is the one "
               f"read, so delete train-images-idx3-ubyte if the .gz is right")
    with pytest.raises(data.DataError) as exc:
        data.check_data_dir("mnist", str(tmp_path), download=False)
    assert message in str(exc.value)
    err = usage_error(train_fad_ae.main, ["--dataset", "mnist", "--data-dir", str(tmp_path),
                                          "--out", str(tmp_path / "r"), "--workers", "0"], capsys)
    assert message in err and not (tmp_path / "r").exists()
    err = usage_error(evaluate_vae.main, ["--checkpoint", checkpoints["vae"], "--data-dir", str(tmp_path),
                                          "--num-samples", "2"], capsys)
    assert message in err


@pytest.mark.parametrize("main", [evaluate_vae.main, evaluate_classifier.main])
@pytest.mark.parametrize("where,message", [("DIR", "is a directory; give a file name"),
                                           ("NOFOLDER/m.json", "the folder NOFOLDER does not exist")])
def test_an_evaluator_out_that_cannot_be_written_is_a_usage_error(checkpoints, data_dir, tmp_path, capsys, main,
                                                                  where, message):
    (tmp_path / "DIR").mkdir()
    out = tmp_path / where
    err = usage_error(main, ["--checkpoint", checkpoints["vae"], "--data-dir", str(data_dir), "--out", str(out)],
                      capsys)
    assert f"--out {out}" in err and message.replace("NOFOLDER", str(tmp_path / "NOFOLDER")) in err
    assert list((tmp_path / "DIR").iterdir()) == [] and not (tmp_path / "NOFOLDER").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_evaluator_out_in_a_read_only_folder_is_a_usage_error(checkpoints, data_dir, tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    err = usage_error(evaluate_vae.main, ["--checkpoint", checkpoints["vae"], "--data-dir", str(data_dir),
                                          "--out", str(tmp_path / "ro" / "m.json")], capsys)
    assert "cannot be written (permission denied)" in err


@pytest.mark.parametrize("where,message", [
    ("FILE", "--out FILE exists and is not a directory"),
    ("FILE/s", "--out FILE/s: FILE is not a directory, so FILE/s cannot be made"),
    ("HAS_DIR", "--out HAS_DIR: HAS_DIR/samples.png is a directory"),
])
def test_a_sample_vae_out_that_cannot_be_written_is_a_usage_error(checkpoints, tmp_path, capsys, where, message):
    (tmp_path / "FILE").write_text("mine")
    (tmp_path / "HAS_DIR" / "samples.png").mkdir(parents=True)
    err = usage_error(sample_vae.main, ["--checkpoint", checkpoints["vae"], "--out", str(tmp_path / where)], capsys)
    for name in ("HAS_DIR", "FILE"):
        message = message.replace(name, str(tmp_path / name))
    assert message in err
    assert (tmp_path / "FILE").read_text() == "mine" and sorted(os.listdir(tmp_path / "HAS_DIR")) == ["samples.png"]


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_train_fad_ae_refuses_a_weight_decay_adamw_cannot_use(data_dir, tmp_path, capsys, value):
    err = usage_error(train_fad_ae.main, ["--dataset", "mnist", "--data-dir", str(data_dir),
                                          "--out", str(tmp_path / "r"), "--weight-decay", value], capsys)
    assert f"--weight-decay must be a finite number >= 0, got {float(value)}" in err
    assert not (tmp_path / "r").exists()


def fill_disk_for(monkeypatch, name: str) -> None:
    """os.write raises ENOSPC (after writing 10 bytes) for the temporary file that replaces `name`."""
    real_write = os.write

    def write(fd, buffer):
        if f".{name}.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            real_write(fd, bytes(buffer)[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, buffer)

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_leaves_evaluate_vae_out_as_it_was(checkpoints, data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.json"
    out.write_text("the last report\n")
    fill_disk_for(monkeypatch, "m.json")
    with pytest.raises(SystemExit) as exc:
        evaluate_vae.main(["--checkpoint", checkpoints["vae"], "--data-dir", str(data_dir), "--num-samples", "2",
                           "--batch-size", "4", "--out", str(out)])
    assert exc.value.code != 0 and "no space left on device writing" in str(exc.value)
    assert "m.json was left as it was" in str(exc.value) and "the metrics are printed above" in str(exc.value)
    assert out.read_text() == "the last report\n" and sorted(os.listdir(tmp_path)) == ["m.json"]


def test_a_full_disk_leaves_sample_vae_files_as_they_were(checkpoints, tmp_path, monkeypatch):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "samples.pt").write_bytes(b"the last samples")
    fill_disk_for(monkeypatch, "samples.pt")
    with pytest.raises(SystemExit) as exc:
        sample_vae.main(["--checkpoint", checkpoints["vae"], "--out", str(tmp_path / "s"), "--num-samples", "2"])
    assert "no space left on device writing" in str(exc.value) and "samples.pt was left as it was" in str(exc.value)
    assert (tmp_path / "s" / "samples.pt").read_bytes() == b"the last samples"
    assert not [n for n in os.listdir(tmp_path / "s") if ".tmp-" in n]


def test_train_vae_exposes_its_checks_without_creating_anything(data_dir, tmp_path):
    args = train_vae.parse_args(["--dataset", "mnist", "--data-dir", str(data_dir), "--out", str(tmp_path / "r"),
                                 "--model", "ann", "--epochs", "2"])
    assert (args.epochs, args.batch_size, args.weight_decay, args.decoder) == (2, 250, 1e-2, "taid")
    assert not (tmp_path / "r").exists()
