"""Batches in a given order, on the device: gathered from memory, or decoded and augmented in DataLoader workers.

    for x, y in batches(data, index_batches, device, workers=2, augment=augment, seed_parts=(seed, stage, epoch)):
        ...

In-memory sets without per-sample augmentation are indexed directly (a tensor gather needs no workers). Sets read
from files (image folders, event frames) and per-sample augmentation go through `torch.utils.data.DataLoader`: each
item is one whole batch, decoded, augmented sample by sample and normalised in a worker process (or in this one
when ``workers`` is 0). Sample i is augmented with its own seed ``mix_seed(*seed_parts, i)`` (the trainer passes the
run's seed, the stage and the epoch), so the batches are the same with any number of workers, and a run resumed
mid-epoch sees what it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from distill.datasets.augment import SampleAugment
from distill.datasets.base import Dataset, DatasetError
from distill.datasets.sampling import mix_seed


class _Batches(TorchDataset):
    """Item k: batch k as (x float32 normalised ``[B, *sample_shape]``, y ``[B]``), on the CPU."""

    def __init__(
        self,
        data: Dataset,
        index_batches: Sequence[Tensor],
        normalize: bool,
        augment: SampleAugment | None,
        seed_parts: tuple[int, ...],
    ):
        self.data, self.index_batches, self.normalize = data, index_batches, normalize
        self.augment, self.seed_parts = augment, seed_parts

    def __len__(self) -> int:
        return len(self.index_batches)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        index = self.index_batches[k]
        raw = self.data.raw(index)
        if not self.augment:
            return self.data.scale_and_normalize(raw, self.normalize), self.data.labels[index]
        samples = []
        for sample, i in zip(raw, index.tolist(), strict=True):
            seed = mix_seed(*self.seed_parts, i)
            sample = self.augment.apply(self.augment.before, sample, seed)
            sample = self.data.scale_and_normalize(sample, self.normalize)
            samples.append(self.augment.apply(self.augment.after, sample, seed + 1))
        return torch.stack(samples), self.data.labels[index]


def needs_loader(data: Dataset, augment: SampleAugment | None) -> bool:
    """Whether batches of `data` go through the DataLoader: read from files, or augmented per sample."""
    return data.images is None or bool(augment)


def batches(
    data: Dataset,
    index_batches: Sequence[Tensor],
    device: torch.device,
    workers: int = 0,
    augment: SampleAugment | None = None,
    seed_parts: tuple[int, ...] = (),
    normalize: bool = True,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) on `device` for each batch of sample indices in `index_batches`, in that order (see the module doc);
    x normalised (without `normalize`: only scaled, images in [0, 1])."""
    if not needs_loader(data, augment):
        for index in index_batches:
            yield data.batch(index, device, normalize)
        return
    loader = DataLoader(
        _Batches(data, index_batches, normalize, augment, seed_parts),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
        # Its own generator for the workers' base seed, so that loading leaves torch's global generator untouched
        # (the samples' draws come from their own seeds anyway).
        generator=torch.Generator().manual_seed(mix_seed(*seed_parts) if seed_parts else 0),
    )
    try:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    except DatasetError as error:
        # From a worker it comes back with the worker's traceback in its message; the user needs the last line.
        message = str(error)
        if "DatasetError: " not in message:
            raise
        raise DatasetError(message.rsplit("DatasetError: ", 1)[1].strip()) from None
