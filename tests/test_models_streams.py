"""Rate mode's spike stream written over its owned temporaries (models/streams.py): the same bits as computing every
layer's output into a new tensor, never a write to a tensor the caller still holds, and fewer [T, B, ...] tensors."""

import functools

import pytest
import torch
from torch import nn

import models.streams
from models import LIF, BatchNorm2d, Streams, create_model
from models.layers import AvgPool2d, Conv2d, MaxPool2d
from models.resnet import BasicBlock
from models.streams import fold_time, map_steps


@pytest.fixture
def out_of_place(monkeypatch):
    """Switches rate mode back to the committed behaviour: every layer's spikes in a new tensor, folded over time."""

    def switch():
        monkeypatch.setattr(models.streams, "map_steps", lambda fn, x, in_place=False: fold_time(fn, x))
        monkeypatch.setattr(Streams, "reusable", property(lambda self: False))

    return switch


def _train_step(name, x, T, return_features=True):
    torch.manual_seed(0)
    net = create_model(name, kind="snn", T=T).train()
    logits, features = net(x, mode="rate", return_features=True)
    (logits.square().sum() + sum(f.square().sum() for f in features)).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    return logits.detach(), [f.detach() for f in features], grads, dict(net.named_buffers())


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_vgg"])
@pytest.mark.parametrize("sequence", [False, True], ids=["static", "sequence"])
def test_rate_mode_bit_identical_to_out_of_place(name, sequence, out_of_place):
    """Logits, features, every gradient and the BatchNorm running statistics: equal, bit for bit."""
    T = 3
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((T, 4, 3, 8, 8) if sequence else (4, 3, 8, 8), generator=gen)
    if sequence:
        x = (x < 0.5).float()
    got = _train_step(name, x, T)
    out_of_place()
    want = _train_step(name, x, T)
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[1], want[1], strict=True):
        assert torch.equal(a, b)
    for dicts in ((got[2], want[2]), (got[3], want[3])):
        assert dicts[0].keys() == dicts[1].keys()
        for key in dicts[0]:
            assert torch.equal(dicts[0][key], dicts[1][key]), key


def test_inputs_the_caller_holds_are_never_modified():
    """A sequence input, a feature given to forward_tail and a not-owned Streams keep their values."""
    torch.manual_seed(0)
    net = create_model("tiny_resnet", kind="snn", T=3).train()
    sequence = (torch.rand(3, 2, 3, 8, 8) < 0.5).float()
    kept = sequence.clone()
    net(sequence, mode="rate").sum().backward()
    assert torch.equal(sequence, kept)
    feature = torch.rand(2, net.stage_channels[0], 8, 8)
    kept = feature.clone()
    net.forward_tail(feature, 1, mode="rate").sum().backward()
    assert torch.equal(feature, kept)
    block = net.stages[1][0]
    spikes = (torch.rand(3, 2, net.stage_channels[0], 8, 8) < 0.5).float()
    kept = spikes.clone()
    block(Streams(spikes, spikes.mean(0)))
    assert torch.equal(spikes, kept)


@pytest.mark.parametrize("stride,width", [(1, 8), (2, 16)], ids=["identity_shortcut", "conv_shortcut"])
def test_residual_block_reads_an_owned_input_before_overwriting_it(stride, width, out_of_place):
    """The block's input is read by both branches: owned or not, the block gives the same output; owned, the
    identity shortcut's sum goes over it."""
    torch.manual_seed(0)
    block = BasicBlock(8, width, stride, models.layers.make_layers("snn")).train()
    spikes = (torch.rand(3, 2, 8, 6, 6) < 0.5).float()
    outputs = []
    for owned in (False, True):
        buffer = spikes.clone()
        out = block(Streams(buffer, spikes.mean(0), owned=owned))
        outputs.append(out.spikes.clone())
        assert out.owned
        if not owned:
            assert torch.equal(buffer, spikes)
        elif stride == 1:
            assert out.spikes.data_ptr() == buffer.data_ptr()
    out_of_place()
    expected = block(Streams(spikes, spikes.mean(0), owned=True)).spikes
    for out in outputs:
        assert torch.equal(out, expected)


def test_lif_writes_over_an_owned_input_only():
    x = torch.randn(4, 3, 5) + 0.8
    expected = LIF()(Streams(x, x.mean(0)))
    assert expected.owned and expected.spikes.data_ptr() != x.data_ptr()
    buffer = x.clone()
    out = LIF()(Streams(buffer, x.mean(0), owned=True))
    assert out.spikes.data_ptr() == buffer.data_ptr()
    assert torch.equal(out.spikes, expected.spikes) and torch.equal(out.rate, expected.rate)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # owned but not contiguous: a new tensor
    out = LIF()(Streams(strided, x.mean(0), owned=True))
    assert torch.equal(strided, x) and torch.equal(out.spikes, expected.spikes)


def test_residual_add_goes_over_an_owned_operand():
    a, b = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    expected = a + b
    for owned, target in (((True, False), 0), ((False, True), 1), ((True, True), 0)):
        ops = [Streams(a.clone(), a.mean(0), owned=owned[0]), Streams(b.clone(), b.mean(0), owned=owned[1])]
        out = ops[0] + ops[1]
        assert out.owned and torch.equal(out.spikes, expected)
        assert out.spikes.data_ptr() == ops[target].spikes.data_ptr()
        assert torch.equal(ops[1 - target].spikes, (a, b)[1 - target])
    left, right = Streams(a, a.mean(0)), Streams(b, b.mean(0))
    out = left + right
    assert torch.equal(out.spikes, expected) and out.spikes.data_ptr() not in (a.data_ptr(), b.data_ptr())
    # A sum that broadcasts (or promotes) does not fit the operand: a new tensor.
    small = torch.randn(3, 2, 1)
    out = Streams(small.clone(), small.mean(0), owned=True) + Streams(b, b.mean(0))
    assert torch.equal(out.spikes, small + b)


@pytest.mark.parametrize(
    "layer",
    [
        Conv2d(8, 8, 3, 1, 1, bias=False),
        Conv2d(8, 16, 3, 2, 1, bias=False),
        Conv2d(8, 16, 1, 2, bias=False),
        Conv2d(8, 4, 7, 2, 3),
        AvgPool2d(2),
        MaxPool2d(3, 2, 1),
    ],
    ids=["conv3x3", "conv3x3_s2", "conv1x1_s2", "conv7x7_s2", "avgpool", "maxpool"],
)
def test_stateless_layers_step_by_step_equal_folded(layer):
    """Applying a layer one timestep at a time gives the bits of one call on the T*B batch, in place or not."""
    x = (torch.rand(5, 4, 8, 12, 12) < 0.4).float()
    torch_layer = functools.partial(type(layer).__bases__[0].forward, layer)  # nn.Conv2d.forward etc.: on [N, ...]
    with torch.no_grad():
        expected = fold_time(torch_layer, x)
        assert torch.equal(map_steps(torch_layer, x), expected)
        buffer = x.clone()
        out = map_steps(torch_layer, buffer, in_place=True)
        assert torch.equal(out, expected)
        assert (out.data_ptr() == buffer.data_ptr()) == (out.shape == x.shape)
    out = layer(Streams(x, x.mean(0), owned=False))
    assert out.owned and torch.equal(out.spikes, expected)


@pytest.mark.parametrize("momentum,affine", [(0.1, True), (None, True), (0.3, False)])
def test_batchnorm_in_place_equals_nn_batchnorm(momentum, affine):
    """Over an owned spike stream: torch's BatchNorm output, running statistics and batch count, bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, 7) * 2 + 0.5
    options = dict(momentum=momentum, affine=affine)
    reference, bn = nn.BatchNorm2d(5, **options), BatchNorm2d(5, **options)
    if affine:
        with torch.no_grad():
            reference.weight.uniform_(0.5, 1.5)
            reference.bias.uniform_(-0.5, 0.5)
            bn.load_state_dict(reference.state_dict())
    for _ in range(2):  # the second call starts from updated running statistics (and counts 2 for momentum None)
        with torch.no_grad():
            expected = reference(x.flatten(0, 1)).unflatten(0, (3, 4))
        buffer = x.clone()
        out = bn(Streams(buffer, x.mean(0), owned=True))
        assert out.spikes.data_ptr() == buffer.data_ptr()
        assert torch.equal(out.spikes, expected)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(bn, name), getattr(reference, name)), name
    kept = x.clone()
    bn(Streams(x, x.mean(0)))
    assert torch.equal(x, kept)


def test_stage_hooks_still_run():
    """The stages' layers run one by one, except for a stage with hooks, which is called as a whole."""
    net = create_model("tiny_resnet", kind="snn", T=2).train()
    calls = []
    net.stages[1].register_forward_hook(lambda module, inputs, output: calls.append(type(output).__name__))
    net(torch.rand(2, 3, 8, 8), mode="rate")
    net(torch.rand(2, 3, 8, 8), mode="bptt")
    assert calls == ["Streams", "Tensor"]
