"""The order in which samples are seen, as a pure function of (seed, epoch): a run resumed mid-epoch sees the same
batches as one that never stopped, and every rank of a distributed run agrees on the global batch.

A step takes a *global* batch of ``batch_size`` samples; rank r of W takes the r-th of W equal contiguous slices,
and splits it further into ``accum`` micro-batches. One process with ``accum = W`` therefore computes the same
gradient (up to rounding) as W processes with ``accum = 1``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Full global batches per epoch (the remainder is dropped so that every step has the same size)."""
    steps = num_samples // batch_size
    if steps == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the training set ({num_samples} samples)")
    return steps


def epoch_order(num_samples: int, epoch: int, seed: int) -> Tensor:
    """The permutation of the training set for ``epoch``."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


def micro_batches(
    order: Tensor, step_in_epoch: int, batch_size: int, rank: int, world_size: int, accum: int
) -> list[Tensor]:
    """The sample indices of this rank's ``accum`` micro-batches at ``step_in_epoch``."""
    parts = world_size * accum
    if batch_size % parts:
        raise ValueError(
            f"batch_size={batch_size} must be divisible by world size x grad_accum = {world_size} x {accum}"
        )
    size = batch_size // parts
    start = step_in_epoch * batch_size + rank * accum * size
    return [order[start + i * size : start + (i + 1) * size] for i in range(accum)]


def eval_shard(num_samples: int, rank: int, world_size: int) -> Tensor:
    """The test indices that ``rank`` evaluates (strided, so each rank's share differs by at most one)."""
    return torch.arange(rank, num_samples, world_size)
