"""CIFAR10-DVS as event frames, one file per sample.

Expected layout (make it once from the AEDAT recordings, e.g. with SpikingJelly's ``CIFAR10DVS(root,
data_type="frame", frames_number=T, split_by="number")``, whose ``frames_number_T_split_by_number`` folder has it):

    DIR/<class>/<sample>.npz   key "frames", or DIR/<class>/<sample>.npy
        frames: [T, 2, H, W] event counts per polarity (any integer or float dtype), H = W = 128 for CIFAR10-DVS

Classes are the sorted folder names. With ``DIR/train`` and ``DIR/test`` sub-folders those are the splits; otherwise
the first 90% of each class's sorted files train and the rest test (the usual 9:1 split). Each sample's counts are
divided by their maximum over the sample (so frames lie in [0, 1]) and resized to ``image_size`` by area
averaging. A batch is ``[B, T, 2, S, S]``; the trainer makes it time-first.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.datasets.base import Dataset, DatasetError, corrupt, missing
from distill.datasets.folder import split_classes

DVS_DIR = Path.home() / ".cache" / "spikekd" / "cifar10_dvs"
TRAIN_FRACTION = 0.9
_HOW = (
    "Convert the CIFAR10-DVS recordings (https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671) into "
    "per-sample frame files DIR/<class>/<sample>.npz (key 'frames', shape [T, 2, H, W]), e.g. with SpikingJelly's "
    "CIFAR10DVS(data_type='frame', frames_number=T, split_by='number'), and pass --data-dir DIR."
)


class _FrameLoader:
    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __call__(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        try:
            if path.suffix.lower() == ".npz":
                with np.load(path) as data:
                    frames = data["frames"]
            else:
                frames = np.load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
            raise corrupt("cifar10_dvs", path, str(error) or type(error).__name__, _HOW) from error
        if frames.ndim != 4 or frames.shape[1] != 2:
            raise corrupt("cifar10_dvs", path, f"frames of shape {frames.shape}, expected [T, 2, H, W]", _HOW)
        if frames.dtype.kind not in "iuf" or not np.isfinite(frames).all() or (frames < 0).any():
            why = f"sample {i}: frames must be finite event counts >= 0, got {frames.dtype} values"
            raise corrupt("cifar10_dvs", path, why, _HOW)
        x = torch.from_numpy(frames.astype(np.float32))
        x = x / x.amax().clamp_min(1.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        return x


def load_dvs(split: str, root: Path | None = None, image_size: int = 48) -> Dataset:
    """CIFAR10-DVS frames ``[N, T, 2, image_size, image_size]`` in [0, 1], loaded lazily."""
    root = Path(root) if root is not None else DVS_DIR
    split_dir = root / ("train" if split == "train" else "test")
    base = split_dir if split_dir.is_dir() else root
    if not base.is_dir():
        raise missing("cifar10_dvs", root, _HOW)
    classes = split_classes("cifar10_dvs", root, base, _HOW, skip=("train", "test"))
    paths, labels = [], []
    for label, name in enumerate(classes):
        if not (base / name).is_dir():
            continue
        files = sorted(p for p in (base / name).iterdir() if p.is_file() and p.suffix.lower() in (".npz", ".npy"))
        if not files:
            raise DatasetError(f"cifar10_dvs: the class folder {base / name} has no .npz or .npy frame files")
        if base is root:
            cut = int(round(TRAIN_FRACTION * len(files)))
            files = files[:cut] if split == "train" else files[cut:]
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise missing("cifar10_dvs", [base / "<class>" / "*.npz"], _HOW)
    loader = _FrameLoader(paths, image_size)
    return Dataset(
        name="cifar10_dvs",
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=len(classes),
        loader=loader,
        scale=1.0,
        crop_padding=image_size // 8,
        flip=True,
        time_steps=int(loader(0).shape[0]),
        classes=classes,
    )
