"""CIFAR-10 / CIFAR-100 from the python pickle batches, with an optional download."""

from __future__ import annotations

import hashlib
import importlib
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from distill.datasets.base import Dataset, DatasetError, check_labels, corrupt, missing

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


def _numpy_core(module: str):
    """``numpy._core.<module>`` (numpy 2) or ``numpy.core.<module>`` (numpy 1)."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ModuleNotFoundError:
        return importlib.import_module(f"numpy.core.{module}")


# Every global a CIFAR batch refers to, pickled by Python 2 (the official files) or by Python 3 with any protocol:
# the numpy array of the images and its dtype, and the latin-1 codec of protocol 2's bytes. Nothing else is loaded.
_CIFAR_GLOBALS = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray")._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray")._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_core("numeric")._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_core("numeric")._frombuffer,
    ("_codecs", "encode"): lambda: __import__("_codecs").encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, ints and uint8 numpy arrays): loading a file
    never runs code from it."""

    def find_class(self, module: str, name: str):
        found = _CIFAR_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a CIFAR batch never holds; not loaded, as that could run code"
            )
        return found()


def _read_batch(path: Path, label_key: bytes, num_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` int64 of one batch file, checked: the images must be the
    official layout (rows of 3072 uint8: the red plane, then green, then blue), the labels classes."""
    how = _how(name)
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data, target = batch[b"data"], batch[label_key]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError, AttributeError) as error:
        raise corrupt(name, path, str(error) or type(error).__name__, how) from error
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        found = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise corrupt(name, path, f"images are {found}, expected uint8 values 0..255", how)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        why = f"images of shape {list(data.shape)}, expected [N, 3072] rows (1024 red, then green, then blue values)"
        raise corrupt(name, path, why, how)
    if not isinstance(target, (list, np.ndarray)) or any(isinstance(t, bool) for t in target):
        raise corrupt(name, path, f"labels are not a list of integers ({type(target).__name__})", how)
    try:
        target = np.asarray(target)
    except ValueError as error:
        raise corrupt(name, path, f"labels are not a list of integers ({error})", how) from error
    if target.ndim != 1 or len(target) != len(data):
        raise corrupt(name, path, f"{len(data)} images but labels of shape {list(target.shape)}", how)
    if target.dtype.kind not in "iu":
        raise corrupt(name, path, f"labels are {target.dtype}, expected integer classes 0..{num_classes - 1}", how)
    check_labels(name, path, torch.from_numpy(target.astype(np.int64)), num_classes, how)
    return data.reshape(-1, 3, 32, 32), target.astype(np.int64)


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
    num_classes = 10 if name == "cifar10" else 100
    images, labels = [], []
    for path in files:
        data, target = _read_batch(path, label_key, num_classes, name)
        images.append(data)
        labels.append(target)
    mean, std = _STATS[name]
    return Dataset(
        name=name,
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        num_classes=num_classes,
        mean=mean,
        std=std,
        crop_padding=4,
        flip=True,
    )
