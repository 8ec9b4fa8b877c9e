"""Datasets for the paper's models, through torchvision's dataset classes, from a --data-dir in
torchvision's on-disk layout: DIR/MNIST/raw, DIR/FashionMNIST/raw (IDX files, plain or gzipped),
DIR/cifar-10-batches-py, DIR/celeba. The default --data-dir is this checkout's data/, which ships
MNIST with its SHA-256 sums (data/MNIST/raw/SHA256SUMS). Nothing is downloaded unless asked (and a
network exists).

Every MNIST-style folder is checked before any training starts and again when its dataset is
built: the files listed in a SHA256SUMS beside them match their sums (once per process), gzip
files are complete, neither split is empty, image and label counts agree, labels lie in 0..9, and
a plain file beside its .gz holds the same data (compared once per process). A failure raises
DataError naming the file."""
import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import torch
from torchvision import datasets, transforms

IDX_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
SUMS_FILE = "SHA256SUMS"
DEFAULT_DATA_DIR = str(Path(__file__).resolve().parent.parent / "data")
CLASSES = 10


class DataError(ValueError):
    """A dataset file that is damaged or inconsistent; the message names it."""


def _restore_hint(path: Path) -> str:
    if Path(path).resolve().is_relative_to(Path(DEFAULT_DATA_DIR)):
        return "restore the shipped copy with `git checkout -- data/`"
    return "replace it with a good copy"


_verified: Dict[Tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksums(folder: Path) -> None:
    """Checks each file that `folder`/SHA256SUMS lists and that is present (lines of
    "<sha256>  <name>", as sha256sum writes them). A file is hashed once per process unless it
    changes."""
    folder = Path(folder)
    sums = folder / SUMS_FILE
    if not sums.is_file():
        return
    for n, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{sums}, line {n}: expected '<64 hex digits>  <file name>', got {line!r}")
        expected, name = parts[0].lower(), parts[1].lstrip("*")
        path = folder / name
        if not path.is_file():
            continue
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if _verified.get(key) == expected:
            continue
        actual = sha256_of(path)
        if actual != expected:
            raise DataError(
                f"{path} is corrupt or truncated: its SHA-256 is {actual}, {sums} says {expected} "
                f"({st.st_size} bytes on disk); {_restore_hint(path)}"
            )
        _verified[key] = expected


def _gzip_size(path: Path) -> int:
    """The uncompressed size a gzip file's trailer records (mod 2**32)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:
            raise DataError(f"{path} is truncated: {f.tell()} bytes is too short for a gzip file; "
                            f"{_restore_hint(path)}")
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _read_bytes(path: Path, limit: Optional[int] = None) -> bytes:
    """The file's bytes (decompressed for .gz), or its first `limit` of them."""
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path} is corrupt or truncated (gzip: {e}); {_restore_hint(path)}") from None


def _idx_header(data: bytes, path: Path) -> List[int]:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()}, expected 00000801..03)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    return [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]


def read_idx(path: str) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format), plain or gzipped, as a uint8 tensor."""
    data = _read_bytes(Path(path))
    dims = _idx_header(data, Path(path))
    offset = 4 + 4 * len(dims)
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes) but the file holds {len(data) - offset}: "
                        f"truncated or corrupt; {_restore_hint(Path(path))}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy())


_matching: Set[Tuple] = set()


def _first_difference(plain: Path, gz: Path) -> Optional[int]:
    """The first byte offset at which `plain` and the decompressed `gz` differ (None when they are
    the same), read in blocks."""
    offset = 0
    try:
        with open(plain, "rb") as a, gzip.open(gz, "rb") as b:
            while True:
                x, y = a.read(1 << 20), b.read(1 << 20)
                if x != y:
                    return offset + next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
                if not x:
                    return None
                offset += len(x)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{gz} is corrupt or truncated (gzip: {e}); {_restore_hint(gz)}") from None


def _plain_and_gz_differ(plain: Path, gz: Path, at: int) -> DataError:
    return DataError(f"{plain} and {gz} hold different data (from byte {at} of the uncompressed data on): the .gz "
                     f"is the one read, so delete {plain.name} if the .gz is right (a SHA256SUMS beside it lists "
                     f"the sums it must have), or delete {gz.name} if the plain file is")


def check_plain_beside_gz(raw_folder, stem: str) -> None:
    """Raises DataError when `stem` and `stem`.gz are both in `raw_folder` and hold different
    data. Compared once per process unless either file changes (the dataset compares them again
    when it reads them, as a file rewritten within one clock tick keeps its size and times)."""
    plain, gz = Path(raw_folder) / stem, Path(raw_folder) / (stem + ".gz")
    if not (plain.is_file() and gz.is_file()):
        return
    key = tuple((str(f.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                for f, st in ((plain, plain.stat()), (gz, gz.stat())))
    if key in _matching:
        return
    at = _first_difference(plain, gz)
    if at is not None:
        raise _plain_and_gz_differ(plain, gz, at)
    _matching.add(key)


def idx_path(raw_folder, stem: str) -> Optional[Path]:
    """The file holding `stem` in `raw_folder`: the .gz or the plain file. When both are there they
    must hold the same data (sizes compared here, contents by check_plain_beside_gz and when the
    dataset reads them); the .gz, the one SHA256SUMS can vouch for, is read."""
    plain, gz = Path(raw_folder) / stem, Path(raw_folder) / (stem + ".gz")
    if plain.is_file() and gz.is_file():
        size = plain.stat().st_size
        if size % 2**32 != _gzip_size(gz):
            raise DataError(f"{plain} ({size} bytes) and {gz} (holding {_gzip_size(gz)} bytes, mod 2**32) differ; "
                            f"delete the one that is wrong (the .gz is read when both agree)")
        return gz
    if gz.is_file():
        return gz
    if plain.is_file():
        return plain
    return None


def check_idx_split(raw_folder, split: str, images: torch.Tensor = None, labels: torch.Tensor = None) -> None:
    """Cross-checks one split's images and labels (from the files' headers and the labels, or from
    the tensors read): at least one image, one label per image, 28x28 images, labels in 0..9."""
    image_file = idx_path(raw_folder, f"{split}-images-idx3-ubyte")
    label_file = idx_path(raw_folder, f"{split}-labels-idx1-ubyte")
    if images is None:
        image_dims = _idx_header(_read_bytes(image_file, 16), image_file)
        if str(image_file).endswith(".gz") and (16 + int(np.prod(image_dims))) % 2**32 != _gzip_size(image_file):
            raise DataError(f"{image_file}: header says {image_dims} ({16 + int(np.prod(image_dims))} bytes) but the "
                            f"gzip trailer records {_gzip_size(image_file)} bytes: truncated or corrupt; "
                            f"{_restore_hint(image_file)}")
        labels = read_idx(label_file)
    else:
        image_dims = list(images.shape)
    if len(image_dims) != 3 or image_dims[1:] != [28, 28]:
        raise DataError(f"{image_file}: expected images of shape (N, 28, 28), the header says {tuple(image_dims)}")
    if image_dims[0] == 0:
        kind, use = ("training", "trained on") if split == "train" else ("test", "evaluated on")
        raise DataError(f"{image_file} holds no images (its header says {tuple(image_dims)}): an empty {kind} "
                        f"split cannot be {use}; {_restore_hint(image_file)}")
    if labels.dim() != 1:
        raise DataError(f"{label_file}: expected a 1-d label file, the header says {tuple(labels.shape)}")
    if labels.numel() != image_dims[0]:
        raise DataError(f"{label_file} holds {labels.numel()} labels but {image_file} holds {image_dims[0]} images; "
                        f"the two files must come from the same split")
    if labels.numel() and int(labels.max()) >= CLASSES:
        bad = int((labels >= CLASSES).nonzero()[0])
        raise DataError(f"{label_file}: label {int(labels[bad])} at index {bad} is out of range "
                        f"(expected 0..{CLASSES - 1})")


class _IDXFolder:
    """torchvision's MNIST-style dataset reading its raw IDX files plain or gzipped (torchvision
    itself wants them unpacked, and a read-only copy cannot be unpacked in place), checked as the
    module docstring says."""

    def _check_exists(self) -> bool:
        return all(idx_path(self.raw_folder, stem) for stem in IDX_STEMS)

    def _read(self, stem: str) -> torch.Tensor:
        path = idx_path(self.raw_folder, stem)
        data = read_idx(path)
        plain = Path(self.raw_folder) / stem
        if str(path).endswith(".gz") and plain.is_file() and not torch.equal(read_idx(plain), data):
            raise _plain_and_gz_differ(plain, path, _first_difference(plain, path))
        return data

    def _load_data(self):
        verify_checksums(Path(self.raw_folder))
        split = "train" if self.train else "t10k"
        images = self._read(f"{split}-images-idx3-ubyte")
        labels = self._read(f"{split}-labels-idx1-ubyte").long()
        check_idx_split(self.raw_folder, split, images, labels)
        return images, labels


class MNIST(_IDXFolder, datasets.MNIST):
    pass


class FashionMNIST(_IDXFolder, datasets.FashionMNIST):
    pass


# Per dataset: the torchvision class, normalisation, the training augmentation PLIF used, and
# the files that must be present (relative to --data-dir).
NORMALIZE = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}


def required_files(dataset: str) -> List[List[str]]:
    """Per needed file, the acceptable paths relative to the data dir (any one will do)."""
    if dataset in ("mnist", "fashion"):
        folder = "MNIST" if dataset == "mnist" else "FashionMNIST"
        return [[f"{folder}/raw/{stem}", f"{folder}/raw/{stem}.gz"] for stem in IDX_STEMS]
    if dataset == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        return [[f"cifar-10-batches-py/{n}"] for n in names]
    raise ValueError(f"unknown dataset {dataset!r}")


def check_data_dir(dataset: str, data_dir: str, download: bool) -> None:
    """Raises FileNotFoundError, naming every missing file, unless `download` will fetch them; for
    MNIST and FashionMNIST also checks the files that are there (DataError, see the module
    docstring), reading the headers and labels, and the whole of a plain file beside its .gz."""
    root = Path(data_dir)
    missing = [alts[0] for alts in required_files(dataset) if not any((root / a).is_file() for a in alts)]
    if missing and not download:
        raise FileNotFoundError(
            f"--data-dir {data_dir} does not hold the {dataset} files torchvision's layout needs; "
            f"missing: {', '.join(missing)} (IDX files may be gzipped). Point --data-dir at the folder "
            f"that contains them, or pass --download where a network is available."
        )
    if dataset in ("mnist", "fashion") and not missing:
        raw = root / ("MNIST" if dataset == "mnist" else "FashionMNIST") / "raw"
        verify_checksums(raw)
        for split in ("train", "t10k"):
            check_idx_split(raw, split)
        for stem in IDX_STEMS:
            check_plain_beside_gz(raw, stem)


def classifier_transforms(dataset: str, train: bool) -> Callable:
    mean, std = NORMALIZE[dataset]
    steps = []
    if train and dataset == "mnist":
        steps.append(transforms.RandomAffine(degrees=30, translate=(0.15, 0.15), scale=(0.85, 1.11)))
    elif train and dataset == "cifar10":
        steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def classification_dataset(dataset: str, data_dir: str, train: bool, download: bool = False, transform=None):
    """The train or test split with the classifier's transforms (or `transform`)."""
    check_data_dir(dataset, data_dir, download)
    cls: Dict[str, type] = {"mnist": MNIST, "fashion": FashionMNIST, "cifar10": datasets.CIFAR10}
    tf = transform if transform is not None else classifier_transforms(dataset, train)
    return cls[dataset](data_dir, train=train, transform=tf, download=download)


CELEBA_FILES = ["list_eval_partition.txt", "identity_CelebA.txt", "list_attr_celeba.txt", "list_bbox_celeba.txt",
                "list_landmarks_align_celeba.txt"]


def required_image_files(dataset: str) -> List[List[str]]:
    """required_files() plus CelebA (DIR/celeba/img_align_celeba and torchvision's list files)."""
    if dataset == "celeba":
        return [[f"celeba/{n}"] for n in CELEBA_FILES]
    return required_files(dataset)


def check_image_data_dir(dataset: str, data_dir: str, download: bool) -> None:
    root = Path(data_dir)
    missing = [alts[0] for alts in required_image_files(dataset) if not any((root / a).is_file() for a in alts)]
    if dataset == "celeba" and not (root / "celeba" / "img_align_celeba").is_dir():
        missing.append("celeba/img_align_celeba/")
    if missing and not download:
        raise FileNotFoundError(
            f"--data-dir {data_dir} does not hold the {dataset} files torchvision's layout needs; "
            f"missing: {', '.join(missing)}. Point --data-dir at the folder that contains them, or pass "
            f"--download where a network is available."
        )
    if dataset != "celeba":
        check_data_dir(dataset, data_dir, download)


def vae_transforms(dataset: str, train: bool = False) -> Callable:
    """FSVAE's preprocessing: 32x32 (MNIST, FashionMNIST, CIFAR-10) or center crop 148 and 64x64
    (CelebA), scaled to [-1, 1]; FSVAE's loaders also flip horizontally at random for CIFAR-10's
    training split and for both CelebA splits."""
    channels = 3 if dataset in ("cifar10", "celeba") else 1
    steps = [transforms.CenterCrop(148), transforms.Resize(64)] if dataset == "celeba" else [transforms.Resize(32)]
    if dataset == "celeba" or (dataset == "cifar10" and train):
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize((0.5,) * channels, (0.5,) * channels)]
    return transforms.Compose(steps)


def image_dataset(dataset: str, data_dir: str, train: bool, download: bool = False):
    """(image in [-1, 1], label) pairs for the generative models."""
    check_image_data_dir(dataset, data_dir, download)
    if dataset == "celeba":
        return datasets.CelebA(data_dir, split="train" if train else "test", target_type="identity",
                               transform=vae_transforms(dataset, train), download=download)
    return classification_dataset(dataset, data_dir, train, download, transform=vae_transforms(dataset, train))
