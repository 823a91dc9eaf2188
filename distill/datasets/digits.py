"""The embedded default: UCI handwritten digits, 8x8, shipped as ``distill/data/digits.npz`` (CC BY 4.0)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from distill.datasets.base import Dataset, DatasetError, check_labels, corrupt

DIGITS_FILE = Path(__file__).resolve().parent.parent / "data" / "digits.npz"
TEST_FRACTION = 0.2
_HOW = "It ships inside the spikekd package: reinstall it (pip install --force-reinstall .) to restore the file."


def load_digits(split: str, root: Path | None = None) -> Dataset:
    """The 1,797 digits, split once and for all into 1,438 training and 359 test images (a fixed permutation).

    Pixels are 0..16; images ``[N, 1, 8, 8]``. ``root`` may point to another ``digits.npz``.
    """
    path = Path(root) / "digits.npz" if root is not None else DIGITS_FILE
    if not path.is_file():
        raise DatasetError(f"digits: {path} not found. {_HOW}")
    try:
        with np.load(path) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise corrupt("digits", path, str(error) or type(error).__name__, _HOW) from error
    if images.ndim != 3 or images.shape[1:] != (8, 8) or labels.ndim != 1 or len(images) != len(labels):
        raise corrupt("digits", path, f"images {images.shape}, labels {labels.shape}", _HOW)
    if images.dtype.kind not in "iu":
        raise corrupt("digits", path, f"images are {images.dtype}, expected integer pixels 0..16", _HOW)
    bad = np.flatnonzero(((images < 0) | (images > 16)).any(axis=(1, 2)))
    if len(bad):
        raise corrupt("digits", path, f"image {bad[0]} has pixels outside 0..16 ({len(bad)} such images)", _HOW)
    check_labels("digits", path, torch.from_numpy(labels), 10, _HOW)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = int(round(TEST_FRACTION * len(labels)))
    keep = order[n_test:] if split == "train" else order[:n_test]
    keep = keep.sort().values
    return Dataset(
        name="digits",
        images=torch.from_numpy(images).unsqueeze(1)[keep],
        labels=torch.from_numpy(labels).long()[keep],
        num_classes=10,
        scale=16.0,
        mean=(0.3,),
        std=(0.38,),
        crop_padding=1,
        flip=False,
        classes=[str(i) for i in range(10)],
    )
