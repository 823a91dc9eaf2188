"""One step of the LIF neuron as Triton device functions, shared by the BPTT and rate-based kernels.

Each function mirrors its twin in `kernels/reference.py` operation for operation; all math is fp32.
"""

from kernels.triton_support import tl, triton

# Module-level constants a @jit function reads must be `tl.constexpr(...)` values: the compiler rejects a plain
# annotated global (the interpreter does not), and `python -m kernels.aot` checks every kernel against the compiler.
SURROGATE_SIGMOID = tl.constexpr(0)
SURROGATE_ATAN = tl.constexpr(1)
SURROGATE_TRIANGLE = tl.constexpr(2)


@triton.jit
def charge(v, x, lam, inv_tau, v_reset, HARD: tl.constexpr, DECAY_INPUT: tl.constexpr):
    """H_t from V_{t-1} and X_t (docs/design.md, "The neuron")."""
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
def store_potential(h, s, v_threshold, h_fired, h_rested, dtype: tl.constexpr):
    """H_t rounded to the storage dtype for the backward, kept on the side of th that S_t took: the backward
    recomputes S_t = [H_t >= th] from it and must see the forward's spike (a half-precision H within one rounding of
    th would flip it). h_fired / h_rested: the storage dtype's nearest values at or above / below th."""
    rounded = h.to(dtype).to(tl.float32)
    rounded = tl.where((s == 1.0) & (rounded < v_threshold), h_fired, rounded)
    rounded = tl.where((s == 0.0) & (rounded >= v_threshold), h_rested, rounded)
    return rounded.to(dtype)


@triton.jit
def reset(h, s, v_threshold, v_reset, HARD: tl.constexpr):
    """V_t from H_t and S_t."""
    if HARD:
        # A select, not (1 - S) H + S vr: an infinite H that fires resets to vr instead of 0 * inf = NaN; NaN stays.
        v = tl.where(s == 1.0, v_reset, h)
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
        tent = 1.0 / alpha - tl.abs(x)
        sg = tl.where(tent < 0.0, 0.0, tent) * (alpha * alpha)  # not tl.maximum, which turns NaN into 0
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
