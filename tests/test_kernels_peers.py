"""Parity with SpikingJelly's LIFNode (multi-step, torch backend): identical spikes, BPTT gradients to rounding.

Skipped where SpikingJelly is not installed (`pip install --no-deps spikingjelly==2.0.0 loguru`; CI installs it).
"""

import itertools

import pytest
import torch

from kernels import lif_multistep

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sj_surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = list(itertools.product([None, 0.0, -0.3], [False, True], [True, False], ["sigmoid", "atan"]))


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("v_reset,decay_input,detach_reset,surrogate", CASES)
def test_matches_spikingjelly_lifnode(backend, v_reset, decay_input, detach_reset, surrogate):
    alpha = {"sigmoid": 4.0, "atan": 2.0}[surrogate]
    function = {"sigmoid": sj_surrogate.Sigmoid, "atan": sj_surrogate.ATan}[surrogate](alpha=alpha)
    peer = sj_neuron.LIFNode(
        tau=2.0,
        decay_input=decay_input,
        v_reset=v_reset,
        detach_reset=detach_reset,
        surrogate_function=function,
        step_mode="m",
    )
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(7, 4, 33, generator=gen) * 1.2 + 0.4).to(DEVICE).requires_grad_()
    ours = x.detach().clone().requires_grad_()
    expected = peer(x)
    spikes = lif_multistep(
        ours, decay_input=decay_input, v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate, backend=backend
    )
    torch.testing.assert_close(spikes, expected, rtol=0, atol=0)
    grad_out = torch.randn(7, 4, 33, generator=gen).to(DEVICE)
    expected.backward(grad_out)
    spikes.backward(grad_out)
    torch.testing.assert_close(ours.grad, x.grad, rtol=1e-5, atol=1e-6)
