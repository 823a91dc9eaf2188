"""One step of the LIF neuron as Triton device functions, shared by the BPTT and rate-based kernels.

Each function mirrors its twin in `kernels/reference.py` operation for operation; all math is fp32.
"""

import triton
import triton.language as tl

SURROGATE_SIGMOID: tl.constexpr = 0
SURROGATE_ATAN: tl.constexpr = 1
SURROGATE_TRIANGLE: tl.constexpr = 2


@triton.jit
def charge(v, x, lam, inv_tau, v_reset, HARD: tl.constexpr, DECAY_INPUT: tl.constexpr):
    """H_t from V_{t-1} and X_t (DESIGN.md, "The neuron")."""
    if DECAY_INPUT:
        if HARD:
            h = v + (x - (v - v_reset)) * inv_tau
        else:
            h = v + (x - v) * inv_tau
    else:
        if HARD:
            h = lam * v + x + v_reset * inv_tau
        else:
            h = lam * v + x
    return h


@triton.jit
def fire(h, v_threshold):
    """S_t = [H_t >= th]; NaN stays NaN so that bad input is never a silent zero."""
    s = tl.where(h >= v_threshold, 1.0, 0.0)
    return tl.where(h != h, h, s)


@triton.jit
def reset(h, s, v_threshold, v_reset, HARD: tl.constexpr):
    """V_t from H_t and S_t."""
    if HARD:
        v = (1.0 - s) * h + s * v_reset
    else:
        v = h - v_threshold * s
    return v


@triton.jit
def surrogate_grad(x, alpha, SURROGATE: tl.constexpr):
    """dS/dH at x = H - th: sigmoid a sig(ax)(1-sig(ax)); atan (a/2)/(1+(pi/2 a x)^2); triangle max(0,1/a-|x|) a^2."""
    if SURROGATE == SURROGATE_SIGMOID:
        sig = 1.0 / (1.0 + tl.exp(-(alpha * x)))
        sg = alpha * sig * (1.0 - sig)
    elif SURROGATE == SURROGATE_ATAN:
        z = 1.5707963267948966 * alpha * x
        sg = (alpha / 2.0) / (1.0 + z * z)
    else:
        sg = tl.maximum(1.0 / alpha - tl.abs(x), 0.0) * (alpha * alpha)
    return sg


@triton.jit
def reset_grad(h, s, sg, v_threshold, v_reset, HARD: tl.constexpr, DETACH_RESET: tl.constexpr):
    """dV_t/dH_t given sg = dS_t/dH_t; with DETACH_RESET the spike in the reset term carries no gradient."""
    if HARD:
        if DETACH_RESET:
            d = 1.0 - s
        else:
            d = (1.0 - s) + (v_reset - h) * sg
    else:
        if DETACH_RESET:
            d = tl.full(h.shape, 1.0, tl.float32)
        else:
            d = 1.0 - v_threshold * sg
    return d
