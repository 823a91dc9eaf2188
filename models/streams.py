"""The pair that rate-based backpropagation carries through a network (docs/design.md, "Rate-based backpropagation").

A `Streams` holds the spike stream `spikes` [T, B, ...], computed without a graph, and the rate stream `rate`
[B, ...], computed with one. For a linear layer f, f(rate) = mean_t f(spikes_t), so both streams describe the same
activity; the neuron (`models.neuron.LIF`) ties them back together at each layer. Only one layer's spike stream is
alive at a time, so the memory kept for backward is that of an ANN on [B, ...] whatever T.

The spike stream carries no graph, so a layer may write its output over its input's spikes when nobody else will read
them: `owned` marks such a private temporary. The layers' outputs are owned; a given input (`from_sequence`, direct
encoding, a feature) is not. A module that reads an owned input more than once passes it `borrowed()` to every use
but the last (the residual block gives its input borrowed to the residual branch and owned to the shortcut). On the
CPU, stateless layers also run one timestep at a time, so their temporaries are those of a [B, ...] batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange


class Streams(NamedTuple):
    """spikes [T, B, ...] (no graph) and rate [B, ...] (with a graph): one layer's activity in rate mode.

    owned: the spikes are a private temporary of whoever receives this pair, which may overwrite them.
    """

    spikes: torch.Tensor
    rate: torch.Tensor
    owned: bool = False

    @classmethod
    def from_sequence(cls, x: torch.Tensor) -> Streams:
        """x [T, B, ...] -> (x without a graph, mean_t x with one): the streams of a given input sequence."""
        return cls(x.detach(), x.mean(0))

    @property
    def reusable(self) -> bool:
        """Whether a layer may write its output over `spikes`: owned, and a plain contiguous tensor (no expanded or
        strided view)."""
        return self.owned and self.spikes.is_contiguous()

    def borrowed(self) -> Streams:
        """The same streams, not to be overwritten (for every use but the last of an owned input)."""
        return self._replace(owned=False)

    def __add__(self, other: Streams) -> Streams:
        """The residual add, on both streams; the spikes' sum is written over an owned operand (the left one first)."""
        if not isinstance(other, Streams):
            raise TypeError(f"a Streams can only be added to a Streams, got {type(other).__name__}")
        with torch.no_grad():
            a, b = self.spikes, other.spikes
            if _can_hold(self, a, b):
                spikes = a.add_(b)
            elif _can_hold(other, a, b):
                spikes = b.add_(a)  # a + b == b + a, bit for bit
            else:
                spikes = a + b
        return Streams(spikes, self.rate + other.rate, owned=True)


def _can_hold(x: Streams, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether x's spikes can take a + b in place: reusable, with the sum's shape and dtype."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return x.reusable and x.spikes.shape == shape and x.spikes.dtype == torch.result_type(a, b)


def fold_time(fn, x: torch.Tensor) -> torch.Tensor:
    """Applies a stateless per-sample `fn` to x [T, B, ...] as one batch of T*B samples and unfolds the result."""
    steps = x.shape[0]
    y = fn(rearrange(x, "t b ... -> (t b) ..."))
    return rearrange(y, "(t b) ... -> t b ...", t=steps)


def map_steps(fn, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """A stateless per-sample `fn` on x [T, B, ...], one timestep at a time: out[t] = fn(x[t]).

    Only one step's temporaries are alive at once. `in_place`: out is x itself where fn keeps x[t]'s shape and dtype
    (step t is written once it has been read); x must then be contiguous and read by nobody afterwards.
    """
    first = fn(x[0])
    if in_place and first.shape == x.shape[1:] and first.dtype == x.dtype:
        out = x
    else:
        out = first.new_empty((x.shape[0], *first.shape))
    out[0] = first
    del first
    for t in range(1, x.shape[0]):
        out[t] = fn(x[t])
    return out


def apply_linear(fn, x: torch.Tensor | Streams) -> torch.Tensor | Streams:
    """A linear stateless layer on a sequence [T, B, ...] or on both streams (the spike stream without a graph).

    On streams, on the CPU, the spike stream runs step by step (`map_steps`, whose results equal one call on the T*B
    batch there: oneDNN's convolution reorders its whole input, a copy of [T, B, ...]), over the input's spikes where
    they are reusable.
    """
    if isinstance(x, Streams):
        with torch.no_grad():
            if x.spikes.device.type == "cpu":
                spikes = map_steps(fn, x.spikes, in_place=x.reusable)
            else:  # one launch on the T*B batch, as before: cuDNN picks its algorithm (and rounding) by batch size
                spikes = fold_time(fn, x.spikes)
        return Streams(spikes, fn(x.rate), owned=True)
    return fold_time(fn, x)
