"""The data set object the trainer sees, and the error raised when one is missing or corrupt."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


class DatasetError(RuntimeError):
    """A data set is missing, unreadable, or does not fit the options. The message says where SpikeKD looked and
    how to get it (or which option to change)."""


def missing(name: str, looked: list[Path] | Path, how: str) -> DatasetError:
    looked = [looked] if isinstance(looked, Path) else looked
    places = ", ".join(str(p) for p in looked)
    return DatasetError(f"{name}: data not found; looked in {places}. {how}")


def corrupt(name: str, path: Path, why: str, how: str) -> DatasetError:
    return DatasetError(f"{name}: {path} is corrupt ({why}). {how}")


def check_labels(name: str, path: Path, labels, num_classes: int, how: str) -> None:
    """Raises ``DatasetError`` naming ``path`` and the index of the first label that is not an integer class in
    ``[0, num_classes)`` (a wrong label would otherwise train or score silently wrong)."""
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise corrupt(name, path, f"labels are {labels.dtype}, expected integer classes 0..{num_classes - 1}", how)
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        why = f"label {int(labels[i])} at index {i} is not a class 0..{num_classes - 1} ({len(bad)} such labels)"
        raise corrupt(name, path, why, how)


@dataclass
class Dataset:
    """A labelled image set with a ``batch(index)`` accessor.

    In memory (``images`` set): ``images`` is uint8 or float ``[N, C, H, W]`` (or ``[N, T, C, H, W]`` for event
    frames) and ``batch`` scales by ``1 / scale`` and normalises by ``mean`` / ``std`` per channel.
    Lazy (``loader`` set): ``loader(i)`` returns sample ``i`` as a float tensor in [0, 1] (after ``scale``), for
    sets too large to hold (ImageFolder, CIFAR10-DVS). Either way ``batch`` returns float32 ``x`` and int64 ``y``.
    """

    name: str
    labels: Tensor  # int64 [N]
    num_classes: int
    images: Tensor | None = None
    loader: object | None = None  # callable int -> Tensor
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    crop_padding: int = 0  # the augmentation that suits the set: random crop with this zero padding ...
    flip: bool = False  # ... and a random horizontal flip
    time_steps: int | None = None  # frames per sample for event data, None for static images
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` or ``(T, C, H, W)`` of one sample."""
        if self.images is not None:
            return tuple(self.images.shape[1:])
        return tuple(self.loader(0).shape)

    @property
    def in_channels(self) -> int:
        return self.sample_shape[-3]

    def batch(self, index: Tensor, device: torch.device | str = "cpu", normalize: bool = True) -> tuple[Tensor, Tensor]:
        """Samples ``index`` (int64 ``[B]``) as ``x`` float32 ``[B, *sample_shape]`` normalised (or, without
        ``normalize``, only scaled: images in [0, 1]), ``y`` ``[B]``."""
        x = self.raw(index).to(device, non_blocking=True)
        return self.scale_and_normalize(x, normalize), self.labels[index].to(device)

    def raw(self, index: Tensor) -> Tensor:
        """Samples ``index`` as stored or decoded (uint8 images, float event frames), ``[B, *sample_shape]``."""
        if self.images is not None:
            return self.images[index]
        return torch.stack([self.loader(int(i)) for i in index])

    def scale_and_normalize(self, x: Tensor, normalize: bool = True) -> Tensor:
        """Raw samples ``[..., C, H, W]`` -> float32 divided by ``scale``, normalised per channel if ``normalize``."""
        x = x.float() / self.scale
        if not normalize:
            return x
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def subset(self, size: int, seed: int = 0) -> Dataset:
        """The first ``size`` samples of a fixed random permutation (a quick, class-balanced-in-expectation subset)."""
        if size >= len(self) or size <= 0:
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:size].sort().values
        return self.select(keep)

    def split(self, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset | None]:
        """(rest, held out): ``round(fraction * len)`` samples, fixed by ``seed``, held out of this set (a validation
        split of the training set); None where that rounds to no sample."""
        held = round(fraction * len(self))
        if held <= 0:
            return self, None
        if held >= len(self):
            raise DatasetError(f"val_fraction={fraction} holds out all {len(self)} training samples; lower it")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed + 1))
        return self.select(order[held:].sort().values), self.select(order[:held].sort().values)

    def select(self, keep: Tensor) -> Dataset:
        """The samples ``keep`` (int64 indices), in that order."""
        if self.images is not None:
            images, loader = self.images[keep], None
        else:
            images, base = None, self.loader
            loader = _Reindexed(base, keep)
        return Dataset(
            self.name,
            self.labels[keep],
            self.num_classes,
            images,
            loader,
            self.scale,
            self.mean,
            self.std,
            self.crop_padding,
            self.flip,
            self.time_steps,
            self.classes,
        )


class _Reindexed:
    def __init__(self, loader, index: Tensor):
        self.loader, self.index = loader, index

    def __call__(self, i: int) -> Tensor:
        return self.loader(int(self.index[i]))
