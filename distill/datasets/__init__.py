"""Data sets for SpikeKD: the embedded digits default, MNIST / Fashion-MNIST, CIFAR-10/100, ImageNet (ImageFolder) and
CIFAR10-DVS (event frames), as ``Dataset`` objects with a batched accessor; batched on-device augmentation; and the
deterministic, shardable sample order the trainer uses.

    from distill.datasets import load_dataset
    train = load_dataset("fashion_mnist", "train")          # default folder /usr/share/datasets/fashion-mnist
    x, y = train.batch(torch.arange(8))                     # x [8, 1, 28, 28] float32 normalised, y [8]
"""

from __future__ import annotations

from pathlib import Path

from distill.datasets.augment import random_crop_flip
from distill.datasets.base import Dataset, DatasetError
from distill.datasets.cifar import load_cifar
from distill.datasets.digits import load_digits
from distill.datasets.dvs import load_dvs
from distill.datasets.folder import load_image_folder
from distill.datasets.idx import load_idx, read_idx

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet", "cifar10_dvs")
SPLITS = ("train", "test")


def load_dataset(
    name: str, split: str, root: str | Path | None = None, download: bool = False, image_size: int | None = None
) -> Dataset:
    """Data set ``name`` (one of ``DATASETS``), ``split`` "train" or "test"; ``root`` None picks the set's default
    folder; ``download`` fetches CIFAR when missing; ``image_size`` sets the size of ImageNet crops (224) and DVS
    frames (48)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    root = Path(root).expanduser() if root else None
    if name == "digits":
        return load_digits(split, root)
    if name in ("mnist", "fashion_mnist"):
        return load_idx(name, split, root)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split, root, download)
    if name == "imagenet":
        return load_image_folder(split, root, image_size or 224)
    return load_dvs(split, root, image_size or 48)


__all__ = ["DATASETS", "Dataset", "DatasetError", "load_dataset", "random_crop_flip", "read_idx"]
