"""Datasets for the paper's models, through torchvision's dataset classes, from a --data-dir in
torchvision's on-disk layout: DIR/MNIST/raw, DIR/FashionMNIST/raw (IDX files, plain or gzipped),
DIR/cifar-10-batches-py, DIR/celeba. Nothing is downloaded unless asked (and a network exists)."""
import gzip
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torchvision import datasets, transforms

IDX_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def read_idx(path: str) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format), plain or gzipped, as a uint8 tensor."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but the file holds {len(data) - offset}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy())


class _IDXFolder:
    """torchvision's MNIST-style dataset reading its raw IDX files plain or gzipped (torchvision
    itself wants them unpacked, and a read-only copy cannot be unpacked in place)."""

    def _idx_path(self, stem: str) -> Optional[str]:
        for name in (stem, stem + ".gz"):
            path = os.path.join(self.raw_folder, name)
            if os.path.isfile(path):
                return path
        return None

    def _check_exists(self) -> bool:
        return all(self._idx_path(stem) for stem in IDX_STEMS)

    def _load_data(self):
        split = "train" if self.train else "t10k"
        images = read_idx(self._idx_path(f"{split}-images-idx3-ubyte"))
        labels = read_idx(self._idx_path(f"{split}-labels-idx1-ubyte")).long()
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
    """Raises FileNotFoundError, naming every missing file, unless `download` will fetch them."""
    root = Path(data_dir)
    missing = [alts[0] for alts in required_files(dataset) if not any((root / a).is_file() for a in alts)]
    if missing and not download:
        raise FileNotFoundError(
            f"--data-dir {data_dir} does not hold the {dataset} files torchvision's layout needs; "
            f"missing: {', '.join(missing)} (IDX files may be gzipped). Point --data-dir at the folder "
            f"that contains them, or pass --download where a network is available."
        )


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


def vae_transforms(dataset: str) -> Callable:
    """FSVAE's preprocessing: 32x32 (MNIST, FashionMNIST, CIFAR-10) or center crop 148 and 64x64
    (CelebA), scaled to [-1, 1]."""
    channels = 3 if dataset in ("cifar10", "celeba") else 1
    steps = [transforms.CenterCrop(148), transforms.Resize(64)] if dataset == "celeba" else [transforms.Resize(32)]
    steps += [transforms.ToTensor(), transforms.Normalize((0.5,) * channels, (0.5,) * channels)]
    return transforms.Compose(steps)


def image_dataset(dataset: str, data_dir: str, train: bool, download: bool = False):
    """(image in [-1, 1], label) pairs for the generative models."""
    check_image_data_dir(dataset, data_dir, download)
    if dataset == "celeba":
        return datasets.CelebA(data_dir, split="train" if train else "test", target_type="identity",
                               transform=vae_transforms(dataset), download=download)
    return classification_dataset(dataset, data_dir, train, download, transform=vae_transforms(dataset))
