"""The model registry: `create_model(name, kind, ...)` and `list_models()`.

Each architecture is registered by a two-line constructor; the ANN (kind="ann") and SNN (kind="snn") twins of a
name have identical parameter names and shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from torch import nn

from models.network import Network
from models.resnet import ResNet
from models.vgg import VGG
from models.weights import load_weights

_REGISTRY: dict[str, Callable[..., Network]] = {}
_DEFAULT_IN_CHANNELS: dict[str, int] = {"vggsnn": 2}  # event frames: ON and OFF polarity


def register(fn: Callable[..., Network]) -> Callable[..., Network]:
    _REGISTRY[fn.__name__] = fn
    return fn


@register
def resnet18(**kwargs) -> Network:
    return ResNet("resnet18", **kwargs)


@register
def resnet19(**kwargs) -> Network:
    return ResNet("resnet19", **kwargs)


@register
def resnet20(**kwargs) -> Network:
    return ResNet("resnet20", **kwargs)


@register
def resnet34(**kwargs) -> Network:
    return ResNet("resnet34", **kwargs)


@register
def tiny_resnet(**kwargs) -> Network:
    return ResNet("tiny_resnet", **kwargs)


@register
def vgg11(**kwargs) -> Network:
    return VGG("vgg11", **kwargs)


@register
def vgg13(**kwargs) -> Network:
    return VGG("vgg13", **kwargs)


@register
def vgg16(**kwargs) -> Network:
    return VGG("vgg16", **kwargs)


@register
def vggsnn(**kwargs) -> Network:
    return VGG("vggsnn", **kwargs)


@register
def tiny_vgg(**kwargs) -> Network:
    return VGG("tiny_vgg", **kwargs)


def list_models() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    kind: str = "ann",
    num_classes: int = 10,
    in_channels: int | None = None,
    T: int = 4,
    weights: nn.Module | Mapping | str | Path | None = None,
    **kwargs,
) -> Network:
    """Builds `name` as an ANN (ReLU) or SNN (LIF) twin, with fresh weights or `weights`.

    in_channels None: 2 for "vggsnn" (event frames [T, B, 2, H, W]), 3 otherwise. T: timesteps (kind="snn" only).
    weights: a model, a state_dict or a file in SpikeKD's layout or torchvision's ResNet layout (see
    `models.weights`); where its head has another class count than `num_classes`, the head stays fresh.
    kwargs: `stem="cifar"|"imagenet"` for ResNets; neuron options for kind="snn" (tau, v_threshold, v_reset,
    decay_input, detach_reset, surrogate, alpha, backend), passed to every LIF layer.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {list_models()}")
    if in_channels is None:
        in_channels = _DEFAULT_IN_CHANNELS.get(name, 3)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
    net = _REGISTRY[name](kind=kind, num_classes=num_classes, in_channels=in_channels, T=T, **kwargs)
    if weights is not None:
        load_weights(net, weights)
    return net
