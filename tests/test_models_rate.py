"""Rate-based backprop against BPTT: exact where docs/design.md says it is, close on a ResNet, flat memory in T."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels import lif_multistep, lif_rate
from models import LIF, BatchNorm2d, Streams, create_model, direct_encode
from models.layers import Conv2d


class ConvLIFLinear(nn.Module):
    """conv - LIF - mean over time - linear, on a static (direct-encoded) image: no BatchNorm."""

    def __init__(self, T: int, **neuron):
        super().__init__()
        self.T = T
        self.conv = Conv2d(2, 4, 3, padding=1)
        self.lif = LIF(**neuron)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x, mode):
        h = self.lif(direct_encode(x, self.T, self.conv, rate=mode == "rate"))
        rate = h.rate if isinstance(h, Streams) else h.mean(0)
        return self.fc(rate.flatten(1))


@pytest.mark.parametrize("T", [1, 4, 7])
@pytest.mark.parametrize(
    "neuron",
    [{}, {"v_reset": 0.0}, {"detach_reset": False, "surrogate": "atan"}, {"decay_input": True, "tau": 3.0}],
    ids=["default", "hard", "soft_attached_atan", "decay_input"],
)
def test_rate_weight_grads_equal_bptt_on_static_input(T, neuron, seed):
    """The input current is the same at every step, so BPTT's sum_t dL/dX_t = dL/d(mean_t S) * d(mean_t S)/dc,
    which is exactly what the rate stream computes: dL/d rate * elig. The linear readout of mean_t S is the same
    in both modes, so every weight gradient agrees to rounding."""
    net = ConvLIFLinear(T, **neuron).double()
    x = 8 * torch.rand(6, 2, 5, 5, dtype=torch.float64)  # enough drive that some neurons fire, even at T=1
    upstream = torch.randn(6, 3, dtype=torch.float64)
    grads = {}
    for mode in ("bptt", "rate"):
        net.zero_grad()
        logits = net(x, mode)
        logits.backward(upstream)
        grads[mode] = (logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters()})
    torch.testing.assert_close(grads["rate"][0], grads["bptt"][0])
    for name, g in grads["bptt"][1].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(grads["rate"][1][name], g, rtol=1e-9, atol=1e-12, msg=name)


def weight_grads(net, x, y, mode):
    net.zero_grad()
    F.cross_entropy(net(x, mode=mode), y).backward()
    return {n: p.grad.flatten().clone() for n, p in net.named_parameters() if p.dim() > 1}


def test_rate_grads_close_to_bptt_on_a_resnet_with_batchnorm():
    """Per-layer cosine similarity of rate-mode and BPTT weight gradients on tiny_resnet (BN, T=4).

    Past the first neuron, rate mode replaces the time course of each layer's input by its mean, and BN's
    gradient by that of the rate stream's statistics, so the gradients differ; the error grows with distance
    from the loss. Measured (float64, 8x8 inputs, batch 8, seeds 0-19): the head is exact (1.0); the worst layer
    per seed is 0.62-0.77, always the stem or the first stage; the mean over layers is 0.80-0.86. The bounds below
    (0.5 per layer, 0.75 for the mean) leave a margin under that spread, and sit far above the ~0 of unrelated
    directions: a wrong sign, a missing eligibility or a broken straight-through BN fails them.
    """
    for seed in range(5):
        torch.manual_seed(seed)
        net = create_model("tiny_resnet", kind="snn", T=4, in_channels=1, num_classes=4).double().train()
        x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
        y = torch.randint(0, 4, (8,))
        bptt, rate = weight_grads(net, x, y, "bptt"), weight_grads(net, x, y, "rate")
        cosine = {n: F.cosine_similarity(bptt[n], rate[n], dim=0).item() for n in bptt}
        assert min(cosine.values()) > 0.5, cosine
        assert sum(cosine.values()) / len(cosine) > 0.75, cosine
        assert cosine["head.fc.weight"] > 1 - 1e-9


def saved_bytes(net, x, mode) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, mode=mode)
    return total


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_vgg"])
def test_rate_mode_saves_the_same_bytes_whatever_T(name, seed):
    net = create_model(name, kind="snn", in_channels=1).train()
    x = torch.rand(4, 1, 16, 16)
    saved = {}
    for T in (2, 8):
        net.T = T
        saved[T] = {mode: saved_bytes(net, x, mode) for mode in ("rate", "bptt", "eval")}
    assert saved[2]["rate"] == saved[8]["rate"] > 0
    assert saved[8]["bptt"] > 3 * saved[2]["bptt"] > 0  # [T, B, ...] per neuron and per layer
    assert saved[2]["eval"] == saved[8]["eval"] == 0


def test_rate_mode_on_sequences_also_saves_the_same_bytes(seed):
    net = create_model("tiny_vgg", kind="snn", in_channels=2).train()
    sizes = []
    for T in (2, 8):
        net.T = T
        sizes.append(saved_bytes(net, (torch.rand(T, 4, 2, 16, 16) < 0.2).float(), "rate"))
    assert sizes[0] == sizes[1] > 0


def test_lif_module_matches_the_ops(seed):
    x = torch.randn(5, 3, 7) * 2
    lif = LIF(tau=3.0, v_reset=0.0)
    torch.testing.assert_close(lif(x), lif_multistep(x, tau=3.0, v_reset=0.0))
    spikes, rate, _ = lif_rate(x, tau=3.0, v_reset=0.0)
    out = lif(x, mode="rate")
    assert isinstance(out, Streams)
    torch.testing.assert_close(out.spikes, spikes)
    torch.testing.assert_close(out.rate, rate)
    torch.testing.assert_close(out.rate, out.spikes.mean(0))
    assert not lif(x.requires_grad_(), mode="eval").requires_grad


@pytest.mark.parametrize("owned", [False, True], ids=["given", "owned"])
@pytest.mark.parametrize("track_running_stats", [True, False], ids=["running", "batch-only"])
def test_batchnorm_rate_mode_uses_spike_statistics(seed, owned, track_running_stats):
    """Both streams are normalised with the spike stream's statistics (so rate' = mean_t spikes'), and the running
    statistics are updated exactly as a BN over the spike stream updates them; the same whether the spikes are
    normalised over themselves (owned) or into a new tensor, and without running statistics."""
    spikes = (torch.rand(4, 3, 2, 5, 5) < 0.3).double()
    reference = nn.BatchNorm2d(2, track_running_stats=track_running_stats).double()
    bn = BatchNorm2d(2, track_running_stats=track_running_stats).double()
    with torch.no_grad():
        for m in (reference, bn):
            m.weight.copy_(torch.tensor([1.5, -0.5]))
            m.bias.copy_(torch.tensor([0.1, 0.2]))
    rate_in = spikes.mean(0).requires_grad_()
    expected = reference(spikes.flatten(0, 1)).unflatten(0, (4, 3)).detach()
    given = spikes.clone()
    out = bn(Streams(given, rate_in, owned=owned))
    assert (out.spikes.data_ptr() == given.data_ptr()) == owned
    torch.testing.assert_close(out.spikes, expected)
    torch.testing.assert_close(out.rate, expected.mean(0))
    if track_running_stats:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(bn, name), getattr(reference, name)), name
    else:
        assert bn.running_mean is None and bn.running_var is None
    # Straight-through statistics (docs/design.md): mu = sg(mu_s) + mu_r - sg(mu_r), and the same for var.
    upstream = torch.randn_like(rate_in)
    out.rate.backward(upstream)
    r = rate_in.detach().clone().requires_grad_()
    var_r, mu_r = torch.var_mean(r, dim=(0, 2, 3), unbiased=False)
    var_s, mu_s = torch.var_mean(spikes, dim=(0, 1, 3, 4), unbiased=False)
    mu, var = mu_s + mu_r - mu_r.detach(), var_s + var_r - var_r.detach()
    w, b = bn.weight.detach()[:, None, None], bn.bias.detach()[:, None, None]
    ((r - mu[:, None, None]) / (var[:, None, None] + bn.eps).sqrt() * w + b).backward(upstream)
    torch.testing.assert_close(rate_in.grad, r.grad)
    affine_only = upstream * w / (var_s[:, None, None] + bn.eps).sqrt()
    assert not torch.allclose(rate_in.grad, affine_only)  # the statistics do carry a gradient
    bn.eval()
    out = bn(Streams(spikes, spikes.mean(0)))
    torch.testing.assert_close(out.rate, out.spikes.mean(0))
    if track_running_stats:  # with running statistics (eval), BN is affine: it commutes with the mean over time
        torch.testing.assert_close(out.spikes, reference.eval()(spikes.flatten(0, 1)).unflatten(0, (4, 3)))
    else:  # without, it normalises with the batch's statistics in eval too, as nn.BatchNorm2d does
        torch.testing.assert_close(out.spikes, expected)


def test_batchnorm_rate_mode_needs_more_than_one_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm2d(2)(Streams(torch.ones(1, 1, 2, 1, 1), torch.ones(1, 2, 1, 1)))


@pytest.mark.parametrize("mode", ["bptt", "rate"])
@pytest.mark.parametrize("model", ["tiny_vgg", "tiny_resnet"])
def test_triton_backend_matches_reference_in_a_model(model, mode):
    """The neuron options reach the ops: the same net on the Triton kernels agrees (on CUDA where there is one, else
    on the CPU interpreter, as the triton backend runs nowhere else)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for backend in ("reference", "triton"):
        torch.manual_seed(0)
        net = create_model(model, kind="snn", T=3, backend=backend).to(device).train()
        logits = net(torch.rand(2, 3, 8, 8, device=device), mode=mode)
        logits.backward(torch.ones_like(logits))
        results.append((logits.detach(), [p.grad for p in net.parameters()]))
    (ref_logits, ref_grads), (tri_logits, tri_grads) = results
    torch.testing.assert_close(tri_logits, ref_logits)
    for ref, tri in zip(ref_grads, tri_grads, strict=True):
        torch.testing.assert_close(tri, ref, rtol=1e-4, atol=1e-5)
