"""lif_multistep: the LIF neuron over a whole sequence, differentiable by BPTT.

Layers: Triton kernels -> launchers -> `torch.ops.spikekd.lif_multistep{,_backward}` (triton_op, fake, autograd)
-> the public `lif_multistep`. The forward saves only the pre-reset potential H [T, ...] (in the storage dtype);
the backward recomputes spikes from it. Without a graph to build, H is not written at all.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from kernels import reference
from kernels.backend import check_backend, use_triton
from kernels.lif_step import charge, fire, reset, reset_grad, surrogate_grad
from kernels.options import LIFOptions, check_sequence

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _lif_forward_kernel(
    x_ptr,  # [T, N] input current X, storage dtype
    spikes_ptr,  # [T, N] out: spikes S
    h_ptr,  # [T, N] out: pre-reset potential H (only when STORE_H)
    n_neurons,  # N: neurons per timestep
    n_steps,  # T
    lam,  # 1 - 1/tau
    inv_tau,  # 1/tau
    v_threshold,  # th
    v_reset,  # vr (ignored for soft reset)
    HARD: tl.constexpr,  # hard reset to vr, else soft (subtract th)
    DECAY_INPUT: tl.constexpr,  # input scaled by 1/tau
    STORE_H: tl.constexpr,  # write H for the backward
    BLOCK: tl.constexpr,  # neurons per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_neurons
    v = tl.full((BLOCK,), 0.0, tl.float32)
    if HARD:
        v += v_reset
    for _ in range(n_steps):
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = charge(v, x, lam, inv_tau, v_reset, HARD, DECAY_INPUT)
        s = fire(h, v_threshold)
        tl.store(spikes_ptr + offs, s.to(spikes_ptr.dtype.element_ty), mask=mask)
        if STORE_H:
            tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
        v = reset(h, s, v_threshold, v_reset, HARD)
        x_ptr += n_neurons
        spikes_ptr += n_neurons
        h_ptr += n_neurons


# Backward, reverse in time, from the saved H (S_t = [H_t >= th], sg_t = surrogate(H_t - th)):
#   dL/dH_t = dL/dS_t sg_t + dL/dV_t dV_t/dH_t
#   dL/dX_t = g dL/dH_t            (g = 1/tau with decay_input, else 1)
#   dL/dV_{t-1} = lam dL/dH_t
@triton.jit
def _lif_backward_kernel(
    grad_spikes_ptr,  # [T, N] dL/dS
    h_ptr,  # [T, N] saved pre-reset potential H
    grad_x_ptr,  # [T, N] out: dL/dX
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
    BLOCK: tl.constexpr,  # neurons per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_neurons
    last = (n_steps - 1).to(tl.int64) * n_neurons
    grad_spikes_ptr += last
    h_ptr += last
    grad_x_ptr += last
    grad_v = tl.full((BLOCK,), 0.0, tl.float32)
    for _ in range(n_steps):
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        grad_s = tl.load(grad_spikes_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.where(h >= v_threshold, 1.0, 0.0)
        sg = surrogate_grad(h - v_threshold, alpha, SURROGATE)
        grad_h = grad_s * sg + grad_v * reset_grad(h, s, sg, v_threshold, v_reset, HARD, DETACH_RESET)
        tl.store(grad_x_ptr + offs, (grad_h * input_gain).to(grad_x_ptr.dtype.element_ty), mask=mask)
        grad_v = grad_h * lam
        grad_spikes_ptr -= n_neurons
        h_ptr -= n_neurons
        grad_x_ptr -= n_neurons


def _grid(n_neurons: int):
    return (triton.cdiv(n_neurons, BLOCK),)


def _forward_triton(x, tau, v_threshold, v_reset, decay_input, store_h):
    x = x.contiguous()
    spikes = torch.empty_like(x)
    h_seq = torch.empty_like(x) if store_h else x.new_empty(0)
    n_steps, n_neurons = x.shape[0], x[0].numel()
    if n_neurons > 0:
        wrap_triton(_lif_forward_kernel)[_grid(n_neurons)](
            x, spikes, h_seq if store_h else spikes, n_neurons, n_steps,
            1.0 - 1.0 / tau, 1.0 / tau, v_threshold, 0.0 if v_reset is None else v_reset,
            HARD=v_reset is not None, DECAY_INPUT=decay_input, STORE_H=store_h, BLOCK=BLOCK, num_warps=NUM_WARPS,
        )  # fmt: skip
    return spikes, h_seq


def _backward_triton(grad_spikes, h_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha):
    grad_spikes, h_seq = grad_spikes.contiguous(), h_seq.contiguous()
    grad_x = torch.empty_like(h_seq)
    n_steps, n_neurons = h_seq.shape[0], h_seq[0].numel()
    if n_neurons > 0:
        wrap_triton(_lif_backward_kernel)[_grid(n_neurons)](
            grad_spikes, h_seq, grad_x, n_neurons, n_steps,
            1.0 - 1.0 / tau, 1.0 / tau if decay_input else 1.0, v_threshold, 0.0 if v_reset is None else v_reset, alpha,
            HARD=v_reset is not None, DETACH_RESET=detach_reset, SURROGATE=surrogate_id, BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )  # fmt: skip
    return grad_x


@triton_op("spikekd::lif_multistep", mutates_args={})
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


@triton_op("spikekd::lif_multistep_backward", mutates_args={})
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
    backend: str,
) -> torch.Tensor:
    args = (tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha)
    if use_triton(backend, h_seq):
        return _backward_triton(grad_spikes, h_seq, *args)
    return reference.lif_backward(grad_spikes, h_seq, *args)


@_lif_multistep_backward_op.register_fake
def _(grad_spikes, h_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha, backend):
    return torch.empty_like(h_seq)


def _setup_context(ctx, inputs, output):
    x, *neuron_args, store_h, backend = inputs
    _, h_seq = output
    ctx.neuron_args = tuple(neuron_args)
    ctx.backend = backend
    ctx.store_h = store_h
    ctx.save_for_backward(h_seq)


def _backward(ctx, grad_spikes, _grad_h):
    if not ctx.store_h:
        raise RuntimeError("lif_multistep was called with store_h=False, so it kept no state to differentiate")
    (h_seq,) = ctx.saved_tensors
    grad_x = torch.ops.spikekd.lif_multistep_backward(grad_spikes, h_seq, *ctx.neuron_args, ctx.backend)
    return (grad_x,) + (None,) * 9


_lif_multistep_op.register_autograd(_backward, setup_context=_setup_context)


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
    gradient is needed. See DESIGN.md "The neuron (exact)" for the equations.
    """
    check_sequence(x)
    check_backend(backend)
    options = LIFOptions(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
    store_h = torch.is_grad_enabled() and x.requires_grad
    spikes, _ = torch.ops.spikekd.lif_multistep(x, *options.op_args(), store_h, backend)
    return spikes
