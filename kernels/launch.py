"""How the ops hand tensors to their Triton kernels: operand layouts, launch shapes by size, one launch function.

Layouts. A kernel reads a time-first operand [T, ...] as T steps of N elements each, step t at `t * t_stride` and
element i of a step at `(i // cols) * row_stride + (i % cols) * col_stride`. That covers contiguous tensors, a
tensor expanded over T (t_stride 0: an input constant in time, such as a direct-encoded image), a transposed
[B, T, ...] -> [T, B, ...] view and a slice of the last dims, without a copy. A step whose dims do not fold into
rows and columns (three or more runs of strides, such as a channels-last image) is copied to contiguous first.

Launch shapes. BLOCK (neurons per program) and num_warps come from `LAUNCH_SHAPES` by the number of neurons N:
small layers get small blocks so that every SM has programs to run, large ones bigger blocks. The table was chosen
from the launch-shape sweep of the GPU benchmarks (`bench/launch_sweep.py`, results in `bench/results/`).

Floating-point fusion. Every kernel is compiled with `enable_fp_fusion=False`: `lam * v + x` stays a rounded
multiply and a rounded add, as in the PyTorch twins of `kernels/reference.py` and in SpikingJelly, so that spikes are
bit-identical to them on the GPU (a fused multiply-add rounds once and flips spikes at the threshold). The kernels
are memory-bound, so the extra instruction costs nothing measurable. The ops are opaque custom ops to
`torch.compile` (it calls them, it does not trace into them), so a compiled graph launches the same kernels with the
same option, and its spikes equal eager mode's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kernels.triton_support import tl, triton  # noqa: F401 - the interpreter wants tl beside a @jit function

# (largest N, BLOCK, num_warps), first match wins.
LAUNCH_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1 << 20, 512, 4),
    (1 << 22, 2048, 8),
    (1 << 62, 512, 2),
)

_RECORDING: list | None = None


@dataclass(frozen=True)
class StepLayout:
    """Element i of one step lies at (i // cols) * row_stride + (i % cols) * col_stride elements from its start."""

    cols: int
    row_stride: int
    col_stride: int

    def args(self) -> tuple[int, int, int]:
        return (self.cols, self.row_stride, self.col_stride)


@triton.jit
def element_offsets(offs, cols, row_stride, col_stride):
    """Where the elements `offs` of one step lie, in the layout of `StepLayout` (a device function of the kernels)."""
    return (offs // cols) * row_stride + (offs % cols) * col_stride


def step_layout(step: torch.Tensor) -> StepLayout | None:
    """The layout of one step (a tensor of any shape) as rows x columns, or None where it needs more dims."""
    runs: list[tuple[int, int]] = []  # (size, stride), outer to inner, adjacent dims merged where they chain
    for size, stride in zip(step.shape, step.stride(), strict=False):
        if size == 1:
            continue
        if runs and runs[-1][1] == stride * size:
            runs[-1] = (runs[-1][0] * size, stride)
        else:
            runs.append((size, stride))
    if not runs:
        return StepLayout(1, 0, 1)
    if len(runs) == 1:
        return StepLayout(runs[0][0], 0, runs[0][1])
    if len(runs) == 2:
        (_, row_stride), (cols, col_stride) = runs
        return StepLayout(cols, row_stride, col_stride)
    return None


def readable_sequence(x: torch.Tensor) -> tuple[torch.Tensor, int, StepLayout]:
    """(x or a contiguous copy of it, the time stride, the step layout) for a kernel reading x [T, ...]."""
    if x.is_contiguous():
        step = x[0].numel()
        return x, step, StepLayout(step, 0, 1)
    layout = step_layout(x[0])
    if layout is None:
        x = x.contiguous()
        layout = StepLayout(x[0].numel(), 0, 1)
    t_stride = x.stride(0) if x.shape[0] > 1 else 0
    return x, t_stride, layout


def readable_step(x: torch.Tensor) -> tuple[torch.Tensor, StepLayout]:
    """(x or a contiguous copy of it, its layout) for a kernel reading x [...] as one step."""
    layout = step_layout(x)
    if layout is None:
        x = x.contiguous()
        layout = StepLayout(x.numel(), 0, 1)
    return x, layout


def launch_shape(n: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a kernel over n neurons."""
    for largest, block, num_warps in LAUNCH_SHAPES:
        if n <= largest:
            return block, num_warps
    raise ValueError(f"n must be at most {LAUNCH_SHAPES[-1][0]}, got {n}")


def launch(kernel, n: int, *args, **constexprs) -> None:
    """Runs `kernel` over n neurons with the launch shape of `launch_shape(n)` (one program per BLOCK neurons)."""
    block, num_warps = launch_shape(n)
    if _RECORDING is not None:
        _RECORDING.append((kernel, args, dict(constexprs, BLOCK=block), num_warps))
        return
    kernel[(triton.cdiv(n, block),)](*args, **constexprs, BLOCK=block, num_warps=num_warps, enable_fp_fusion=False)


@contextlib.contextmanager
def recording_launches():
    """Within the block, `launch` records (kernel, args, constexprs, num_warps) instead of running: what
    `python -m kernels.aot` compiles."""
    global _RECORDING
    previous, _RECORDING = _RECORDING, []
    try:
        yield _RECORDING
    finally:
        _RECORDING = previous
