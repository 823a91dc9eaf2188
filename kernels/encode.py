"""poisson_encode: Bernoulli spike trains from intensities, S[t, i] = [u(seed, t N + i) < clamp(x_i, 0, 1)].

u is Triton's counter-based Philox (`tl.rand`), so the spikes depend only on the seed and the element's index,
never on the block size or the device; `kernels.reference.philox_uniform` reproduces the same bits on the CPU.
"""

from __future__ import annotations

import torch
from torch.library import custom_op

from kernels import reference
from kernels.backend import check_backend, use_triton
from kernels.launch import element_offsets, launch, readable_step
from kernels.options import check_floating
from kernels.triton_support import tl, triton

MAX_SEED = 2**63 - 1


@triton.jit
def _poisson_encode_kernel(
    x_ptr,  # [N] intensities, storage dtype, any layout of `kernels.launch`
    x_cols,  # layout of x: element i at (i // cols) * row_stride + (i % cols) * col_stride
    x_row_stride,
    x_col_stride,
    spikes_ptr,  # [T, N] out: Bernoulli spikes, contiguous
    n_neurons,  # N
    n_steps,  # T
    seed,  # Philox key
    BLOCK: tl.constexpr,  # neurons per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_neurons
    x = tl.load(x_ptr + element_offsets(offs, x_cols, x_row_stride, x_col_stride), mask=mask, other=0.0)
    x = x.to(tl.float32)
    p = tl.where(x < 0.0, 0.0, tl.where(x > 1.0, 1.0, x))  # clamp to [0, 1] keeping NaN (tl.maximum drops it)
    counter = offs
    for _ in range(n_steps):
        s = tl.where(tl.rand(seed, counter) < p, 1.0, 0.0)
        s = tl.where(p != p, p, s)
        tl.store(spikes_ptr + counter, s.to(spikes_ptr.dtype.element_ty), mask=mask)
        counter += n_neurons


@custom_op("spikekd::poisson_encode", mutates_args={})
def _poisson_encode_op(x: torch.Tensor, n_steps: int, seed: int, backend: str) -> torch.Tensor:
    if not use_triton(backend, x):
        return reference.poisson_encode(x, n_steps, seed)
    x, layout = readable_step(x)
    spikes = x.new_empty((n_steps, *x.shape))
    if x.numel() > 0:
        launch(_poisson_encode_kernel, x.numel(), x, *layout.args(), spikes, x.numel(), n_steps, seed)
    return spikes


@_poisson_encode_op.register_fake
def _(x, n_steps, seed, backend):
    return x.new_empty((n_steps, *x.shape))


def poisson_encode(x: torch.Tensor, T: int, seed: int, *, backend: str = "auto") -> torch.Tensor:
    """x [B, ...] -> spikes [T, B, ...] in x.dtype with P(spike) = clamp(x, 0, 1); the same seed, the same spikes."""
    check_floating(x, "x")
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dim [B, ...], got a 0-dim tensor")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an int >= 1 (the number of timesteps), got {T!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**63 - 1], got {seed!r}")
    check_backend(backend)
    return torch.ops.spikekd.poisson_encode(x.detach(), T, seed, backend)
