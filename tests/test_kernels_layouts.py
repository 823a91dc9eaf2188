"""The Triton kernels on strided and time-constant inputs, half-precision BPTT, special values, and the AOT check."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import lif_multistep, lif_rate, lif_rate_, poisson_encode, rate_reduce, rate_ste, reference
from kernels.launch import StepLayout, step_layout
from kernels.options import SURROGATES, LIFOptions

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _current(shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 1.2 + 0.4).to(dtype=dtype, device=DEVICE)


# --- layouts -----------------------------------------------------------------------------------------------------


def test_step_layout_folds_dims_into_rows_and_columns():
    base = torch.zeros(4, 6, 5)
    assert step_layout(base) == StepLayout(120, 0, 1)
    assert step_layout(base[:, :, 1:4]) == StepLayout(3, 5, 1)  # sliced last dim: rows of 3 every 5
    assert step_layout(base.transpose(0, 1)[0]) == StepLayout(5, 30, 1)  # a step of a [B, T, F] -> [T, B, F] view
    assert step_layout(base.transpose(0, 1)) is None  # three runs of strides
    assert step_layout(torch.zeros(3, 1).expand(3, 7)) == StepLayout(7, 1, 0)
    assert step_layout(torch.zeros(()).expand(2, 3)) == StepLayout(6, 0, 0)
    assert step_layout(torch.zeros(1, 1)) == StepLayout(1, 0, 1)
    assert step_layout(torch.zeros(2, 3, 4, 5).permute(0, 2, 3, 1)) is None  # channels-last: copied first


def _views(x):
    """x [T, B, F] seen through the views a network hands the neuron, each with T, B, F = x's."""
    t, b, f = x.shape
    return {
        "contiguous": x,
        "expanded over T": x[:1].expand(t, b, f),
        "transposed": x.transpose(0, 1).contiguous().transpose(0, 1),
        "sliced in time": torch.cat([x, x], 0)[::2],
        "sliced last dim": torch.nn.functional.pad(x, (1, 2))[..., 1:-2],
        "broadcast features": x[:, :, :1].expand(t, b, f),
    }


VIEW_NAMES = list(_views(torch.zeros(2, 2, 2)))


@pytest.mark.parametrize("view", VIEW_NAMES)
@pytest.mark.parametrize("v_reset", [None, -0.2])
def test_lif_multistep_on_views(view, v_reset):
    x = _views(_current((4, 3, 7)))[view]
    kw = dict(v_reset=v_reset, detach_reset=False, tau=1.7)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = {}
    for backend in ("triton", "reference"):
        leaf = x.detach().clone().requires_grad_()
        source = leaf[:1].expand(x.shape) if view == "expanded over T" else leaf
        spikes = lif_multistep(source, backend=backend, **kw)
        spikes.backward(grad)
        results[backend] = (spikes, leaf.grad)
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=0, atol=0)
    torch.testing.assert_close(results["triton"][1], results["reference"][1], rtol=1e-5, atol=1e-6)


def test_a_step_of_three_runs_is_copied_first():
    x = _current((3, 2, 4, 5, 3)).permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # channels-last steps
    assert step_layout(x[0]) is None
    torch.testing.assert_close(lif_rate(x, backend="triton"), lif_rate(x, backend="reference"))
    torch.testing.assert_close(lif_multistep(x, backend="triton"), lif_multistep(x, backend="reference"))


@pytest.mark.parametrize("view", VIEW_NAMES)
def test_lif_rate_and_rate_reduce_on_views(view):
    x = _views(_current((4, 3, 7), seed=2))[view]
    got = lif_rate(x, backend="triton", surrogate="atan")
    expected = lif_rate(x, backend="reference", surrogate="atan")
    for a, b in zip(got, expected, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rate_reduce(x, backend="triton"), rate_reduce(x, backend="reference"))


@pytest.mark.parametrize("view", ["transposed", "sliced last dim", "broadcast features"])
def test_poisson_encode_and_rate_ste_on_views(view):
    x = _views(torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(3)).to(DEVICE))[view][0]
    spikes = poisson_encode(x, 4, seed=9, backend="triton")
    torch.testing.assert_close(spikes, poisson_encode(x.contiguous(), 4, seed=9, backend="triton"), rtol=0, atol=0)
    torch.testing.assert_close(spikes, poisson_encode(x, 4, seed=9, backend="reference"), rtol=0, atol=0)
    current = torch.zeros(x.shape, device=DEVICE, requires_grad=True)
    elig = torch.rand(x.shape, device=DEVICE)
    rate_ste(current, x, elig, backend="triton").backward(x)
    torch.testing.assert_close(current.grad, x * elig)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_time_constant_input_gradient_is_summed_over_t(backend):
    """A direct-encoded input (a view expanded over T): the backward op returns sum_t dL/dX_t, [B, ...] not [T, ...]."""
    base = _current((1, 3, 7), seed=4)
    args = LIFOptions(v_reset=0.0, detach_reset=False).op_args()
    expanded = base.expand(6, 3, 7).requires_grad_()
    _, h_seq = torch.ops.spikekd.lif_multistep(expanded, *args, True, backend)
    grad = torch.randn(6, 3, 7).to(DEVICE)
    summed = torch.ops.spikekd.lif_multistep_backward(grad, h_seq, *args, True, backend)
    per_step = torch.ops.spikekd.lif_multistep_backward(grad, h_seq, *args, False, backend)
    assert summed.shape == (3, 7)
    torch.testing.assert_close(summed, per_step.sum(0), rtol=1e-5, atol=1e-6)


def test_lif_rate_inplace_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match=r"must not overlap itself.*expanded view"):
        lif_rate_(torch.zeros(1, 2, 3).expand(4, 2, 3))
    with pytest.raises(ValueError, match="leaf tensor that requires grad"):
        lif_rate_(torch.zeros(4, 2, 3, requires_grad=True))


def test_numpy_scalars_are_accepted_as_options():
    x = _current((3, 2, 5))
    got = lif_multistep(x, tau=np.float32(2.0), v_threshold=np.float64(1.0), alpha=np.int64(4), backend="reference")
    torch.testing.assert_close(got, lif_multistep(x, backend="reference"))


# --- half precision: the backward's spike is the forward's -----------------------------------------------------


def _half_dtypes():
    yield torch.float16
    if DEVICE == "cuda":
        yield torch.bfloat16


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", list(_half_dtypes()), ids=str)
@pytest.mark.parametrize("v_reset", [None, 0.0])
def test_stored_potential_keeps_the_forward_spike(backend, dtype, v_reset):
    """H rounded to half precision can cross th; the stored H must still give the forward's S = [H >= th]."""
    x = (torch.rand(8, 64, 256, generator=torch.Generator().manual_seed(5)) * 1.2).to(dtype=dtype, device=DEVICE)
    args = LIFOptions(v_reset=v_reset, tau=3.0).op_args()
    spikes, h_seq = torch.ops.spikekd.lif_multistep(x, *args, True, backend)
    recomputed = (h_seq.float() >= 1.0).to(dtype)
    assert torch.equal(spikes, recomputed), f"{(spikes != recomputed).sum().item()} spikes flipped in storage"
    # The fp32 potential the forward compared, for the neurons within one rounding of th.
    exact = reference.lif_forward(x.float(), *args, store_h=True)[1]
    near = (exact - 1.0).abs() < 1e-2
    assert near.sum() > 100, "the input should put many potentials next to the threshold"


def test_stored_potential_of_a_rounding_case():
    """H = 1 - 2^-12 does not fire, and rounds to 1.0 in fp16: it is stored as the largest fp16 below 1."""
    x = torch.tensor([[1 - 2**-11], [0.5]], dtype=torch.float16, device=DEVICE)  # H_1 = 0.5 (1 - 2^-11) + 0.5
    for backend in ("triton", "reference"):
        spikes, h_seq = torch.ops.spikekd.lif_multistep(x, *LIFOptions().op_args(), True, backend)
        assert spikes[1].item() == 0.0
        assert h_seq[1].item() == 1 - 2**-11


def test_threshold_neighbours():
    assert reference.threshold_neighbours(1.0, torch.bfloat16) == (1.0, 1 - 2**-8)
    assert reference.threshold_neighbours(1.0, torch.float16) == (1.0, 1 - 2**-11)
    above, below = reference.threshold_neighbours(0.3, torch.float16)
    assert below < np.float32(0.3) <= above and torch.tensor([above, below]).half().float().tolist() == [above, below]


# --- special values: NaN and +-inf give what the reference gives ------------------------------------------------


SPECIALS = [math.nan, math.inf, -math.inf, 1.0, 0.0, -0.0]


def _special_current(seed=6):
    x = _current((5, 4, 9), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    where = torch.randint(0, 5, x.shape, generator=gen).to(DEVICE) == 0
    values = torch.tensor(SPECIALS)[torch.randint(0, len(SPECIALS), x.shape, generator=gen)].to(DEVICE)
    return torch.where(where, values, x)


@pytest.mark.parametrize("surrogate", list(SURROGATES))
@pytest.mark.parametrize("v_reset,detach_reset", [(None, True), (None, False), (0.0, True), (0.0, False)])
def test_special_values_match_reference(surrogate, v_reset, detach_reset):
    x = _special_current()
    kw = dict(surrogate=surrogate, v_reset=v_reset, detach_reset=detach_reset)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    outputs = {}
    for backend in ("triton", "reference"):
        leaf = x.clone().requires_grad_()
        spikes = lif_multistep(leaf, backend=backend, **kw)
        spikes.backward(grad)
        outputs[backend] = (spikes, leaf.grad, *lif_rate(x, backend=backend, **kw))
    names = ["spikes", "grad", "rate spikes", "rate", "elig"]
    for name, a, b in zip(names, outputs["triton"], outputs["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}")
    assert outputs["reference"][0].isnan().any(), "NaN input must give NaN spikes"


def test_infinite_input_with_a_hard_reset_resets():
    x = torch.tensor([[math.inf], [0.0], [0.0]], device=DEVICE)
    for backend in ("triton", "reference"):
        _, h_seq = torch.ops.spikekd.lif_multistep(x, *LIFOptions(v_reset=0.0).op_args(), True, backend)
        assert h_seq[:, 0].tolist() == [math.inf, 0.0, 0.0], backend


def test_triangle_surrogate_keeps_nan():
    x = torch.tensor([[math.nan, 1.0]], device=DEVICE)
    for backend in ("triton", "reference"):
        _, _, elig = lif_rate(x, surrogate="triangle", backend=backend)
        assert math.isnan(elig[0].item()) and elig[1].item() == 1.0, backend


def test_poisson_encode_nan_probability_gives_nan():
    x = torch.tensor([math.nan, math.inf, -math.inf, 0.5], device=DEVICE)
    for backend in ("triton", "reference"):
        spikes = poisson_encode(x, 6, seed=1, backend=backend)
        assert spikes[:, 0].isnan().all() and spikes[:, 1].eq(1).all() and spikes[:, 2].eq(0).all(), backend


# --- without Triton: the twins run, and asking for the kernels says why they cannot ---------------------------


def test_without_triton_the_ops_run_their_twins():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # as on a platform without a triton wheel
        import torch, kernels, models
        x = torch.randn(3, 2, 5, requires_grad=True)
        kernels.lif_multistep(x).sum().backward()
        assert x.grad.shape == x.shape
        net = models.create_model("tiny_resnet", kind="snn", num_classes=10, T=2)
        assert net(torch.rand(2, 3, 16, 16), mode="rate").shape == (2, 10)
        try:
            kernels.lif_rate(x, backend="triton")
        except RuntimeError as error:
            print(error)
        """
    )
    env = dict(_without_interpreter(), PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "backend='triton' cannot run: the triton package cannot be imported here" in done.stdout


# --- the AOT check: every kernel compiles for sm_80 and sm_90 ---------------------------------------------------


def _without_interpreter():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_every_kernel_compiles_for_sm80_and_sm90():
    done = subprocess.run(
        [sys.executable, "-m", "kernels.aot", "--target", "sm_80,sm_90"],
        cwd=ROOT, env=_without_interpreter(), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compiled for sm_80, sm_90" in done.stdout


def test_aot_names_a_kernel_the_compiler_rejects(tmp_path):
    """A module-level constant without tl.constexpr(...) runs in the interpreter and fails to compile."""
    (tmp_path / "broken_kernels.py").write_text(
        textwrap.dedent(
            """
            import triton
            import triton.language as tl

            SCALE: tl.constexpr = 2

            @triton.jit
            def _scale_kernel(x_ptr, n, BLOCK: tl.constexpr):
                offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
                tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * SCALE, mask=offs < n)
            """
        )
    )
    script = textwrap.dedent(
        """
        import sys
        from kernels.aot import Specialisation, compile_one
        spec = Specialisation("broken_kernels", "_scale_kernel", (("x_ptr", "*fp32"), ("n", "i32"),
                              ("BLOCK", "constexpr")), (("BLOCK", 128),), 4)
        print(compile_one(spec, 90))
        """
    )
    env = dict(_without_interpreter(), PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "SCALE" in done.stdout and "global" in done.stdout.lower()


def test_aot_refuses_the_interpreter_and_bad_targets():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "kernels.aot"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "TRITON_INTERPRET is set" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "kernels.aot", "--target", "hopper"],
        cwd=ROOT, env=_without_interpreter(), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "--target takes comma-separated CUDA targets" in done.stderr


# --- random cases: shapes, layouts, dtypes, options and special values ------------------------------------------


@st.composite
def _neuron_case(draw):
    n_steps = draw(st.integers(1, 5))
    step_shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    layout = draw(st.sampled_from(["contiguous", "expanded over T", "transposed", "sliced last dim"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16]))
    options = dict(
        tau=draw(st.floats(1.0, 4.0)),
        v_threshold=draw(st.floats(0.25, 2.0)),
        v_reset=draw(st.sampled_from([None, 0.0, -0.3])),
        decay_input=draw(st.booleans()),
        detach_reset=draw(st.booleans()),
        surrogate=draw(st.sampled_from(sorted(SURROGATES))),
    )
    special = draw(st.sampled_from([None, math.nan, math.inf, -math.inf]))
    return n_steps, step_shape, layout, dtype, options, special, draw(st.integers(0, 2**16))


def _laid_out(base: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "expanded over T":
        return base[:1].expand(base.shape)
    if layout == "transposed" and base.dim() >= 3:
        return base.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "sliced last dim":
        return torch.nn.functional.pad(base, (0, 3))[..., : base.shape[-1]]
    return base


@settings(max_examples=40, deadline=None)
@given(case=_neuron_case())
def test_random_cases_match_reference(case):
    """Every mismatch between the kernels and the twin is a failure, within one tolerance per dtype."""
    n_steps, step_shape, layout, dtype, options, special, seed = case
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn((n_steps, 2, *step_shape), generator=gen) * 1.5 + 0.5
    if special is not None:
        base[torch.rand(base.shape, generator=gen) < 0.1] = special
    x = _laid_out(base.to(dtype=dtype, device=DEVICE), layout)
    grad = torch.randn(x.shape, generator=gen).to(dtype=dtype, device=DEVICE)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    results = {}
    for backend in ("triton", "reference"):
        leaf = x.detach().clone().requires_grad_()
        source = leaf[:1].expand(x.shape) if layout == "expanded over T" else leaf
        spikes = lif_multistep(source, backend=backend, **options)
        spikes.backward(grad)
        results[backend] = (spikes, leaf.grad, *lif_rate(x, backend=backend, **options))
    names = ["spikes", "grad", "rate spikes", "rate", "elig"]
    for name, a, b in zip(names, results["triton"], results["reference"], strict=True):
        exact = name.endswith("spikes")
        torch.testing.assert_close(
            a, b, **(dict(rtol=0, atol=0) if exact else tolerance), equal_nan=True, msg=lambda m, n=name: f"{n}: {m}"
        )
