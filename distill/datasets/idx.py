"""MNIST and Fashion-MNIST from their IDX files, plain or gzipped (``train-images-idx3-ubyte[.gz]`` and friends)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from distill.datasets.base import Dataset, check_labels, corrupt, missing

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_DIR = Path.home() / ".cache" / "spikekd" / "mnist"
_HOW = {
    "fashion_mnist": "On Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/"
    "fashion-mnist); otherwise download the four *-ubyte.gz files from https://github.com/zalandoresearch/"
    "fashion-mnist and pass --data-dir DIR.",
    "mnist": "Download the four *-ubyte.gz files of MNIST (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/) "
    "into a folder and pass --data-dir DIR.",
}
_FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]


def _find(name: str, root: Path, stem: str) -> Path:
    candidates = [root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")]
    for path in candidates:
        if path.is_file():
            return path
    raise missing(name, [root / f"{stem}[.gz]"], _HOW[name])


def read_idx(path: Path, name: str = "idx") -> np.ndarray:
    """An IDX file (http://yann.lecun.com/exdb/mnist/) of unsigned bytes as an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise corrupt(name, path, str(error), _HOW.get(name, "")) from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise corrupt(name, path, "not an IDX file of unsigned bytes (bad magic number)", _HOW.get(name, ""))
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        why = f"{len(raw) - offset} bytes of data where its header {dims} needs {expected}"
        raise corrupt(name, path, why, _HOW.get(name, ""))
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_idx(name: str, split: str, root: Path | None = None) -> Dataset:
    """``name`` in {"mnist", "fashion_mnist"}; images ``[N, 1, 28, 28]`` uint8."""
    root = Path(root) if root is not None else (FASHION_MNIST_DIR if name == "fashion_mnist" else MNIST_DIR)
    prefix = "train" if split == "train" else "t10k"
    images_path = _find(name, root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(name, root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path, name), read_idx(labels_path, name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        why = f"images {images.shape} and labels {labels.shape} do not pair up"
        raise corrupt(name, images_path, why, _HOW[name])
    check_labels(name, labels_path, torch.from_numpy(labels.astype(np.int64)), 10, _HOW[name])
    fashion = name == "fashion_mnist"
    return Dataset(
        name=name,
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=10,
        mean=(0.286,) if fashion else (0.1307,),
        std=(0.353,) if fashion else (0.3081,),
        crop_padding=2,
        flip=fashion,  # a mirrored shirt is a shirt; a mirrored digit may not be that digit
        classes=_FASHION_CLASSES if fashion else [str(i) for i in range(10)],
    )
