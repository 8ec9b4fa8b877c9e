"""The MNIST loaders' checks (models/data.py): the shipped files against their SHA-256 sums,
damaged and inconsistent files refused at construction and before any training, each with a
message naming the file."""
import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

import tiny_run
from classifier_data import write_idx, write_tiny_mnist
from models import data

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "MNIST" / "raw"


def test_the_shipped_files_match_their_sums_and_are_the_default():
    listed = dict(reversed(line.split()) for line in (SHIPPED / "SHA256SUMS").read_text().splitlines())
    assert sorted(listed) == sorted(f"{stem}.gz" for stem in data.IDX_STEMS)
    for name, digest in listed.items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name
    assert Path(data.DEFAULT_DATA_DIR) / "MNIST" / "raw" == SHIPPED
    data.check_data_dir("mnist", data.DEFAULT_DATA_DIR, download=False)
    test = data.classification_dataset("mnist", data.DEFAULT_DATA_DIR, train=False)
    assert len(test) == 10000 and int(test.targets.max()) == 9


@pytest.fixture
def shipped_copy(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(SHIPPED, raw)
    return tmp_path, raw


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_shipped_file_is_named_before_training(shipped_copy, capsys, damage):
    root, raw = shipped_copy
    path = raw / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(path.read_bytes())
    if damage == "flipped":
        content[len(content) // 2] ^= 0x10
    else:
        content = content[:-100]
    path.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match=f"{path} is corrupt or truncated: its SHA-256 is [0-9a-f]{{64}}, "):
        data.check_data_dir("mnist", str(root), download=False)
    with pytest.raises(SystemExit) as exc:
        tiny_run.main(["--data-dir", str(root), "--out", str(root / "run")])
    assert exc.value.code == 2 and "is corrupt or truncated" in capsys.readouterr().err
    assert not (root / "run").exists()


def test_each_file_is_hashed_once_per_process(shipped_copy, monkeypatch):
    root, raw = shipped_copy
    calls = []
    real = data.sha256_of
    monkeypatch.setattr(data, "sha256_of", lambda p: (calls.append(Path(p).name), real(p))[1])
    data.check_data_dir("mnist", str(root), download=False)
    data.check_data_dir("mnist", str(root), download=False)
    assert sorted(calls) == sorted(f"{stem}.gz" for stem in data.IDX_STEMS)


def _tiny(tmp_path, gz=True):
    write_tiny_mnist(tmp_path, n_train=16, n_test=8, gz=gz)
    return tmp_path / "MNIST" / "raw"


def test_a_truncated_gzip_without_sums_is_named(tmp_path):
    raw = _tiny(tmp_path)
    path = raw / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(data.DataError, match=f"{path}"):
        data.check_data_dir("mnist", str(tmp_path), download=False)
    with pytest.raises(data.DataError, match=f"{path} is corrupt or truncated"):
        data.read_idx(path)


def test_image_and_label_counts_are_cross_checked(tmp_path):
    raw = _tiny(tmp_path)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(18, dtype=np.uint8), gz=True)
    message = "t10k-labels-idx1-ubyte.gz holds 18 labels but .*t10k-images-idx3-ubyte.gz holds 8 images"
    with pytest.raises(data.DataError, match=message):
        data.check_data_dir("mnist", str(tmp_path), download=False)
    with pytest.raises(data.DataError, match=message):
        data.MNIST(str(tmp_path), train=False)


def test_labels_out_of_range_and_wrong_image_sizes_are_refused(tmp_path):
    raw = _tiny(tmp_path)
    labels = np.zeros(16, dtype=np.uint8)
    labels[3] = 10
    write_idx(raw / "train-labels-idx1-ubyte", labels, gz=True)
    with pytest.raises(data.DataError, match=r"label 10 at index 3 is out of range \(expected 0..9\)"):
        data.MNIST(str(tmp_path), train=True)
    write_idx(raw / "train-labels-idx1-ubyte", labels % 10, gz=True)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((8, 27, 28), dtype=np.uint8), gz=True)
    with pytest.raises(data.DataError, match=r"expected images of shape \(N, 28, 28\), the header says \(8, 27, 28\)"):
        data.check_data_dir("mnist", str(tmp_path), download=False)


def test_a_plain_file_beside_its_gz_must_agree(tmp_path):
    raw = _tiny(tmp_path)
    gz = raw / "t10k-images-idx3-ubyte.gz"
    plain = raw / "t10k-images-idx3-ubyte"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    assert data.idx_path(raw, plain.name) == gz
    assert len(data.MNIST(str(tmp_path), train=False)) == 8  # the same data: fine
    content = bytearray(plain.read_bytes())
    content[-1] ^= 0xFF
    plain.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match=f"{plain} and {gz} hold different data"):
        data.MNIST(str(tmp_path), train=False)
    plain.write_bytes(bytes(content[:-28]))
    with pytest.raises(data.DataError, match=f"{plain} .* and {gz} .* differ"):
        data.check_data_dir("mnist", str(tmp_path), download=False)


def test_plain_files_alone_still_load(tmp_path):
    _tiny(tmp_path, gz=False)
    data.check_data_dir("mnist", str(tmp_path), download=False)
    assert len(data.MNIST(str(tmp_path), train=True)) == 16


def test_not_an_idx_file_is_named(tmp_path):
    raw = _tiny(tmp_path)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"hello world, no IDX here"))
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz: not an IDX file of unsigned bytes"):
        data.check_data_dir("mnist", str(tmp_path), download=False)


def test_a_malformed_sums_line_is_named(shipped_copy):
    root, raw = shipped_copy
    (raw / "SHA256SUMS").write_text("abc  t10k-images-idx3-ubyte.gz\n")
    with pytest.raises(data.DataError, match="SHA256SUMS, line 1: expected '<64 hex digits>  <file name>'"):
        data.check_data_dir("mnist", str(root), download=False)


@pytest.mark.parametrize("dataset,train,flips", [("cifar10", True, True), ("cifar10", False, False),
                                                 ("celeba", False, True), ("mnist", True, False)])
def test_vae_transforms_flip_where_fsvae_does(dataset, train, flips):
    steps = data.vae_transforms(dataset, train).transforms
    assert any(isinstance(t, data.transforms.RandomHorizontalFlip) for t in steps) == flips
