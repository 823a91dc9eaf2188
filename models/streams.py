"""The pair that rate-based backpropagation carries through a network (DESIGN.md "Rate-based backpropagation").

A `Streams` holds the spike stream `spikes` [T, B, ...], computed without a graph, and the rate stream `rate`
[B, ...], computed with one. For a linear layer f, f(rate) = mean_t f(spikes_t), so both streams describe the same
activity; the neuron (`models.neuron.LIF`) ties them back together at each layer. Only one layer's spike stream is
alive at a time, so the memory kept for backward is that of an ANN on [B, ...] whatever T.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange


class Streams(NamedTuple):
    """spikes [T, B, ...] (no graph) and rate [B, ...] (with a graph): one layer's activity in rate mode."""

    spikes: torch.Tensor
    rate: torch.Tensor

    @classmethod
    def from_sequence(cls, x: torch.Tensor) -> Streams:
        """x [T, B, ...] -> (x without a graph, mean_t x with one): the streams of a given input sequence."""
        return cls(x.detach(), x.mean(0))

    def __add__(self, other: Streams) -> Streams:
        """The residual add, on both streams."""
        if not isinstance(other, Streams):
            raise TypeError(f"a Streams can only be added to a Streams, got {type(other).__name__}")
        return Streams(self.spikes + other.spikes, self.rate + other.rate)


def fold_time(fn, x: torch.Tensor) -> torch.Tensor:
    """Applies a stateless per-sample `fn` to x [T, B, ...] as one batch of T*B samples and unfolds the result."""
    steps = x.shape[0]
    y = fn(rearrange(x, "t b ... -> (t b) ..."))
    return rearrange(y, "(t b) ... -> t b ...", t=steps)


def apply_linear(fn, x: torch.Tensor | Streams) -> torch.Tensor | Streams:
    """A linear stateless layer on a sequence [T, B, ...] or on both streams (the spike stream without a graph)."""
    if isinstance(x, Streams):
        with torch.no_grad():
            spikes = fold_time(fn, x.spikes)
        return Streams(spikes, fn(x.rate))
    return fold_time(fn, x)
