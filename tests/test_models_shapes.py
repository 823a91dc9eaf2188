"""Every architecture as ANN and SNN, in every mode: shapes, no NaN, a finite gradient for every parameter."""

import pytest
import torch

import models
from models import FiringRates, PoissonEncoder, create_model, list_models

ALL = ["resnet18", "resnet19", "resnet20", "resnet34", "tiny_resnet", "tiny_vgg", "vgg11", "vgg13", "vgg16", "vggsnn"]
BIG = {"resnet18", "resnet19", "resnet34", "vgg11", "vgg13", "vgg16", "vggsnn"}


def input_size(name: str) -> int:
    """The smallest input that reaches a 1x1 last stage: ResNets stride 3 times, VGGs pool 4 times."""
    return 16 if "vgg" in name else 8


def make_input(name: str, kind: str, T: int, batch: int = 2) -> torch.Tensor:
    """Static images, except vggsnn's SNN, which takes event frames [T, B, 2, H, W]."""
    size = input_size(name)
    if name == "vggsnn":
        frames = (torch.rand(T, batch, 2, size, size) < 0.3).float()
        return frames if kind == "snn" else frames.mean(0)
    return torch.rand(batch, 3, size, size)


def stage_shapes(net, batch: int, size: int) -> list[tuple[int, ...]]:
    sizes = [max(size // 2**k, 1) for k in range(net.num_stages)]
    if net.stem_channels == net.stage_channels[0]:  # ResNets: the first stage keeps the stem's resolution
        return [(batch, c, s, s) for c, s in zip(net.stage_channels, sizes, strict=True)]
    return [(batch, c, s // 2, s // 2) for c, s in zip(net.stage_channels, sizes, strict=True)]


def check_grads(net) -> None:
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def test_list_models():
    assert list_models() == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_ann_shapes_and_grads(name, seed):
    net = create_model(name, kind="ann", num_classes=5).train()
    x = make_input(name, "ann", 1)
    logits, features = net(x, return_features=True)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert [tuple(f.shape) for f in features] == stage_shapes(net, 2, input_size(name))
    logits.backward(torch.randn_like(logits))
    check_grads(net)


@pytest.mark.parametrize("mode", ["bptt", "rate", "eval"])
@pytest.mark.parametrize("name", ALL)
def test_snn_shapes_and_grads(name, mode, seed):
    T = 2 if name in BIG else 3
    net = create_model(name, kind="snn", num_classes=5, T=T).train()
    x = make_input(name, "snn", T)
    logits, features = net(x, mode=mode, return_features=True)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert [tuple(f.shape) for f in features] == stage_shapes(net, 2, input_size(name))
    assert all(torch.isfinite(f).all() for f in features)
    if mode == "eval":
        assert not logits.requires_grad and not any(f.requires_grad for f in features)
        return
    assert all(f.requires_grad for f in features)
    logits.backward(torch.randn_like(logits))
    check_grads(net)


@pytest.mark.parametrize("kind", ["ann", "snn"])
def test_imagenet_stem(kind, seed):
    net = create_model("resnet18", kind=kind, T=2, stem="imagenet")
    logits, features = net(torch.rand(1, 3, 64, 64), return_features=True)
    assert logits.shape == (1, 10)
    assert [tuple(f.shape[1:]) for f in features] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_vgg"])
def test_tiny_models_are_small_and_learn_every_parameter(name, seed):
    """On 28x28 grayscale, every parameter gets a non-zero gradient in both training modes (no dead layer)."""
    net = create_model(name, kind="snn", in_channels=1, T=4).train()
    assert 5_000 < sum(p.numel() for p in net.parameters()) < 100_000
    x = torch.rand(8, 1, 28, 28)
    for mode in ("bptt", "rate"):
        net.zero_grad()
        logits = net(x, mode=mode)
        logits.backward(torch.randn_like(logits))
        for pname, p in net.named_parameters():
            assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient in {mode} mode"


def test_twins_share_parameter_names_and_shapes(seed):
    for name in ("tiny_resnet", "tiny_vgg", "resnet20"):
        ann, snn = create_model(name, kind="ann"), create_model(name, kind="snn")
        assert {k: v.shape for k, v in ann.state_dict().items()} == {k: v.shape for k, v in snn.state_dict().items()}
        snn.load_state_dict(ann.state_dict())
        ann.load_state_dict(snn.state_dict())
        assert torch.equal(snn.stem.conv.weight if name != "tiny_vgg" else snn.stem.conv1.weight,
                           ann.stem.conv.weight if name != "tiny_vgg" else ann.stem.conv1.weight)  # fmt: skip


def test_interface_attributes():
    net = create_model("tiny_resnet", kind="snn", T=3)
    assert net.kind == "snn" and net.T == 3 and net.num_stages == len(net.stages) == 3
    assert isinstance(net.stages, torch.nn.ModuleList) and isinstance(net.head.fc, torch.nn.Linear)
    ann = create_model("tiny_resnet", kind="ann")
    assert ann.kind == "ann" and ann.T is None
    assert create_model("vggsnn").in_channels == 2


def test_default_mode_follows_training(seed):
    net = create_model("tiny_vgg", kind="snn", T=2)
    x = torch.rand(2, 3, 8, 8)
    assert net.train()(x).requires_grad
    assert not net.eval()(x).requires_grad


def test_modes_agree_on_the_forward_value(seed):
    """Without batch statistics (eval BN), bptt, rate and eval compute the same spikes, so the same logits."""
    net = create_model("tiny_resnet", kind="snn", T=4).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    bptt, rate, plain = (net(x, mode=m) for m in ("bptt", "rate", "eval"))
    torch.testing.assert_close(rate, bptt)
    torch.testing.assert_close(plain, bptt)


def test_direct_encoding_runs_the_first_conv_once(seed):
    net = create_model("tiny_resnet", kind="snn", T=4)
    shapes = []
    net.stem.conv.register_forward_hook(lambda m, inputs, out: shapes.append(tuple(inputs[0].shape)))
    for mode in ("bptt", "rate", "eval"):
        net(torch.rand(2, 3, 8, 8), mode=mode)
    assert shapes == [(1, 2, 3, 8, 8)] * 3  # one step of B images, not T steps


def test_sequence_input_and_poisson_encoder(seed):
    net = create_model("tiny_vgg", kind="snn", T=4, in_channels=1)
    x = torch.rand(2, 1, 8, 8)
    spikes = PoissonEncoder(4, seed=7)(x)
    assert spikes.shape == (4, 2, 1, 8, 8) and torch.equal(spikes, PoissonEncoder(4, seed=7)(x))
    for mode in ("bptt", "rate", "eval"):
        assert net(spikes, mode=mode).shape == (2, 10)


def test_neuron_options_reach_every_lif(seed):
    net = create_model("tiny_resnet", kind="snn", tau=3.0, v_threshold=0.5, v_reset=0.0, surrogate="atan")
    lifs = [m for m in net.modules() if isinstance(m, models.LIF)]
    assert len(lifs) == 7
    assert all(m.options.tau == 3.0 and m.options.v_reset == 0.0 and m.options.surrogate == "atan" for m in lifs)
    logits = net.train()(torch.rand(2, 3, 8, 8), mode="rate")
    assert torch.isfinite(logits).all()


def test_firing_rates(seed):
    net = create_model("tiny_vgg", kind="snn", T=4).eval()
    with FiringRates(net) as monitor:
        net(torch.rand(2, 3, 8, 8))
    rates = monitor.rates()
    assert list(rates) == [n for n, m in net.named_modules() if isinstance(m, models.LIF)]
    assert all(0.0 <= r <= 1.0 for r in rates.values()) and any(r > 0 for r in rates.values())
    assert not net.stem.act1._forward_hooks  # the hooks are gone after the block


def test_forward_tail_composes_with_the_features(seed):
    ann = create_model("tiny_resnet", kind="ann").eval()
    x = torch.rand(2, 3, 8, 8)
    logits, features = ann(x, return_features=True)
    torch.testing.assert_close(ann.forward_tail(ann.stem(x), 0), logits)
    for k in range(1, ann.num_stages + 1):
        torch.testing.assert_close(ann.forward_tail(features[k - 1], k), logits)
    snn = create_model("tiny_resnet", kind="snn", T=3).train()
    _, features = snn(x, mode="rate", return_features=True)
    for mode in ("bptt", "rate", "eval"):
        out = snn.forward_tail(features[0].detach(), 1, mode=mode)
        assert out.shape == (2, 10) and out.requires_grad == (mode != "eval")


@pytest.mark.parametrize("mode", ["bptt", "rate"])
def test_bfloat16(mode, seed):
    net = create_model("tiny_resnet", kind="snn", T=2).to(torch.bfloat16).train()
    logits, features = net(torch.rand(2, 3, 8, 8, dtype=torch.bfloat16), mode=mode, return_features=True)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().sum().backward()
    check_grads(net)
