"""CIFAR-10 / CIFAR-100 from the python pickle batches, with an optional download."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from distill.datasets.base import Dataset, DatasetError, corrupt, missing

CIFAR_DIR = Path.home() / ".cache" / "spikekd" / "cifar"
_SOURCES = {  # name: (folder in the archive, url, md5, train files, test files, label key)
    "cifar10": (
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
    ),
    "cifar100": (
        "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        ["train"],
        ["test"],
        b"fine_labels",
    ),
}
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _how(name: str) -> str:
    folder, url = _SOURCES[name][:2]
    return f"Pass --download to fetch it, or unpack {url} so that DIR/{folder} exists and pass --data-dir DIR."


def download(name: str, root: Path) -> None:
    """Fetches and unpacks the archive into ``root`` and checks its md5."""
    folder, url, md5 = _SOURCES[name][:3]
    root.mkdir(parents=True, exist_ok=True)
    archive = root / url.rsplit("/", 1)[1]
    try:
        if not archive.is_file():
            urllib.request.urlretrieve(url, archive.with_suffix(".part"))
            archive.with_suffix(".part").replace(archive)
    except OSError as error:
        raise DatasetError(f"{name}: could not download {url} into {root} ({error}). {_how(name)}") from error
    if hashlib.md5(archive.read_bytes()).hexdigest() != md5:
        raise corrupt(name, archive, "md5 mismatch; delete it and download again", _how(name))
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")


def load_cifar(name: str, split: str, root: Path | None = None, download_missing: bool = False) -> Dataset:
    """``name`` in {"cifar10", "cifar100"}; ``root`` holds ``cifar-10-batches-py`` / ``cifar-100-python`` (or is it).

    Images ``[N, 3, 32, 32]`` uint8.
    """
    folder, _, _, train_files, test_files, label_key = _SOURCES[name]
    root = Path(root) if root is not None else CIFAR_DIR
    base = root if root.name == folder else root / folder
    files = [base / f for f in (train_files if split == "train" else test_files)]
    if not all(f.is_file() for f in files) and download_missing:
        download(name, root)
    absent = [f for f in files if not f.is_file()]
    if absent:
        raise missing(name, absent, _how(name))
    images, labels = [], []
    for path in files:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(batch[label_key], dtype=np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as error:
            raise corrupt(name, path, str(error) or type(error).__name__, _how(name)) from error
        if len(data) != len(target):
            raise corrupt(name, path, f"{len(data)} images but {len(target)} labels", _how(name))
        images.append(data)
        labels.append(target)
    mean, std = _STATS[name]
    return Dataset(
        name=name,
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        num_classes=10 if name == "cifar10" else 100,
        mean=mean,
        std=std,
        crop_padding=4,
        flip=True,
    )
