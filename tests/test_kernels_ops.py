"""The ops as PyTorch sees them: opcheck, torch.compile, saved state, surrogates, rate_ste/rate_reduce, bad input."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import lif_multistep, lif_rate, poisson_encode, rate_reduce, rate_ste, reference
from kernels.options import SURROGATES, LIFOptions

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["triton", "reference"]
# The kernels run on CUDA where there is one, else under the Triton interpreter on the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _current(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 1.2 + 0.4).to(DEVICE)


# --- torch.library: every opcheck test on every op and backend, torch.compile(fullgraph=True) -------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v_reset,surrogate", [(None, "sigmoid"), (0.0, "triangle")])
def test_opcheck_lif_ops(backend, v_reset, surrogate):
    args = LIFOptions(v_reset=v_reset, surrogate=surrogate, detach_reset=False).op_args()
    x = _current((3, 2, 5)).requires_grad_()
    torch.library.opcheck(torch.ops.spikekd.lif_multistep.default, (x, *args, True, backend))
    torch.library.opcheck(torch.ops.spikekd.lif_multistep.default, (x.detach(), *args, False, backend))
    _, h_seq = torch.ops.spikekd.lif_multistep(x.detach(), *args, True, backend)
    grad = torch.randn(3, 2, 5, device=DEVICE)
    for sum_over_t in (False, True):
        torch.library.opcheck(
            torch.ops.spikekd.lif_multistep_backward.default, (grad, h_seq, *args, sum_over_t, backend)
        )
    expanded = x.detach()[:1].expand(3, 2, 5).requires_grad_()
    torch.library.opcheck(torch.ops.spikekd.lif_multistep.default, (expanded, *args, True, backend))
    torch.library.opcheck(torch.ops.spikekd.lif_rate.default, (x.detach(), *args, backend))
    torch.library.opcheck(torch.ops.spikekd.lif_rate_.default, (x.detach().clone(), *args, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_rate_and_encode_ops(backend):
    current = torch.randn(4, 6, device=DEVICE, requires_grad=True)
    rate, elig = torch.rand(4, 6, device=DEVICE), torch.rand(4, 6, device=DEVICE)
    torch.library.opcheck(torch.ops.spikekd.rate_ste.default, (current, rate, elig, backend))
    grad = torch.randn(4, 6, device=DEVICE)
    torch.library.opcheck(torch.ops.spikekd.rate_ste_backward.default, (grad, elig, torch.float32, backend))
    s = torch.randn(5, 4, 3, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.spikekd.rate_reduce.default, (s, backend))
    torch.library.opcheck(torch.ops.spikekd.poisson_encode.default, (torch.rand(3, 7, device=DEVICE), 4, 11, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_matches_eager(backend):
    def step(x, weight):
        spikes = lif_multistep(x * weight, surrogate="atan", v_reset=0.0, backend=backend)
        s_rate, rate, elig = lif_rate(x * weight, backend=backend)
        current = (x * weight).mean(0)
        reduced = rate_reduce(s_rate, backend=backend)
        return spikes.sum() + rate_ste(current, rate, elig, backend=backend).sum() + reduced.sum()

    x = _current((4, 3, 8))
    weight = torch.tensor(1.3, device=DEVICE, requires_grad=True)
    eager = step(x, weight)
    (grad_eager,) = torch.autograd.grad(eager, weight)
    compiled = torch.compile(step, fullgraph=True)(x, weight)
    (grad_compiled,) = torch.autograd.grad(compiled, weight)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=1e-5, atol=1e-5)


def test_import_does_not_load_inductor():
    """The ops register without torch._inductor (a second of import time); only torch.compile brings it in."""
    code = "import sys, kernels, models, distill.run; print(sorted(m for m in sys.modules if 'inductor' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "torch._inductor" not in done.stdout, done.stdout


# --- saved state ------------------------------------------------------------------------------------------------


def _saved_numels(fn):
    """Numels of every tensor saved for backward while fn() runs."""
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_multistep_saves_one_sequence(backend):
    n_steps, neurons = 6, 40
    x = _current((n_steps, neurons)).requires_grad_()
    saved = _saved_numels(lambda: lif_multistep(x, backend=backend))
    assert sum(n >= n_steps * neurons for n in saved) <= 1
    assert sum(saved) <= n_steps * neurons + 16
    assert _saved_numels(lambda: lif_multistep(x.detach(), backend=backend)) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_rate_path_saves_nothing_that_grows_with_time(backend):
    def rate_path(n_steps):
        x = _current((n_steps, 2, 10))
        current = x.mean(0).requires_grad_()
        return _saved_numels(lambda: rate_ste(current, *lif_rate(x, backend=backend)[1:], backend=backend).sum())

    assert rate_path(2) == rate_path(16)
    assert sum(rate_path(16)) <= 2 * 10


# --- surrogates -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [None, 0.7, 3.0])
def test_surrogate_is_derivative_of_its_primitive(surrogate, alpha):
    options = LIFOptions(surrogate=surrogate, alpha=alpha)
    sid, a = options.surrogate_id, options.surrogate_alpha
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    x = x[((x.abs() - 1 / a).abs() > 1e-4) & (x.abs() > 1e-4)]  # the triangle's kinks have no derivative
    eps = 1e-6
    fd = (reference.surrogate_primitive(x + eps, sid, a) - reference.surrogate_primitive(x - eps, sid, a)) / (2 * eps)
    torch.testing.assert_close(reference.surrogate_grad(x, sid, a), fd, rtol=1e-6, atol=1e-8)
    assert reference.surrogate_primitive(torch.tensor([-50.0, 50.0], dtype=torch.float64), sid, a).tolist() == (
        pytest.approx([0.0, 1.0], abs=0.02)
    )


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_kernel_surrogate_matches_reference(surrogate):
    """One step, no reset: dS/dX is the surrogate itself, so the kernel's surrogate is read off the gradient."""
    h = torch.linspace(-2, 4, 1001, device=DEVICE).view(1, -1)
    x = h.clone().requires_grad_()
    lif_multistep(x, surrogate=surrogate, alpha=1.3, backend="triton").sum().backward()
    sid = SURROGATES[surrogate][0]
    torch.testing.assert_close(x.grad[0], reference.surrogate_grad(h[0] - 1.0, sid, 1.3), rtol=1e-5, atol=1e-6)


# --- rate_ste, rate_reduce ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float16, 1e-3)])
def test_rate_ste_value_and_gradient(backend, dtype, atol):
    current = torch.randn(3, 1023, dtype=dtype, device=DEVICE).requires_grad_()
    rate, elig = torch.rand(3, 1023, device=DEVICE), torch.rand(3, 1023, device=DEVICE)
    out = rate_ste(current, rate, elig, backend=backend)
    assert out.dtype == dtype and out.data_ptr() != rate.data_ptr()
    torch.testing.assert_close(out.float(), rate, rtol=0, atol=atol)
    grad_out = torch.randn(3, 1023, dtype=dtype, device=DEVICE)
    out.backward(grad_out)
    torch.testing.assert_close(current.grad.float(), grad_out.float() * elig, rtol=1e-3, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 5), (7, 3, 1023), (16, 2, 4, 4)], ids=str)
def test_rate_reduce(backend, shape):
    s = (torch.rand(shape, device=DEVICE) > 0.5).to(torch.float16).requires_grad_()
    rate = rate_reduce(s, backend=backend)
    assert rate.dtype == torch.float32 and rate.shape == shape[1:]
    torch.testing.assert_close(rate, s.float().mean(0), rtol=1e-6, atol=1e-7)
    grad = torch.randn(shape[1:], device=DEVICE)
    rate.backward(grad)
    torch.testing.assert_close(s.grad.float(), (grad / shape[0]).expand(shape), rtol=1e-3, atol=1e-4)
    non_contiguous = s.detach().transpose(-1, -2)
    torch.testing.assert_close(rate_reduce(non_contiguous, backend=backend), non_contiguous.float().mean(0))


# --- poisson_encode ----------------------------------------------------------------------------------------------


def test_poisson_encode_kernel_reproduces_reference_bits():
    x = torch.rand(3, 5, 7, device=DEVICE)
    for seed in (0, 1234, 2**40 + 17):
        torch.testing.assert_close(
            poisson_encode(x, 6, seed, backend="triton"),
            poisson_encode(x, 6, seed, backend="reference"),
            rtol=0,
            atol=0,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_poisson_encode_is_seeded_and_unbiased(backend):
    x = torch.rand(64, 64, device=DEVICE)
    spikes = poisson_encode(x, 32, seed=7, backend=backend)
    assert spikes.shape == (32, 64, 64) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(spikes, poisson_encode(x, 32, seed=7, backend=backend), rtol=0, atol=0)
    assert not torch.equal(spikes, poisson_encode(x, 32, seed=8, backend=backend))
    # Over 32 * 4096 draws, the mean error is ~N(0, sd) with sd <= 0.5 / sqrt(131072) = 0.0014: 5 sd bound.
    assert abs(spikes.mean() - x.mean()) < 5 * 0.5 / math.sqrt(spikes.numel())
    # Per pixel, 32 draws: the rate follows the probability (correlation, not equality).
    assert torch.corrcoef(torch.stack([spikes.mean(0).flatten(), x.flatten()]))[0, 1] > 0.8
    edges = poisson_encode(torch.tensor([[-1.0, 0.0, 1.0, 2.0]], device=DEVICE), 16, 0, backend=backend)
    assert edges[:, 0, :2].eq(0).all() and edges[:, 0, 2:].eq(1).all()


def test_poisson_encode_independent_of_block_size(monkeypatch):
    import kernels.launch as launch

    x = torch.rand(2, 300, device=DEVICE)
    expected = poisson_encode(x, 3, 5, backend="triton")
    monkeypatch.setattr(launch, "LAUNCH_SHAPES", ((1 << 62, 128, 4),))
    torch.testing.assert_close(poisson_encode(x, 3, 5, backend="triton"), expected, rtol=0, atol=0)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [lif_multistep, lif_rate], ids=["lif_multistep", "lif_rate"])
@pytest.mark.parametrize(
    "x,kwargs,error,match",
    [
        (torch.randn(5), {}, ValueError, r"x must be time-first .* at least 2 dims, got shape \(5,\)"),
        (torch.randn(0, 3), {}, ValueError, r"T = x.shape\[0\] >= 1"),
        (torch.ones(3, 4, dtype=torch.int64), {}, TypeError, r"x must have a floating dtype .* got torch.int64"),
        ([[1.0]], {}, TypeError, r"x must be a torch.Tensor, got list"),
        (torch.randn(3, 4), {"tau": 0.5}, ValueError, r"tau must be a finite number >= 1 .* got 0.5"),
        (torch.randn(3, 4), {"v_threshold": 0.0}, ValueError, r"v_threshold must be a finite positive number, got 0.0"),
        (torch.randn(3, 4), {"v_threshold": math.inf}, ValueError, r"v_threshold must be a finite .* got inf"),
        (torch.randn(3, 4), {"alpha": math.inf}, ValueError, r"alpha must be None .* finite .* got inf"),
        (torch.randn(3, 4), {"surrogate": "relu"}, ValueError, r"\['atan', 'sigmoid', 'triangle'\], got 'relu'"),
        (torch.randn(3, 4), {"alpha": -1.0}, ValueError, r"alpha must be None .* got -1.0"),
        (torch.randn(3, 4), {"backend": "cuda"}, ValueError, r"backend must be one of .* got 'cuda'"),
    ],
)
def test_neuron_bad_input(fn, x, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(x, **kwargs)


def test_rate_ste_bad_input():
    with pytest.raises(ValueError, match=r"one shape, got current \(2, 3\), rate \(2, 4\), elig \(2, 3\)"):
        rate_ste(torch.randn(2, 3), torch.rand(2, 4), torch.rand(2, 3))
    with pytest.raises(TypeError, match="elig must have a floating dtype"):
        rate_ste(torch.randn(2, 3), torch.rand(2, 3), torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"one device, got current on cpu, rate on meta"):
        rate_ste(torch.randn(2, 3), torch.empty(2, 3, device="meta"), torch.rand(2, 3))


def test_poisson_encode_bad_input():
    with pytest.raises(ValueError, match="T must be an int >= 1"):
        poisson_encode(torch.rand(2, 3), 0, seed=1)
    with pytest.raises(ValueError, match="seed must be an int"):
        poisson_encode(torch.rand(2, 3), 4, seed=-1)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        poisson_encode(torch.ones(2, 3, dtype=torch.uint8), 4, seed=1)


def test_triton_backend_where_it_cannot_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the triton backend can run")
    with pytest.raises(RuntimeError, match="backend='triton' cannot run on a cpu tensor"):
        lif_multistep(torch.randn(3, 4), backend="triton")
    assert lif_multistep(torch.randn(3, 4), backend="auto").shape == (3, 4)


@pytest.mark.cuda
def test_mixed_devices_rejected():
    with pytest.raises(ValueError, match="one device"):
        rate_ste(torch.randn(2, 3, device="cuda"), torch.rand(2, 3), torch.rand(2, 3, device="cuda"))
