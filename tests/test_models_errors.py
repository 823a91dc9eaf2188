"""Bad arguments and bad inputs: errors that name the argument, what was given and what is accepted."""

import pytest
import torch

from models import LIF, PoissonEncoder, create_model


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'; known models: \['resnet18', 'resnet19'"):
        create_model("resnet50")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "cnn"}, r"kind must be one of \['ann', 'snn'\], got 'cnn'"),
        ({"num_classes": 0}, "num_classes must be an int >= 1, got 0"),
        ({"in_channels": 2.5}, "in_channels must be an int >= 1, got 2.5"),
        ({"kind": "snn", "T": 0}, "T must be an int >= 1 .* got 0"),
        ({"stem": "tiny"}, r"stem must be one of \['cifar', 'imagenet'\], got 'tiny'"),
        ({"kind": "snn", "tau": 0.5}, "tau must be a finite number >= 1"),
        ({"kind": "snn", "surrogate": "relu"}, "surrogate must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("tiny_resnet", **kwargs)


def test_unknown_keyword_and_neuron_options_on_an_ann():
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['stem'\]"):
        create_model("tiny_vgg", stem="cifar")
    with pytest.raises(TypeError, match=r"neuron options \['tau'\] apply only to kind='snn'"):
        create_model("tiny_vgg", kind="ann", tau=2.0)


@pytest.mark.parametrize(
    ("kind", "shape", "message"),
    [
        ("snn", (2, 1, 8, 8), r"x has 1 channels \(shape \(2, 1, 8, 8\)\), but this net takes in_channels=3"),
        ("ann", (2, 4, 8, 8), "x has 4 channels"),
        ("snn", (4, 2, 1, 8, 8), "x has 1 channels"),
        ("snn", (3, 8, 8), r"x must be \[B, C, H, W\] \(static\) or \[T, B, C, H, W\] \(sequence\) .* got shape"),
        ("ann", (4, 2, 3, 8, 8), r"x must be \[B, C, H, W\] for kind='ann', got shape \(4, 2, 3, 8, 8\)"),
        ("snn", (5, 2, 3, 8, 8), r"x is a sequence of T=5 steps .* but net.T=4"),
    ],
)
def test_bad_inputs(kind, shape, message):
    net = create_model("tiny_resnet", kind=kind, T=4)
    with pytest.raises(ValueError, match=message):
        net(torch.rand(shape))


def test_bad_mode_and_tail_start():
    net = create_model("tiny_resnet", kind="snn")
    with pytest.raises(ValueError, match=r"mode must be None or one of \['bptt', 'rate', 'eval'\], got 'train'"):
        net(torch.rand(2, 3, 8, 8), mode="train")
    with pytest.raises(ValueError, match=r"start must be an int in \[0, 3\]"):
        net.forward_tail(torch.rand(2, 8, 8, 8), 4)
    with pytest.raises(ValueError, match=r"feature must be \[B, 16, H, W\] \(the input of stage 2\)"):
        net.forward_tail(torch.rand(2, 8, 8, 8), 2)


def test_bad_neuron_and_encoder_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        LIF(backend="cuda")
    with pytest.raises(ValueError, match="a Streams input runs in mode 'rate', got mode='bptt'"):
        LIF()(LIF()(torch.rand(2, 3), mode="rate"), mode="bptt")
    with pytest.raises(ValueError, match="T must be an int >= 1"):
        PoissonEncoder(0)
    with pytest.raises(ValueError, match="seed must be None"):
        PoissonEncoder(4, seed=-1)
