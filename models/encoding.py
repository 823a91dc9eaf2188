"""Input encoders: a static image [B, C, H, W] -> the input of a spiking net at each of T steps.

- direct: the image is presented at every step. The stateless layers in front of the first neuron (the stem's conv
  and BatchNorm) then see the same input T times, so they run once on [B, C, H, W] and their output is repeated
  (a broadcast view, no copy). BatchNorm statistics over T copies equal those over one.
- Poisson: Bernoulli spikes [T, B, C, H, W] with P = clamp(x, 0, 1) (`kernels.poisson_encode`), for the net's
  sequence input.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels import poisson_encode
from kernels.encode import MAX_SEED
from models.streams import Streams


def direct_encode(x: torch.Tensor, T: int, front: nn.Module, rate: bool = False) -> torch.Tensor | Streams:
    """front(x) computed once, repeated over T: x [B, C, H, W] -> [T, B, C', H', W'] (or Streams when `rate`).

    `front` is a stack of stateless sequence layers; it sees x as a one-step sequence [1, B, C, H, W]. In rate mode
    the rate stream is front(x) itself (the mean over T identical steps), carrying the graph.
    """
    current = front(x.unsqueeze(0))
    sequence = current.expand(T, *current.shape[1:])
    if rate:
        return Streams(sequence.detach(), current[0])
    return sequence


class PoissonEncoder(nn.Module):
    """x [B, ...] intensities in [0, 1] -> Bernoulli spikes [T, B, ...] with P(spike) = clamp(x, 0, 1).

    seed None draws a fresh seed from torch's default generator at each call (reproducible under
    torch.manual_seed); an int gives the same spikes at every call.
    """

    def __init__(self, T: int, seed: int | None = None):
        super().__init__()
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be an int >= 1 (the number of timesteps), got {T!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
            raise ValueError(f"seed must be None (a fresh seed per call) or an int in [0, 2**63 - 1], got {seed!r}")
        self.T = T
        self.seed = seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        return poisson_encode(x, self.T, seed)

    def extra_repr(self) -> str:
        return f"T={self.T}, seed={self.seed}"
