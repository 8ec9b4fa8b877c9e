"""Tiny datasets in the on-disk formats the loaders read, written by the tests."""
import gzip
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """An IDX file of unsigned bytes (MNIST's format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_tiny_mnist(root: Path, n_train: int = 64, n_test: int = 32, folder: str = "MNIST", gz: bool = True,
                     seed: int = 0):
    """DIR/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]: images whose bright
    quadrant encodes the label, so a network can learn them; returns the labels."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    labels = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, size=n)
        x = rng.integers(0, 60, size=(n, 28, 28))
        for i, label in enumerate(y):
            r, c = divmod(int(label), 4)
            x[i, r * 7:(r + 1) * 7, c * 7:(c + 1) * 7] = 255
        write_idx(raw / f"{split}-images-idx3-ubyte", x, gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y, gz)
        labels[split] = y
    return labels
