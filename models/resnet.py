"""ResNet-18/19/20/34 and tiny_resnet as ANN/SNN twins: one spec, one layer factory per kind.

    stem   "cifar": conv3x3 - BN - act;  "imagenet": conv7x7/2 - BN - act - maxpool3x3/2
    stage k: BasicBlocks of width widths[k] (the first one strides by 2 for k > 0)
    head   global average pool - fc

BasicBlock: act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x)), shortcut = 1x1 conv - BN where the shape changes.
With act = LIF the residual add is on currents, before the neuron (the spiking ResNet of tdBN, Zheng et al. 2021);
in rate mode it adds both streams.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from models.layers import LayerFactory, make_layers
from models.network import Head, Network, init_weights
from models.streams import Streams

# name -> (blocks per stage, stage widths, stem width)
RESNET_SPECS: dict[str, tuple[list[int], list[int], int]] = {
    "resnet18": ([2, 2, 2, 2], [64, 128, 256, 512], 64),
    "resnet19": ([3, 3, 2], [128, 256, 512], 128),  # Zheng et al. 2021, without the extra fc-256
    "resnet20": ([3, 3, 3], [16, 32, 64], 16),  # He et al. 2016's CIFAR ResNet
    "resnet34": ([3, 4, 6, 3], [64, 128, 256, 512], 64),
    "tiny_resnet": ([1, 1, 1], [8, 16, 32], 8),  # ~25k parameters, for CPU runs on 8x8 or 28x28 inputs
}
STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut; x [.., C_in, H, W] -> [.., C_out, H / stride, W / stride]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, layers: LayerFactory):
        super().__init__()
        self.conv1 = layers.conv(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = layers.norm(out_channels)
        self.act1 = layers.act()
        self.conv2 = layers.conv(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = layers.norm(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=layers.conv(in_channels, out_channels, 1, stride, bias=False), bn=layers.norm(out_channels)
                )
            )
        self.act2 = layers.act()

    def forward(self, x):
        # In rate mode x is read twice: the residual branch gets it borrowed, the shortcut (its last use) as it came,
        # and the sum goes over the shortcut's spikes where they are owned (models/streams.py).
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x.borrowed() if isinstance(x, Streams) else x)))))
        return self.act2(self.shortcut(x) + out)


def make_stem(kind: str, in_channels: int, width: int, layers: LayerFactory) -> nn.Sequential:
    if kind not in STEMS:
        raise ValueError(f"stem must be one of {list(STEMS)}, got {kind!r}")
    if kind == "cifar":
        conv = layers.conv(in_channels, width, 3, 1, 1, bias=False)
        return nn.Sequential(OrderedDict(conv=conv, bn=layers.norm(width), act=layers.act()))
    conv = layers.conv(in_channels, width, 7, 2, 3, bias=False)
    pool = layers.max_pool(3, 2, 1)
    return nn.Sequential(OrderedDict(conv=conv, bn=layers.norm(width), act=layers.act(), pool=pool))


class ResNet(Network):
    """A ResNet from `RESNET_SPECS[name]`; kind "ann" (ReLU) or "snn" (LIF with `neuron_options`)."""

    def __init__(
        self,
        name: str,
        *,
        kind: str = "ann",
        num_classes: int = 10,
        in_channels: int = 3,
        T: int | None = 4,
        stem: str = "cifar",
        **neuron_options,
    ):
        if name not in RESNET_SPECS:
            raise ValueError(f"unknown ResNet {name!r}; known: {sorted(RESNET_SPECS)}")
        blocks, widths, stem_width = RESNET_SPECS[name]
        layers = make_layers(kind, **neuron_options)
        stages, channels = [], stem_width
        for k, (n_blocks, width) in enumerate(zip(blocks, widths, strict=True)):
            strides = [1 if k == 0 else 2] + [1] * (n_blocks - 1)
            stage = []
            for stride in strides:
                stage.append(BasicBlock(channels, width, stride, layers))
                channels = width
            stages.append(nn.Sequential(*stage))
        super().__init__(
            make_stem(stem, in_channels, stem_width, layers),
            stages,
            Head(channels, num_classes),
            kind=kind,
            in_channels=in_channels,
            stem_channels=stem_width,
            stage_channels=widths,
            T=T,
        )
        init_weights(self)
