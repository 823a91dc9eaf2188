"""lif_multistep: the LIF neuron over a whole sequence, differentiable by BPTT.

Layers: Triton kernels -> launchers -> `torch.ops.spikekd.lif_multistep{,_backward}` (custom_op, fake, autograd)
-> the public `lif_multistep`. The forward saves only the pre-reset potential H [T, ...] (in the storage dtype);
the backward recomputes spikes from it. Without a graph to build, H is not written at all.

The kernels are compiled with `enable_fp_fusion=False` (`kernels/launch.py`): `lam * v + x` rounds after the multiply
and after the add, as the PyTorch twin and SpikingJelly do, so spikes are bit-identical to theirs on the GPU.
"""

from __future__ import annotations

import torch
from torch.library import custom_op

from kernels import reference
from kernels.backend import check_backend, use_triton
from kernels.launch import element_offsets, launch, readable_sequence
from kernels.lif_step import charge, fire, reset, reset_grad, store_potential, surrogate_grad
from kernels.options import check_sequence, neuron_args
from kernels.triton_support import tl, triton


@triton.jit
def _lif_forward_kernel(
    x_ptr,  # [T, N] input current X, storage dtype, any layout of `kernels.launch`
    x_t_stride,  # elements between X_t and X_{t+1} (0: constant in time)
    x_cols,  # step layout of X: element i at (i // cols) * row_stride + (i % cols) * col_stride
    x_row_stride,
    x_col_stride,
    spikes_ptr,  # [T, N] out: spikes S, contiguous
    h_ptr,  # [T, N] out: pre-reset potential H, contiguous (only when STORE_H)
    n_neurons,  # N: neurons per timestep
    n_steps,  # T
    lam,  # 1 - 1/tau
    inv_tau,  # 1/tau
    v_threshold,  # th
    v_reset,  # vr (ignored for soft reset)
    h_fired,  # the least H in storage dtype that fires (>= th): stored H of a spike that rounded below th
    h_rested,  # the greatest H in storage dtype below th: stored H of a rest that rounded up to th
    HARD: tl.constexpr,  # hard reset to vr, else soft (subtract th)
    DECAY_INPUT: tl.constexpr,  # input scaled by 1/tau
    STORE_H: tl.constexpr,  # write H for the backward
    BLOCK: tl.constexpr,  # neurons per program
):
    # fp32 scalars whatever the caller passes (torch.compile's generated launcher passes Python floats as fp64)
    lam = tl.cast(lam, tl.float32)
    inv_tau = tl.cast(inv_tau, tl.float32)
    v_threshold = tl.cast(v_threshold, tl.float32)
    v_reset = tl.cast(v_reset, tl.float32)
    h_fired = tl.cast(h_fired, tl.float32)
    h_rested = tl.cast(h_rested, tl.float32)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_neurons
    x_offs = element_offsets(offs, x_cols, x_row_stride, x_col_stride)
    v = tl.full((BLOCK,), 0.0, tl.float32)
    if HARD:
        v += v_reset
    for _ in range(n_steps):
        x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
        h = charge(v, x, lam, inv_tau, v_reset, HARD, DECAY_INPUT)
        s = fire(h, v_threshold)
        tl.store(spikes_ptr + offs, s.to(spikes_ptr.dtype.element_ty), mask=mask)
        if STORE_H:
            stored = store_potential(h, s, v_threshold, h_fired, h_rested, h_ptr.dtype.element_ty)
            tl.store(h_ptr + offs, stored, mask=mask)
        v = reset(h, s, v_threshold, v_reset, HARD)
        x_ptr += x_t_stride
        spikes_ptr += n_neurons
        h_ptr += n_neurons


# Backward, reverse in time, from the saved H (S_t = [H_t >= th], sg_t = surrogate(H_t - th)):
#   dL/dH_t = dL/dS_t sg_t + dL/dV_t dV_t/dH_t
#   dL/dX_t = g dL/dH_t            (g = 1/tau with decay_input, else 1)
#   dL/dV_{t-1} = lam dL/dH_t
# For an input constant in time (SUM_OVER_T) the kernel writes sum_t dL/dX_t [N] in fp32 instead.
@triton.jit
def _lif_backward_kernel(
    grad_spikes_ptr,  # [T, N] dL/dS, storage dtype, any layout of `kernels.launch`
    grad_t_stride,  # elements between dL/dS_t and dL/dS_{t+1}
    grad_cols,  # step layout of dL/dS
    grad_row_stride,
    grad_col_stride,
    h_ptr,  # [T, N] saved pre-reset potential H, contiguous
    grad_x_ptr,  # out: [T, N] dL/dX, or [N] sum_t dL/dX_t in fp32 with SUM_OVER_T
    n_neurons,  # N
    n_steps,  # T
    lam,  # 1 - 1/tau
    input_gain,  # g = dH/dX
    v_threshold,  # th
    v_reset,  # vr (ignored for soft reset)
    alpha,  # surrogate sharpness
    HARD: tl.constexpr,  # hard reset
    DETACH_RESET: tl.constexpr,  # no gradient through the spike in the reset
    SURROGATE: tl.constexpr,  # 0 sigmoid, 1 atan, 2 triangle
    SUM_OVER_T: tl.constexpr,  # the input was constant in time: write the gradient summed over T
    BLOCK: tl.constexpr,  # neurons per program
):
    # fp32 scalars whatever the caller passes (torch.compile's generated launcher passes Python floats as fp64)
    lam = tl.cast(lam, tl.float32)
    input_gain = tl.cast(input_gain, tl.float32)
    v_threshold = tl.cast(v_threshold, tl.float32)
    v_reset = tl.cast(v_reset, tl.float32)
    alpha = tl.cast(alpha, tl.float32)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_neurons
    grad_offs = element_offsets(offs, grad_cols, grad_row_stride, grad_col_stride)
    last = tl.cast(n_steps - 1, tl.int64)  # n_steps may arrive as the constant 1 (Triton specialises ints equal to 1)
    grad_spikes_ptr += last * grad_t_stride
    h_ptr += last * n_neurons
    if not SUM_OVER_T:
        grad_x_ptr += last * n_neurons
    grad_v = tl.full((BLOCK,), 0.0, tl.float32)
    grad_x_sum = tl.full((BLOCK,), 0.0, tl.float32)
    for _ in range(n_steps):
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        grad_s = tl.load(grad_spikes_ptr + grad_offs, mask=mask, other=0.0).to(tl.float32)
        s = fire(h, v_threshold)
        sg = surrogate_grad(h - v_threshold, alpha, SURROGATE)
        grad_h = grad_s * sg + grad_v * reset_grad(h, s, sg, v_threshold, v_reset, HARD, DETACH_RESET)
        if SUM_OVER_T:
            grad_x_sum += grad_h * input_gain
        else:
            tl.store(grad_x_ptr + offs, (grad_h * input_gain).to(grad_x_ptr.dtype.element_ty), mask=mask)
            grad_x_ptr -= n_neurons
        grad_v = grad_h * lam
        grad_spikes_ptr -= grad_t_stride
        h_ptr -= n_neurons
    if SUM_OVER_T:
        tl.store(grad_x_ptr + offs, grad_x_sum.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _forward_triton(x, tau, v_threshold, v_reset, decay_input, store_h):
    x, t_stride, layout = readable_sequence(x)
    spikes = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h_seq = torch.empty_like(spikes) if store_h else x.new_empty(0)
    n_steps, n_neurons = x.shape[0], x[0].numel()
    if n_neurons > 0:
        h_fired, h_rested = reference.threshold_neighbours(v_threshold, x.dtype)
        launch(
            _lif_forward_kernel, n_neurons,
            x, t_stride, *layout.args(), spikes, h_seq if store_h else spikes, n_neurons, n_steps,
            1.0 - 1.0 / tau, 1.0 / tau, v_threshold, 0.0 if v_reset is None else v_reset, h_fired, h_rested,
            HARD=v_reset is not None, DECAY_INPUT=decay_input, STORE_H=store_h,
        )  # fmt: skip
    return spikes, h_seq


def _backward_triton(
    grad_spikes, h_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha, sum_over_t
):
    grad_spikes, t_stride, layout = readable_sequence(grad_spikes)
    n_steps, n_neurons = h_seq.shape[0], h_seq[0].numel()
    if sum_over_t:
        grad_x = torch.empty(h_seq.shape[1:], dtype=reference.compute_dtype(h_seq), device=h_seq.device)
    else:
        grad_x = torch.empty_like(h_seq)
    if n_neurons > 0:
        launch(
            _lif_backward_kernel, n_neurons,
            grad_spikes, t_stride, *layout.args(), h_seq, grad_x, n_neurons, n_steps,
            1.0 - 1.0 / tau, 1.0 / tau if decay_input else 1.0, v_threshold, 0.0 if v_reset is None else v_reset, alpha,
            HARD=v_reset is not None, DETACH_RESET=detach_reset, SURROGATE=surrogate_id, SUM_OVER_T=sum_over_t,
        )  # fmt: skip
    return grad_x


@custom_op("spikekd::lif_multistep", mutates_args={})
def _lif_multistep_op(
    x: torch.Tensor,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    detach_reset: bool,
    surrogate_id: int,
    alpha: float,
    store_h: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(backend, x):
        return _forward_triton(x, tau, v_threshold, v_reset, decay_input, store_h)
    return reference.lif_forward(x, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha, store_h)


@_lif_multistep_op.register_fake
def _(x, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha, store_h, backend):
    return torch.empty_like(x), (torch.empty_like(x) if store_h else x.new_empty(0))


@custom_op("spikekd::lif_multistep_backward", mutates_args={})
def _lif_multistep_backward_op(
    grad_spikes: torch.Tensor,
    h_seq: torch.Tensor,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    detach_reset: bool,
    surrogate_id: int,
    alpha: float,
    sum_over_t: bool,
    backend: str,
) -> torch.Tensor:
    """dL/dX [T, ...] in H's dtype, or with `sum_over_t` sum_t dL/dX_t [...] in fp32 (fp64 for fp64)."""
    args = (tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha)
    if use_triton(backend, h_seq):
        return _backward_triton(grad_spikes, h_seq, *args, sum_over_t)
    grad_x = reference.lif_backward(grad_spikes, h_seq, *args)
    return grad_x.sum(0, dtype=reference.compute_dtype(h_seq)) if sum_over_t else grad_x


@_lif_multistep_backward_op.register_fake
def _(
    grad_spikes, h_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha, sum_over_t, backend
):
    if sum_over_t:
        return h_seq.new_empty(h_seq.shape[1:], dtype=reference.compute_dtype(h_seq))
    return torch.empty_like(h_seq)


def is_constant_in_time(x: torch.Tensor) -> bool:
    """x [T, ...] is one step repeated (a view expanded over T, time stride 0)."""
    return x.shape[0] > 1 and x.stride(0) == 0


def _setup_context(ctx, inputs, output):
    x, *neuron_args, store_h, backend = inputs
    _, h_seq = output
    ctx.neuron_args = tuple(neuron_args)
    ctx.backend = backend
    ctx.store_h = store_h
    _remember_input(ctx, x)
    ctx.save_for_backward(h_seq)


def _remember_input(ctx, x: torch.Tensor) -> None:
    """What `_input_gradient` needs of the input: its shape, dtype and whether it is constant in time."""
    ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
    ctx.sum_over_t = is_constant_in_time(x)


def _input_gradient(ctx, grad_x: torch.Tensor) -> torch.Tensor:
    """dL/dX in x's shape. For an input constant in time the gradient left the kernel summed over T; it is returned
    as its mean repeated over T (a view, no [T, ...] copy), and autograd's sum through the expand gives the sum."""
    if ctx.sum_over_t:
        return (grad_x / ctx.x_shape[0]).to(ctx.x_dtype).unsqueeze(0).expand(ctx.x_shape)
    return grad_x


def _backward(ctx, grad_spikes, _grad_h):
    if not ctx.store_h:
        raise RuntimeError("lif_multistep was called with store_h=False, so it kept no state to differentiate")
    (h_seq,) = ctx.saved_tensors
    grad_x = torch.ops.spikekd.lif_multistep_backward(grad_spikes, h_seq, *ctx.neuron_args, ctx.sum_over_t, ctx.backend)
    return (_input_gradient(ctx, grad_x),) + (None,) * 9


_lif_multistep_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLIFMultistep(torch.autograd.Function):
    """The Triton path outside torch.compile: the same launchers as the op, without torch.library's dispatch and
    autograd wrapper, which cost more host time per call than a kernel over a CIFAR layer takes on a GPU. The op
    stays what torch.compile traces and what `torch.library.opcheck` checks."""

    @staticmethod
    def forward(ctx, x, args, store_h):
        spikes, h_seq = _forward_triton(x, *args[:4], store_h)
        ctx.neuron_args = args
        _remember_input(ctx, x)
        if store_h:
            ctx.save_for_backward(h_seq)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        (h_seq,) = ctx.saved_tensors
        grad_x = _backward_triton(grad_spikes, h_seq, *ctx.neuron_args, ctx.sum_over_t)
        return _input_gradient(ctx, grad_x), None, None


def lif_multistep(
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
) -> torch.Tensor:
    """Spikes S [T, ...] (x.dtype) of the LIF neuron driven by x [T, ...], from V_0 = v_reset or 0.

    Differentiable by BPTT with the surrogate's dS/dH; keeps one [T, ...] tensor for the backward, none when no
    gradient is needed. x may be any strided view: one expanded over T (a direct-encoded input) is read without a
    copy, and its gradient is summed over T inside the kernel. See docs/design.md, "The neuron", for the equations.
    """
    check_sequence(x)
    check_backend(backend)
    args = neuron_args(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
    store_h = torch.is_grad_enabled() and x.requires_grad
    if use_triton(backend, x) and not torch.compiler.is_compiling():
        return _EagerLIFMultistep.apply(x, args, store_h)
    spikes, _ = torch.ops.spikekd.lif_multistep(x, *args, store_h, backend)
    return spikes
