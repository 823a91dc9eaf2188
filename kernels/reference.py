"""Pure-PyTorch twins of the Triton kernels: the CPU implementation and the test oracle.

Every function here computes in fp32 (fp64 for fp64 input) whatever the storage dtype and follows the kernels
operation for operation, so that spikes are bit-identical (the spike test `fire` excepted: the same values from
float arithmetic, which the CPU runs several times faster than a comparison into bool). Tensors are time-first
[T, ...].

The neuron (docs/design.md), per element, with lam = 1 - 1/tau, V_0 = v_reset or 0:
    decay_input=False: H_t = V_{t-1} - V_{t-1}/tau + X_t          (hard: V_{t-1} - (V_{t-1} - vr)/tau + X_t)
    decay_input=True:  H_t = V_{t-1} + (X_t - (V_{t-1} - vr))/tau  (vr = 0 for soft reset)
    S_t = [H_t >= th]
    soft: V_t = H_t - th S_t            hard: V_t = vr where S_t = 1, else H_t
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------------------------
# Surrogates of dS/dH at x = H - th, and their primitives (the smooth step they are the derivative of).
# ----------------------------------------------------------------------------------------------------------------


def surrogate_grad(x: torch.Tensor, surrogate_id: int, alpha: float) -> torch.Tensor:
    """sigmoid: a sig(ax)(1 - sig(ax)); atan: (a/2) / (1 + (pi/2 a x)^2); triangle: max(0, 1/a - |x|) a^2."""
    if surrogate_id == 0:
        sig = torch.sigmoid(alpha * x)
        return alpha * sig * (1.0 - sig)
    if surrogate_id == 1:
        return (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * x) ** 2)
    if surrogate_id == 2:
        return torch.clamp(1.0 / alpha - x.abs(), min=0.0) * (alpha * alpha)
    raise ValueError(f"surrogate_id must be 0 (sigmoid), 1 (atan) or 2 (triangle), got {surrogate_id!r}")


def surrogate_primitive(x: torch.Tensor, surrogate_id: int, alpha: float) -> torch.Tensor:
    """The function whose derivative is `surrogate_grad`: a smooth step from 0 to 1."""
    if surrogate_id == 0:
        return torch.sigmoid(alpha * x)
    if surrogate_id == 1:
        return torch.atan(math.pi / 2.0 * alpha * x) / math.pi + 0.5
    if surrogate_id == 2:
        inside = alpha * x - 0.5 * alpha * alpha * x * x.abs() + 0.5
        return torch.where(x <= -1.0 / alpha, 0.0, torch.where(x >= 1.0 / alpha, 1.0, inside))
    raise ValueError(f"surrogate_id must be 0 (sigmoid), 1 (atan) or 2 (triangle), got {surrogate_id!r}")


class _Heaviside(torch.autograd.Function):
    """S = [x >= 0] forward, surrogate_grad(x) backward: the autograd oracle of the hand-written backward."""

    @staticmethod
    def forward(ctx, x, surrogate_id, alpha):
        ctx.save_for_backward(x)
        ctx.surrogate = (surrogate_id, alpha)
        return fire(x, 0.0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(x, *ctx.surrogate), None, None


# ----------------------------------------------------------------------------------------------------------------
# One step of the neuron, shared by every twin below.
# ----------------------------------------------------------------------------------------------------------------


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def charge(v, x, tau, v_reset, decay_input, out=None):
    """H_t from V_{t-1} and X_t, written as the kernel writes it (scalars rounded to fp32 the same way); `out`, if
    given, receives it."""
    lam, inv_tau = 1.0 - 1.0 / tau, 1.0 / tau
    if decay_input:
        step = (x - v) * inv_tau if v_reset is None else (x - (v - v_reset)) * inv_tau
        return torch.add(v, step, out=out)
    if v_reset is None:
        return torch.add(lam * v, x, out=out)
    return torch.add(lam * v + x, float(np.float32(v_reset) * np.float32(inv_tau)), out=out)


def fire(h, v_threshold, out=None):
    """S_t = [H_t >= th] in h's dtype; a NaN potential fires NaN, so NaN input never turns into a silent zero. `out`,
    if given (h's dtype), receives it.

    Float ops only: the comparison written into a float tensor, then the max with clamp(H, -1, -0.5), which is NaN
    exactly where H is and below 0 elsewhere. (On the CPU, comparisons into bool tensors and `where` run about ten
    times slower than float arithmetic.)
    """
    s = torch.ge(h, v_threshold, out=torch.empty_like(h) if out is None else out)
    return torch.maximum(s, h.clamp(-1.0, -0.5), out=s)


def reset(h, s, v_threshold, v_reset):
    """V_t from H_t and S_t. The hard reset is a select, so that an infinite H that fires resets to vr (not
    0 * inf = NaN), and a NaN H stays NaN."""
    return h - v_threshold * s if v_reset is None else torch.where(s == 1.0, v_reset, h)


def _reset_differentiable(h, s, v_threshold, v_reset):
    """`reset` written so that autograd differentiates it through S as well (for the autograd oracle)."""
    return h - v_threshold * s if v_reset is None else (1.0 - s) * h + s * v_reset


@functools.lru_cache(maxsize=64)
def threshold_neighbours(v_threshold: float, dtype: torch.dtype) -> tuple[float, float]:
    """(the least value of `dtype` >= th, the greatest value of `dtype` < th), th rounded to fp32 as the kernels
    compare in fp32: where a potential stored in `dtype` must keep its spike or its rest."""
    th = torch.tensor(v_threshold, dtype=torch.float32)
    if dtype in (torch.float32, torch.float64):
        return float(th), float(torch.nextafter(th, torch.tensor(-math.inf)))
    rounded = th.to(dtype)
    step = rounded.view(torch.int16)  # a positive float: adjacent values are adjacent bit patterns
    if float(rounded) >= float(th):
        return float(rounded), float((step - 1).view(dtype))
    return float((step + 1).view(dtype)), float(rounded)


def store_potential(h: torch.Tensor, s: torch.Tensor, v_threshold: float, dtype: torch.dtype) -> torch.Tensor:
    """H rounded to `dtype`, kept on the side of th that S took, so that the backward's S = [H >= th] recomputed
    from it equals the forward's spike (half precision can round a potential across th)."""
    stored = h.to(dtype)
    if dtype == h.dtype:
        return stored
    fired, rested = threshold_neighbours(v_threshold, dtype)
    rounded = stored.to(h.dtype)
    stored = torch.where((s == 1.0) & (rounded < v_threshold), fired, rounded)
    return torch.where((s == 0.0) & (stored >= v_threshold), rested, stored).to(dtype)


def reset_grad(h, s, sg, v_threshold, v_reset, detach_reset):
    """dV_t/dH_t, with sg = dS_t/dH_t (the surrogate); a plain 1.0 where it is constant (s is unused with a soft
    reset)."""
    if v_reset is None:
        return 1.0 if detach_reset else 1.0 - v_threshold * sg
    return (1.0 - s) if detach_reset else (1.0 - s) + (v_reset - h) * sg


def _times(x, factor):
    """x * factor, skipping the multiplication where factor is the constant 1.0 (exact either way)."""
    return x if isinstance(factor, float) and factor == 1.0 else x * factor


def _slot(buffer, t, dtype):
    """buffer[t], where a step's result in `dtype` can be written directly; None where it must be cast (and copied)."""
    return buffer[t] if buffer.dtype == dtype else None


def _initial_v(x0: torch.Tensor, v_reset) -> torch.Tensor:
    return torch.full_like(x0, 0.0 if v_reset is None else v_reset)


# ----------------------------------------------------------------------------------------------------------------
# lif_multistep: forward (spikes, pre-reset potential H) and the BPTT backward.
# ----------------------------------------------------------------------------------------------------------------


def lif_forward(x, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha, store_h=True):
    """x [T, ...] -> (spikes [T, ...] in x.dtype, H [T, ...] in x.dtype, or an empty tensor when not store_h)."""
    cd = compute_dtype(x)
    spikes = torch.empty_like(x)
    h_seq = torch.empty_like(x) if store_h else x.new_empty(0)
    v = _initial_v(x[0], v_reset).to(cd)
    for t in range(x.shape[0]):
        h = charge(v, x[t].to(cd), tau, v_reset, decay_input, out=_slot(h_seq, t, cd) if store_h else None)
        s = fire(h, v_threshold, out=_slot(spikes, t, cd))
        if spikes.dtype != cd:
            spikes[t] = s
        if store_h and h_seq.dtype != cd:
            h_seq[t] = store_potential(h, s, v_threshold, h_seq.dtype)
        v = reset(h, s, v_threshold, v_reset)
    return spikes, h_seq


def lif_backward(grad_spikes, h_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha):
    """BPTT through the neuron, from the saved pre-reset potential H (spikes are recomputed as H >= th).

    dL/dH_t = dL/dS_t sg_t + dL/dV_t dV_t/dH_t;  dL/dV_{t-1} = lam dL/dH_t;  dL/dX_t = g dL/dH_t (g = 1 or 1/tau).
    """
    cd = compute_dtype(h_seq)
    lam = 1.0 - 1.0 / tau
    g = 1.0 / tau if decay_input else 1.0
    grad_x = torch.empty_like(h_seq)
    grad_v = torch.zeros_like(h_seq[0], dtype=cd)
    for t in reversed(range(h_seq.shape[0])):
        h = h_seq[t].to(cd)
        s = None if v_reset is None else fire(h, v_threshold)  # only the hard reset's gradient reads S
        sg = surrogate_grad(h - v_threshold, surrogate_id, alpha)
        grad_h = grad_spikes[t].to(cd) * sg
        grad_h += _times(grad_v, reset_grad(h, s, sg, v_threshold, v_reset, detach_reset))
        grad_x[t] = _times(grad_h, g)
        grad_v = grad_h * lam
    return grad_x


def lif_autograd(x, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha):
    """The same neuron written with autograd: the oracle of `lif_backward` (and of the Triton backward)."""
    cd = compute_dtype(x)
    v = _initial_v(x[0], v_reset).to(cd)
    out = []
    for t in range(x.shape[0]):
        h = charge(v, x[t].to(cd), tau, v_reset, decay_input)
        s = _Heaviside.apply(h - v_threshold, surrogate_id, alpha)
        v = _reset_differentiable(h, s.detach() if detach_reset else s, v_threshold, v_reset)
        out.append(s)
    return torch.stack(out).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Rate-based backprop: the spike pass (spikes, rate, eligibility), the rate neuron and the time mean.
# ----------------------------------------------------------------------------------------------------------------


def lif_rate(x, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_id, alpha, out=None):
    """x [T, ...] -> (spikes [T, ...] x.dtype, rate [...] fp32, elig [...] fp32), forward-mode, no graph.

    elig = d(mean_t S_t)/dc for a shift c added to every X_t:
        h'_t = lam v'_{t-1} + g,  v'_t = h'_t dV_t/dH_t,  elig = (1/T) sum_t sg_t h'_t.
    `out` (x's shape and dtype) receives the spikes; it may be x itself: S_t is written once X_t has been read.
    """
    cd = compute_dtype(x)
    n_steps = x.shape[0]
    lam = 1.0 - 1.0 / tau
    g = 1.0 / tau if decay_input else 1.0
    spikes = torch.empty_like(x) if out is None else out
    v = _initial_v(x[0], v_reset).to(cd)
    dv = torch.zeros_like(v)
    count = torch.zeros_like(v)
    elig = torch.zeros_like(v)
    for t in range(n_steps):
        h = charge(v, x[t].to(cd), tau, v_reset, decay_input)
        s = fire(h, v_threshold, out=_slot(spikes, t, cd))  # X_t has been read: S_t may take its place
        if spikes.dtype != cd:
            spikes[t] = s
        sg = surrogate_grad(h - v_threshold, surrogate_id, alpha)
        dh = lam * dv + g
        elig += sg * dh
        dv = _times(dh, reset_grad(h, s, sg, v_threshold, v_reset, detach_reset))
        v = reset(h, s, v_threshold, v_reset)
        count += s
    return spikes, (count / n_steps).to(cd), (elig / n_steps).to(cd)


def rate_reduce(s: torch.Tensor) -> torch.Tensor:
    """mean over time of s [T, ...] -> [...], accumulated and returned in fp32 (fp64 for fp64 input)."""
    cd = compute_dtype(s)
    acc = torch.zeros_like(s[0], dtype=cd)
    for t in range(s.shape[0]):
        acc = acc + s[t].to(cd)
    return acc / s.shape[0]


def rate_ste_backward(grad: torch.Tensor, elig: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """d rate_ste / d current = elig, elementwise, computed in fp32."""
    cd = torch.float64 if torch.float64 in (grad.dtype, elig.dtype) else torch.float32
    return (grad.to(cd) * elig.to(cd)).to(dtype)


# ----------------------------------------------------------------------------------------------------------------
# Poisson encoding with Triton's Philox-4x32-10 (tl.rand), reproduced bit for bit.
# ----------------------------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a * b) >> 32 and (a * b) & 0xFFFFFFFF for a 32-bit constant a and 32-bit values b held in int64."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    p_hi, p_lo = a * b_hi, a * b_lo  # each < 2^48: no int64 overflow
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi, lo


def philox_uniform(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """tl.rand(seed, offsets): uniform fp32 in [0, 1) from the first word of Philox-4x32-10."""
    c0, c1 = offsets & _MASK32, (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(offsets)
    c3 = torch.zeros_like(offsets)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _MASK32, (k1 + _PHILOX_KEY_B) & _MASK32
    signed = torch.where(c0 >= 2**31, c0 - 2**32, c0)  # bitcast to int32
    signed = torch.where(signed < 0, -signed - 1, signed)  # ~x
    return signed.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def poisson_encode(x: torch.Tensor, n_steps: int, seed: int) -> torch.Tensor:
    """x [B, ...] -> spikes [T, B, ...] in x.dtype, S[t, i] = [u(seed, t * N + i) < clamp(x_i, 0, 1)]."""
    numel = x.numel()
    offsets = torch.arange(n_steps * numel, dtype=torch.int64, device=x.device)
    u = philox_uniform(seed, offsets).view(n_steps, *x.shape)
    p = x.to(torch.float32).clamp(0.0, 1.0)
    # NaN probability gives NaN spikes (never a silent zero), as in the kernel.
    return torch.where(p.isnan(), float("nan"), (u < p).to(torch.float32)).to(x.dtype)
