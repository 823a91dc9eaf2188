"""lif_multistep, lif_rate and lif_rate_: the Triton kernels (interpreted on CPU) against their PyTorch twins."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import lif_multistep, lif_rate, lif_rate_, reference
from kernels.options import LIFOptions

# (reset, detach_reset, decay_input, surrogate): the whole grid of the neuron's code paths.
GRID = list(itertools.product([None, -0.2], [True, False], [False, True], ["sigmoid", "atan", "triangle"]))
GRID_IDS = [f"vr={vr}-detach={d}-decay={di}-{sg}" for vr, d, di, sg in GRID]

# Shapes: T=1, an odd neuron count, several trailing dims.
SHAPES = [(1, 3, 5), (4, 1023), (6, 2, 3, 7)]

# Per dtype: tolerance of gradients against the fp32/fp64 oracle. fp16 stores H and gradients in half precision.
DTYPES = [
    (torch.float32, 1e-5, 1e-6),
    (torch.float16, 2e-3, 2e-3),
    pytest.param(torch.bfloat16, 2e-2, 2e-2, marks=pytest.mark.cuda),
]


# The kernels run on CUDA where there is one, else under the Triton interpreter on the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Surrogate values on CUDA: Triton's exp and PyTorch's CUDA sigmoid differ in the last bits (the interpreter and the
# CPU twin both use numpy/PyTorch's CPU math).
SURROGATE_RTOL = 1e-4 if DEVICE == "cuda" else 1e-5


def _device(dtype):
    return "cuda" if dtype == torch.bfloat16 else DEVICE


def _current(shape, dtype=torch.float32, device=DEVICE, seed=0):
    """Input currents spread around the threshold so that every code path fires and rests."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 1.2 + 0.4).to(dtype=dtype, device=device)


def _kwargs(v_reset, detach_reset, decay_input, surrogate, **extra):
    return dict(v_reset=v_reset, detach_reset=detach_reset, decay_input=decay_input, surrogate=surrogate, **extra)


def _oracle_args(kw):
    return LIFOptions(**kw).op_args()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("v_reset,detach_reset,decay_input,surrogate", GRID, ids=GRID_IDS)
def test_lif_multistep_matches_reference(shape, v_reset, detach_reset, decay_input, surrogate):
    kw = _kwargs(v_reset, detach_reset, decay_input, surrogate, tau=1.7)
    x = _current(shape)
    x_triton = x.clone().requires_grad_()
    x_oracle = x.clone().requires_grad_()
    spikes = lif_multistep(x_triton, backend="triton", **kw)
    expected = reference.lif_autograd(x_oracle, *_oracle_args(kw))
    torch.testing.assert_close(spikes, expected, rtol=0, atol=0)
    assert 0 < spikes.mean() < 1, "the grid should exercise both firing and resting"

    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    (grad_triton,) = torch.autograd.grad(spikes, x_triton, grad_out)
    (grad_oracle,) = torch.autograd.grad(expected, x_oracle, grad_out)
    torch.testing.assert_close(grad_triton, grad_oracle, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("v_reset,detach_reset,decay_input,surrogate", GRID, ids=GRID_IDS)
def test_reference_backward_matches_autograd(v_reset, detach_reset, decay_input, surrogate):
    """The hand-written reverse loop of the twin against autograd through the same forward, in float64."""
    kw = _kwargs(v_reset, detach_reset, decay_input, surrogate, tau=3.0, alpha=1.5)
    x = _current((5, 4, 9)).double().requires_grad_()
    grad_out = torch.randn(5, 4, 9, dtype=torch.float64, device=DEVICE)
    spikes = lif_multistep(x, backend="reference", **kw)
    (grad,) = torch.autograd.grad(spikes, x, grad_out)
    (expected,) = torch.autograd.grad(reference.lif_autograd(x, *_oracle_args(kw)), x, grad_out)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,rtol,atol", DTYPES)
def test_lif_multistep_storage_dtypes(dtype, rtol, atol):
    device = _device(dtype)
    x = _current((5, 3, 33), dtype, device).requires_grad_()
    spikes = lif_multistep(x, backend="triton")
    assert spikes.dtype == dtype
    expected, _ = reference.lif_forward(x.detach(), *LIFOptions().op_args())
    torch.testing.assert_close(spikes, expected, rtol=0, atol=0)

    grad_out = torch.randn_like(x)
    (grad,) = torch.autograd.grad(spikes, x, grad_out)
    x64 = x.detach().double().requires_grad_()
    (grad64,) = torch.autograd.grad(reference.lif_autograd(x64, *LIFOptions().op_args()), x64, grad_out.double())
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.double(), grad64, rtol=rtol, atol=atol)


def test_lif_multistep_non_contiguous_input():
    base = _current((7, 4, 6)).requires_grad_()
    x = base.transpose(0, 1)[:, ::2]  # [4, 4, 6]... time-first view with strides
    assert not x.is_contiguous()
    spikes = lif_multistep(x, backend="triton")
    expected = lif_multistep(x.detach().contiguous(), backend="reference")
    torch.testing.assert_close(spikes, expected, rtol=0, atol=0)
    grad_out = torch.randn_like(spikes).transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous gradient
    (grad,) = torch.autograd.grad(spikes, base, grad_out)
    x_ref = x.detach().clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad(lif_multistep(x_ref, backend="reference"), x_ref, grad_out)
    torch.testing.assert_close(grad.transpose(0, 1)[:, ::2], grad_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("v_reset,detach_reset,decay_input,surrogate", GRID, ids=GRID_IDS)
def test_lif_rate_matches_reference(shape, v_reset, detach_reset, decay_input, surrogate):
    kw = _kwargs(v_reset, detach_reset, decay_input, surrogate, tau=2.5)
    x = _current(shape)
    spikes, rate, elig = lif_rate(x, backend="triton", **kw)
    spikes_ref, rate_ref, elig_ref = reference.lif_rate(x, *_oracle_args(kw))
    torch.testing.assert_close(spikes, spikes_ref, rtol=0, atol=0)
    torch.testing.assert_close(spikes, lif_multistep(x, backend="reference", **kw), rtol=0, atol=0)
    assert rate.dtype == elig.dtype == torch.float32
    torch.testing.assert_close(rate, spikes.mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(elig, elig_ref, rtol=SURROGATE_RTOL, atol=1e-7)


@pytest.mark.parametrize("v_reset,detach_reset,decay_input,surrogate", GRID, ids=GRID_IDS)
def test_eligibility_is_bptt_gradient_of_mean_spikes(v_reset, detach_reset, decay_input, surrogate):
    """The invariant of docs/design.md, "The operators": elig = sum_t d(mean_t S_t)/dX_t, the BPTT input gradient
    for a shift of every X_t."""
    kw = _kwargs(v_reset, detach_reset, decay_input, surrogate, tau=2.0)
    x = _current((8, 3, 17))
    _, _, elig = lif_rate(x, backend="triton", **kw)
    x_grad = x.clone().requires_grad_()
    lif_multistep(x_grad, backend="triton", **kw).mean(0).sum().backward()
    torch.testing.assert_close(elig, x_grad.grad.sum(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,rtol,atol", DTYPES)
def test_lif_rate_storage_dtypes(dtype, rtol, atol):
    device = _device(dtype)
    x = _current((6, 2, 45), dtype, device)
    spikes, rate, elig = lif_rate(x, backend="triton")
    spikes_ref, rate_ref, elig_ref = reference.lif_rate(x, *LIFOptions().op_args())
    assert spikes.dtype == dtype and rate.dtype == torch.float32
    torch.testing.assert_close(spikes, spikes_ref, rtol=0, atol=0)
    torch.testing.assert_close(rate, rate_ref, rtol=0, atol=0)
    torch.testing.assert_close(elig, elig_ref, rtol=SURROGATE_RTOL, atol=1e-6)


def test_lif_rate_non_contiguous_input():
    x = _current((9, 6, 5)).transpose(1, 2)
    assert not x.is_contiguous()
    expected = reference.lif_rate(x.contiguous(), *LIFOptions().op_args())
    for got, want in zip(lif_rate(x, backend="triton"), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("v_reset,detach_reset,decay_input,surrogate", GRID[::5], ids=GRID_IDS[::5])
def test_lif_rate_in_place_equals_lif_rate(backend, shape, v_reset, detach_reset, decay_input, surrogate):
    """lif_rate_ writes the spikes over its input: the same bits as lif_rate, in x's own storage."""
    kw = _kwargs(v_reset, detach_reset, decay_input, surrogate, tau=2.5)
    x = _current(shape)
    expected = lif_rate(x, backend=backend, **kw)
    buffer = x.clone()
    spikes, rate, elig = lif_rate_(buffer, backend=backend, **kw)
    assert spikes.data_ptr() == buffer.data_ptr()
    for got, want in zip((buffer, rate, elig), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(spikes, expected[0], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_lif_rate_in_place_storage_dtypes_and_strides(backend, dtype):
    """In x's dtype; a non-contiguous x (a transposed view) is written through, as the op declares."""
    x = _current((7, 6, 5), dtype).transpose(1, 2)
    expected = lif_rate(x, backend=backend)
    base = x.clone().transpose(1, 2)  # same strides as x, a buffer of its own
    view = base.transpose(1, 2)
    assert not view.is_contiguous()
    _, rate, elig = lif_rate_(view, backend=backend)
    for got, want in zip((view, rate, elig), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_nan_in_nan_out(backend):
    x = _current((4, 2, 8))
    x[1, 0, 3] = float("nan")
    spikes = lif_multistep(x, backend=backend)
    assert spikes[1:, 0, 3].isnan().all(), "a NaN current must poison the neuron, not read as 'no spike'"
    assert not spikes[0].isnan().any() and not spikes[:, 1].isnan().any()
    spikes_rate, rate, elig = lif_rate(x, backend=backend)
    assert spikes_rate[1:, 0, 3].isnan().all() and rate[0, 3].isnan() and elig[0, 3].isnan()


@pytest.mark.parametrize("v_reset", [None, 0.0], ids=["soft", "hard"])
def test_special_values_fire_alike(v_reset):
    """+-inf, NaN, the threshold itself and signed zeros: the kernel and the twin (whose spike test is float
    arithmetic, not a comparison into bool) give the same spikes, NaN where the kernel gives NaN."""
    specials = [float("inf"), float("-inf"), float("nan"), 1.0, 0.0, -0.0, 2.0, 0.5, 3.4e38, -3.4e38, 1e-45]
    x = torch.tensor(specials, device=DEVICE).repeat(3, 1)
    x[1] = 0.5  # the second step starts from each special potential
    for fn in (lif_multistep, lambda x, **kw: lif_rate(x, **kw)[0]):
        kernel, twin = fn(x, v_reset=v_reset, backend="triton"), fn(x, v_reset=v_reset, backend="reference")
        torch.testing.assert_close(kernel, twin, rtol=0, atol=0, equal_nan=True)
        assert kernel[0, 0] == 1 and kernel[0, 1] == 0 and kernel[0, 2].isnan() and kernel[0, 3] == 1
        for spikes in (kernel, twin):
            assert not spikes[~spikes.isnan()].signbit().any()  # no -0.0 spikes


def test_hard_reset_potential_starts_at_reset():
    """V_0 = vr: with vr = 0.9 and th = 1, a current of 0.15 fires at once (hard, no decay: H = lam vr + x + vr/tau)."""
    x = torch.full((2, 1, 4), 0.15, device=DEVICE)
    spikes = lif_multistep(x, v_reset=0.9, backend="triton")
    assert spikes[0].eq(1).all()
    assert lif_multistep(x, backend="triton")[0].eq(0).all()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    n_steps=st.integers(1, 9),
    trailing=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    tau=st.floats(1.0, 8.0),
    v_threshold=st.floats(0.1, 2.0),
    v_reset=st.one_of(st.none(), st.floats(-1.0, 0.5)),
    decay_input=st.booleans(),
    detach_reset=st.booleans(),
    surrogate=st.sampled_from(["sigmoid", "atan", "triangle"]),
    alpha=st.one_of(st.none(), st.floats(0.3, 6.0)),
    seed=st.integers(0, 2**16),
)
def test_kernels_match_reference_on_random_settings(
    n_steps, trailing, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, seed
):
    kw = dict(tau=tau, v_threshold=v_threshold, v_reset=v_reset, decay_input=decay_input)
    kw.update(detach_reset=detach_reset, surrogate=surrogate, alpha=alpha)
    x = _current((n_steps, *trailing), seed=seed).requires_grad_()
    spikes = lif_multistep(x, backend="triton", **kw)
    x_ref = x.detach().clone().requires_grad_()
    expected = lif_multistep(x_ref, backend="reference", **kw)
    torch.testing.assert_close(spikes, expected, rtol=0, atol=0)
    grad_out = torch.randn_like(spikes)
    (grad,) = torch.autograd.grad(spikes, x, grad_out)
    (grad_ref,) = torch.autograd.grad(expected, x_ref, grad_out)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(lif_rate(x, backend="triton", **kw), lif_rate(x, backend="reference", **kw), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
