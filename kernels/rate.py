"""The ops of rate-based backpropagation (Yu et al., NeurIPS 2024): the spike pass and the rate neuron.

- `lif_rate(x)`: one pass over time with no graph, writing spikes [T, ...], the rate mean_t S_t and the eligibility
  elig = d(mean_t S_t)/dc (forward-mode, for a shift c added to every X_t), both [...] in fp32. `lif_rate_(x)`
  writes the spikes over x (the spike stream's private temporaries: one [T, ...] tensor fewer alive).
- `rate_ste(current, rate, elig)`: the rate stream's neuron, valued `rate`, with d/d current = elig.
- `rate_reduce(s)`: mean over time in fp32 (also fused into `lif_rate`).

The kernels are compiled with `enable_fp_fusion=False` (`kernels/launch.py`): no multiply-add is fused, as in the
PyTorch twins, so spikes and eligibilities match theirs on the GPU to the last bit of each rounding.
"""

from __future__ import annotations

import torch
from torch.library import custom_op

from kernels import reference
from kernels.backend import check_backend, use_triton
from kernels.launch import element_offsets, launch, readable_sequence, readable_step
from kernels.lif_step import charge, fire, reset, reset_grad, surrogate_grad
from kernels.options import check_floating, check_same_device, check_sequence, neuron_args
from kernels.triton_support import tl, triton


# Forward-mode eligibility, carried beside the potential:
#   h'_t = lam v'_{t-1} + g,   v'_t = h'_t dV_t/dH_t,   elig = (1/T) sum_t sg_t h'_t
@triton.jit
def _lif_rate_kernel(
    x_ptr,  # [T, N] input current X, storage dtype, any layout of `kernels.launch`
    x_t_stride,  # elements between X_t and X_{t+1} (0: constant in time)
    x_cols,  # step layout of X: element i at (i // cols) * row_stride + (i % cols) * col_stride
    x_row_stride,
    x_col_stride,
    spikes_ptr,  # [T, N] out: spikes S, contiguous (may be x itself when x is contiguous)
    rate_ptr,  # [N] out: mean_t S_t, fp32
    elig_ptr,  # [N] out: eligibility, fp32
    n_neurons,  # N
    n_steps,  # T
    lam,  # 1 - 1/tau
    inv_tau,  # 1/tau
    input_gain,  # g = dH/dX
    v_threshold,  # th
    v_reset,  # vr (ignored for soft reset)
    alpha,  # surrogate sharpness
    HARD: tl.constexpr,  # hard reset
    DECAY_INPUT: tl.constexpr,  # input scaled by 1/tau
    DETACH_RESET: tl.constexpr,  # no gradient through the spike in the reset
    SURROGATE: tl.constexpr,  # 0 sigmoid, 1 atan, 2 triangle
    BLOCK: tl.constexpr,  # neurons per program
):
    # fp32 scalars whatever the caller passes (torch.compile's generated launcher passes Python floats as fp64)
    lam = tl.cast(lam, tl.float32)
    inv_tau = tl.cast(inv_tau, tl.float32)
    input_gain = tl.cast(input_gain, tl.float32)
    v_threshold = tl.cast(v_threshold, tl.float32)
    v_reset = tl.cast(v_reset, tl.float32)
    alpha = tl.cast(alpha, tl.float32)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_neurons
    x_offs = element_offsets(offs, x_cols, x_row_stride, x_col_stride)
    v = tl.full((BLOCK,), 0.0, tl.float32)
    if HARD:
        v += v_reset
    dv = tl.full((BLOCK,), 0.0, tl.float32)
    count = tl.full((BLOCK,), 0.0, tl.float32)
    elig = tl.full((BLOCK,), 0.0, tl.float32)
    for _ in range(n_steps):
        x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
        h = charge(v, x, lam, inv_tau, v_reset, HARD, DECAY_INPUT)
        s = fire(h, v_threshold)
        sg = surrogate_grad(h - v_threshold, alpha, SURROGATE)
        dh = lam * dv + input_gain
        elig += sg * dh
        dv = dh * reset_grad(h, s, sg, v_threshold, v_reset, HARD, DETACH_RESET)
        v = reset(h, s, v_threshold, v_reset, HARD)
        count += s
        tl.store(spikes_ptr + offs, s.to(spikes_ptr.dtype.element_ty), mask=mask)
        x_ptr += x_t_stride
        spikes_ptr += n_neurons
    tl.store(rate_ptr + offs, (count / n_steps).to(rate_ptr.dtype.element_ty), mask=mask)
    tl.store(elig_ptr + offs, (elig / n_steps).to(elig_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rate_reduce_kernel(
    s_ptr,  # [T, N] spikes (or any sequence), storage dtype, any layout of `kernels.launch`
    s_t_stride,  # elements between s_t and s_{t+1}
    s_cols,  # step layout of s: element i at (i // cols) * row_stride + (i % cols) * col_stride
    s_row_stride,
    s_col_stride,
    out_ptr,  # [N] out: mean over T, fp32
    n_neurons,  # N
    n_steps,  # T
    BLOCK: tl.constexpr,  # elements per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_neurons
    s_offs = element_offsets(offs, s_cols, s_row_stride, s_col_stride)
    acc = tl.full((BLOCK,), 0.0, tl.float32)
    for _ in range(n_steps):
        acc += tl.load(s_ptr + s_offs, mask=mask, other=0.0).to(tl.float32)
        s_ptr += s_t_stride
    tl.store(out_ptr + offs, (acc / n_steps).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scaled_copy_kernel(
    src_ptr,  # [N] values to copy, any layout of `kernels.launch`
    src_cols,  # layout of src: element i at (i // cols) * row_stride + (i % cols) * col_stride
    src_row_stride,
    src_col_stride,
    scale_ptr,  # [N] elementwise factor, contiguous (only when HAS_SCALE)
    out_ptr,  # [N] out: src * scale in fp32, stored in out's dtype, contiguous
    n,  # N
    HAS_SCALE: tl.constexpr,  # multiply by scale, else a casting copy
    BLOCK: tl.constexpr,  # elements per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    src_offs = element_offsets(offs, src_cols, src_row_stride, src_col_stride)
    value = tl.load(src_ptr + src_offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        value = value * tl.load(scale_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=mask)


def _state_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --- lif_rate ---------------------------------------------------------------------------------------------------


def _lif_rate_triton(x, spikes, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha):
    """The spike pass of x (any layout) into contiguous spikes, which may be x itself when x is contiguous (each
    program reads X_t, then writes S_t at the same offsets); returns (rate, elig)."""
    x, t_stride, layout = readable_sequence(x)
    rate = torch.empty(x.shape[1:], dtype=_state_dtype(x), device=x.device)
    elig = torch.empty_like(rate)
    n_steps, n_neurons = x.shape[0], rate.numel()
    if n_neurons > 0:
        launch(
            _lif_rate_kernel, n_neurons,
            x, t_stride, *layout.args(), spikes, rate, elig, n_neurons, n_steps,
            1.0 - 1.0 / tau, 1.0 / tau, 1.0 / tau if decay_input else 1.0, v_threshold,
            0.0 if v_reset is None else v_reset, alpha,
            HARD=v_reset is not None, DECAY_INPUT=decay_input, DETACH_RESET=detach_reset, SURROGATE=surrogate_id,
        )  # fmt: skip
    return rate, elig


def _lif_rate_new_spikes(x, args):
    """The Triton spike pass into a new contiguous spike tensor: (spikes, rate, elig)."""
    spikes = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return spikes, *_lif_rate_triton(x, spikes, *args)


@custom_op("spikekd::lif_rate", mutates_args={})
def _lif_rate_op(
    x: torch.Tensor,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    detach_reset: bool,
    surrogate_id: int,
    alpha: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    options = (tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha)
    if not use_triton(backend, x):
        return reference.lif_rate(x, *options)
    return _lif_rate_new_spikes(x, options)


@_lif_rate_op.register_fake
def _(x, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha, backend):
    rate = x.new_empty(x.shape[1:], dtype=_state_dtype(x))
    return torch.empty_like(x), rate, torch.empty_like(rate)


@custom_op("spikekd::lif_rate_", mutates_args={"x"})
def _lif_rate_inplace_op(
    x: torch.Tensor,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    detach_reset: bool,
    surrogate_id: int,
    alpha: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    options = (tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha)
    if not use_triton(backend, x):
        _, rate, elig = reference.lif_rate(x, *options, out=x)
        return rate, elig
    buffer = x.contiguous()
    rate, elig = _lif_rate_triton(buffer, buffer, *options)
    if buffer is not x:
        x.copy_(buffer)
    return rate, elig


@_lif_rate_inplace_op.register_fake
def _(x, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha, backend):
    rate = x.new_empty(x.shape[1:], dtype=_state_dtype(x))
    return rate, torch.empty_like(rate)


def lif_rate(
    x: torch.Tensor,
    *,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = None,
    decay_input: bool = False,
    detach_reset: bool = True,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spike pass of rate-based backprop: x [T, ...] -> (spikes [T, ...], rate [...], elig [...]).

    Same neuron and options as `lif_multistep`; builds no graph and keeps no [T, ...] state. rate and elig are fp32.
    """
    check_sequence(x)
    check_backend(backend)
    args = neuron_args(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
    if use_triton(backend, x) and not torch.compiler.is_compiling():  # eager: the launcher without the dispatcher
        return _lif_rate_new_spikes(x.detach(), args)
    return torch.ops.spikekd.lif_rate(x.detach(), *args, backend)


def lif_rate_(
    x: torch.Tensor,
    *,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = None,
    decay_input: bool = False,
    detach_reset: bool = True,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`lif_rate` that writes the spikes over x: returns (spikes, rate, elig), spikes being x (detached).

    Same values as `lif_rate`, without a second [T, ...] tensor; for a current nothing else reads afterwards.
    """
    check_sequence(x)
    check_backend(backend)
    check_writable_in_place(x)
    args = neuron_args(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
    spikes = x.detach()  # the same storage (and version counter): autograd still sees the write
    if use_triton(backend, x) and not torch.compiler.is_compiling() and spikes.is_contiguous():
        rate, elig = _lif_rate_triton(spikes, spikes, *args)
        torch.autograd.graph.increment_version(spikes)  # written in place, as the op's mutates_args declares
        return spikes, rate, elig
    rate, elig = torch.ops.spikekd.lif_rate_(spikes, *args, backend)
    return spikes, rate, elig


def check_writable_in_place(x: torch.Tensor) -> None:
    """x can take its own spikes: no element shares memory with another (an expanded view would take every step's
    spike in one place), and no leaf that requires grad (its values are the parameters autograd differentiates)."""
    if x.is_leaf and x.requires_grad:
        raise ValueError("lif_rate_ cannot write over a leaf tensor that requires grad; use lif_rate(x)")
    overlapping = any(stride == 0 and size > 1 for size, stride in zip(x.shape, x.stride(), strict=False))
    if overlapping or torch._debug_has_internal_overlap(x) == 1:
        raise ValueError(
            "lif_rate_ writes the spikes over x, so x must not overlap itself; got shape "
            f"{tuple(x.shape)} with strides {x.stride()} (an expanded view?); use lif_rate(x)"
        )


# --- rate_reduce ------------------------------------------------------------------------------------------------


@custom_op("spikekd::rate_reduce", mutates_args={})
def _rate_reduce_op(s: torch.Tensor, backend: str) -> torch.Tensor:
    if not use_triton(backend, s):
        return reference.rate_reduce(s)
    return _rate_reduce_triton(s)


@_rate_reduce_op.register_fake
def _(s, backend):
    return s.new_empty(s.shape[1:], dtype=_state_dtype(s))


def _rate_reduce_setup(ctx, inputs, output):
    s, _ = inputs
    ctx.shape, ctx.dtype = s.shape, s.dtype


def _rate_reduce_backward(ctx, grad):
    n_steps = ctx.shape[0]
    return (grad / n_steps).to(ctx.dtype).unsqueeze(0).expand(ctx.shape), None


_rate_reduce_op.register_autograd(_rate_reduce_backward, setup_context=_rate_reduce_setup)


def _rate_reduce_triton(s: torch.Tensor) -> torch.Tensor:
    s, t_stride, layout = readable_sequence(s)
    out = torch.empty(s.shape[1:], dtype=_state_dtype(s), device=s.device)
    if out.numel() > 0:
        launch(_rate_reduce_kernel, out.numel(), s, t_stride, *layout.args(), out, out.numel(), s.shape[0])
    return out


class _EagerRateReduce(torch.autograd.Function):
    """rate_reduce's Triton path outside torch.compile, without torch.library's dispatch (see `_EagerLIFMultistep`
    in kernels/lif.py)."""

    @staticmethod
    def forward(ctx, s):
        ctx.shape, ctx.dtype = s.shape, s.dtype
        return _rate_reduce_triton(s)

    @staticmethod
    def backward(ctx, grad):
        return _rate_reduce_backward(ctx, grad)[0]


def rate_reduce(s: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """mean_t s_t of s [T, ...] -> [...], accumulated and returned in fp32; differentiable."""
    check_sequence(s, "s")
    check_backend(backend)
    if use_triton(backend, s) and not torch.compiler.is_compiling():
        return _EagerRateReduce.apply(s)
    return torch.ops.spikekd.rate_reduce(s, backend)


# --- rate_ste ---------------------------------------------------------------------------------------------------


def _scaled_copy(src: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    src, layout = readable_step(src)
    out = torch.empty(src.shape, dtype=dtype, device=src.device)
    if out.numel() > 0:
        has_scale = scale is not None
        scale = scale.contiguous() if has_scale else out
        launch(_scaled_copy_kernel, out.numel(), src, *layout.args(), scale, out, out.numel(), HAS_SCALE=has_scale)
    return out


@custom_op("spikekd::rate_ste", mutates_args={})
def _rate_ste_op(current: torch.Tensor, rate: torch.Tensor, elig: torch.Tensor, backend: str) -> torch.Tensor:
    if use_triton(backend, current):
        return _scaled_copy(rate, None, current.dtype)
    return rate.to(current.dtype, copy=True)


@_rate_ste_op.register_fake
def _(current, rate, elig, backend):
    return torch.empty_like(current)


@custom_op("spikekd::rate_ste_backward", mutates_args={})
def _rate_ste_backward_op(grad: torch.Tensor, elig: torch.Tensor, dtype: torch.dtype, backend: str) -> torch.Tensor:
    if use_triton(backend, grad):
        return _scaled_copy(grad, elig, dtype)
    return reference.rate_ste_backward(grad, elig, dtype)


@_rate_ste_backward_op.register_fake
def _(grad, elig, dtype, backend):
    return grad.new_empty(grad.shape, dtype=dtype)


def _rate_ste_setup(ctx, inputs, output):
    current, _, elig, backend = inputs
    ctx.dtype, ctx.backend = current.dtype, backend
    ctx.save_for_backward(elig)


def _rate_ste_backward(ctx, grad):
    (elig,) = ctx.saved_tensors
    return torch.ops.spikekd.rate_ste_backward(grad, elig, ctx.dtype, ctx.backend), None, None, None


_rate_ste_op.register_autograd(_rate_ste_backward, setup_context=_rate_ste_setup)


class _EagerRateSTE(torch.autograd.Function):
    """rate_ste's Triton path outside torch.compile, without torch.library's dispatch (see `_EagerLIFMultistep` in
    kernels/lif.py)."""

    @staticmethod
    def forward(ctx, current, rate, elig):
        ctx.dtype = current.dtype
        ctx.save_for_backward(elig)
        return _scaled_copy(rate, None, current.dtype)

    @staticmethod
    def backward(ctx, grad):
        (elig,) = ctx.saved_tensors
        return _scaled_copy(grad, elig, ctx.dtype), None, None


def rate_ste(current: torch.Tensor, rate: torch.Tensor, elig: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """The rate neuron: returns `rate` (in current's dtype) with d out / d current = elig, elementwise.

    current [B, ...] is the rate stream's input current (with a graph); rate and elig come from `lif_rate` on the
    spike stream and carry no gradient.
    """
    for name, t in (("current", current), ("rate", rate), ("elig", elig)):
        check_floating(t, name)
    if not (current.shape == rate.shape == elig.shape):
        raise ValueError(
            "rate_ste needs current, rate and elig of one shape, got "
            f"current {tuple(current.shape)}, rate {tuple(rate.shape)}, elig {tuple(elig.shape)}"
        )
    check_same_device(current=current, rate=rate, elig=elig)
    check_backend(backend)
    if use_triton(backend, current) and not torch.compiler.is_compiling():
        return _EagerRateSTE.apply(current, rate.detach(), elig.detach())
    return torch.ops.spikekd.rate_ste(current, rate.detach(), elig.detach(), backend)
