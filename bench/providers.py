"""The neuron-op implementations the kernel benchmarks compare, behind one interface.

A provider turns (mode, x) into a zero-argument callable that runs the op once, backward included for
`fwd+bwd`. Every provider runs the same neuron: tau=2, v_threshold=1, soft reset, decay_input=False,
detach_reset=True, sigmoid surrogate with alpha=4 (the neuron's defaults).

- `triton`: SpikeKD's kernels (`backend="triton"`), CUDA only.
- `reference`: SpikeKD's public ops on their pure-PyTorch twins (`backend="reference"`).
- `compile`: `torch.compile` of the twins in `kernels.reference` (the autograd-written neuron for `fwd+bwd`).
- `sj-torch`, `sj-triton`, `sj-cuda`: SpikingJelly's `LIFNode` (multi-step) with that implementation forced;
  `sj-auto`: SpikingJelly's own choice (what its users get: its Triton kernels for fp32 on CUDA, its torch
  implementation for bf16, which its kernels do not take). SpikingJelly has no rate spike pass, so its providers
  skip `rate`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch

from kernels import lif_multistep, lif_rate, reference

MODES = ("fwd", "fwd+bwd", "rate")
PROVIDERS = ("triton", "reference", "compile", "sj-torch", "sj-triton", "sj-cuda", "sj-auto")

TAU, V_THRESHOLD, ALPHA = 2.0, 1.0, 4.0
# The reference twins' positional neuron arguments: tau, th, v_reset (None = soft), decay_input, detach_reset,
# surrogate id (0 = sigmoid), alpha.
REFERENCE_ARGS = (TAU, V_THRESHOLD, None, False, True, 0, ALPHA)

# One compile per (function, T, size): lift dynamo's per-function recompile cap so that it never falls back
# to eager in the middle of a sweep.
torch._dynamo.config.recompile_limit = 256


class Unavailable(Exception):
    """The provider cannot run here; the message says why (the benchmark skips with it)."""


def bytes_moved(mode: str, n_steps: int, n_neurons: int, element_size: int) -> int:
    """The least memory traffic of one call, by the SpikeKD design, so GB/s compare across providers.

    fwd: read X, write S. fwd+bwd: forward reads X and writes S and H; backward reads dL/dS and H and writes
    dL/dX. rate: read X, write S, write the fp32 rate and eligibility.
    """
    sequence = n_steps * n_neurons * element_size
    if mode == "fwd":
        return 2 * sequence
    if mode == "fwd+bwd":
        return 6 * sequence
    if mode == "rate":
        return 2 * sequence + 2 * n_neurons * 4
    raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")


def make_call(provider: str, mode: str, x: torch.Tensor) -> Callable[[], object]:
    """A callable running `provider`'s op once on x [T, N] in `mode`; raises Unavailable where it cannot run."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if provider == "triton":
        if not x.is_cuda:
            raise Unavailable("the Triton kernels need a CUDA device (the CPU interpreter is not timed)")
        return _spikekd_call(mode, x, "triton")
    if provider == "reference":
        return _spikekd_call(mode, x, "reference")
    if provider == "compile":
        return _compiled_call(mode, x)
    if provider.startswith("sj-"):
        return _spikingjelly_call(provider.removeprefix("sj-"), mode, x)
    raise ValueError(f"provider must be one of {list(PROVIDERS)}, got {provider!r}")


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """fn followed by a device sync, so that a timer sees the kernels finish."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def _backward_call(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
    """Forward with a graph, then the input gradient for a fixed random upstream gradient."""
    x = x.detach().requires_grad_(True)
    # The same upstream gradient for every provider, so that their input gradients can be compared.
    grad_out = torch.rand(x.shape, generator=torch.Generator(x.device).manual_seed(1), device=x.device).to(x.dtype)

    def call():
        (grad_x,) = torch.autograd.grad(forward(x), x, grad_out)
        return grad_x

    return call


def _no_grad_call(forward: Callable[[torch.Tensor], object], x: torch.Tensor) -> Callable[[], object]:
    x = x.detach()

    def call():
        with torch.no_grad():
            return forward(x)

    return call


def _spikekd_call(mode: str, x: torch.Tensor, backend: str) -> Callable[[], object]:
    if mode == "rate":
        return _no_grad_call(functools.partial(lif_rate, backend=backend), x)
    forward = functools.partial(lif_multistep, backend=backend)
    return _no_grad_call(forward, x) if mode == "fwd" else _backward_call(forward, x)


def _reference_forward(x: torch.Tensor) -> torch.Tensor:
    return reference.lif_forward(x, *REFERENCE_ARGS, store_h=False)[0]


def _reference_autograd(x: torch.Tensor) -> torch.Tensor:
    return reference.lif_autograd(x, *REFERENCE_ARGS)


def _reference_rate(x: torch.Tensor):
    return reference.lif_rate(x, *REFERENCE_ARGS)


def _compiled_call(mode: str, x: torch.Tensor) -> Callable[[], object]:
    # dynamic=False: one specialised graph per T and size, the time loop unrolled, as a user would get.
    if mode == "fwd":
        return _no_grad_call(torch.compile(_reference_forward, dynamic=False), x)
    if mode == "rate":
        return _no_grad_call(torch.compile(_reference_rate, dynamic=False), x)
    return _backward_call(torch.compile(_reference_autograd, dynamic=False), x)


# --- SpikingJelly ------------------------------------------------------------------------------------------------


def spikingjelly_version() -> str | None:
    try:
        import spikingjelly
    except ImportError:
        return None
    return getattr(spikingjelly, "__version__", "unknown")


# Per forced implementation, SpikingJelly's own selection caches (eager, compile), kept between calls.
_SJ_SELECTIONS: dict[str, tuple[dict, dict]] = {}


@contextlib.contextmanager
def spikingjelly_implementation(name: str, device: torch.device) -> Iterator[None]:
    """Force SpikingJelly's LIF implementation `name` ("torch", "triton", "cuda" or "auto") on CUDA while inside.

    SpikingJelly 2 picks its CUDA implementation once, from SJ_LIF_CUDA_IMPLEMENTATION read at import, and caches
    the choice per device. To compare implementations in one process the selection object is pointed at `name`
    with that name's own cache (a few dict swaps a call), then restored.
    """
    if device.type != "cuda":
        yield
        return
    from spikingjelly._ops import lif as sj_lif_ops

    selection = sj_lif_ops._selection
    saved = selection._requested, selection._selections, selection._compiled_selections
    selection._requested = name
    selection._selections, selection._compiled_selections = _SJ_SELECTIONS.setdefault(name, ({}, {}))
    try:
        yield
    finally:
        selection._requested, selection._selections, selection._compiled_selections = saved


def spikingjelly_lif():
    """SpikingJelly's LIFNode with the SpikeKD defaults, multi-step."""
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(
        tau=TAU,
        decay_input=False,
        v_threshold=V_THRESHOLD,
        v_reset=None,
        surrogate_function=surrogate.Sigmoid(alpha=ALPHA),
        detach_reset=True,
        step_mode="m",
    )


def _spikingjelly_call(implementation: str, mode: str, x: torch.Tensor) -> Callable[[], object]:
    if spikingjelly_version() is None:
        raise Unavailable("spikingjelly is not installed (pip install --no-deps spikingjelly==2.0.0 loguru)")
    if mode == "rate":
        raise Unavailable("SpikingJelly has no rate-based spike pass (spikes, rate and eligibility in one pass)")
    if x.device.type == "cpu" and implementation != "torch":
        raise Unavailable(f"SpikingJelly's {implementation} implementation needs a CUDA device")
    node = spikingjelly_lif().to(x.device)

    def forward(x_seq):
        node.reset()  # SpikingJelly keeps the membrane potential between calls; every call starts from rest
        with spikingjelly_implementation(implementation, x.device):
            return node(x_seq)

    call = _no_grad_call(forward, x) if mode == "fwd" else _backward_call(forward, x)
    try:
        call()  # SpikingJelly raises on first use when the forced implementation is missing
    except (RuntimeError, ImportError, OSError) as error:
        raise Unavailable(f"SpikingJelly's {implementation} implementation failed here: {error}") from error
    return call
