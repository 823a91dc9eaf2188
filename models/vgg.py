"""VGG-11/13/16, VGGSNN and tiny_vgg as ANN/SNN twins, built from config lists of conv widths.

A config is a list of blocks of 3x3 conv widths. The first block is the stem; each later block is a stage that
starts with a 2x2 average pool (exact on both streams in rate mode, and the SNN habit); the head's global average
pool replaces the last pool and the classifier MLP of the original VGG. Each conv is conv3x3 - BN - act.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from models.layers import LayerFactory, make_layers
from models.network import Head, Network, init_weights

VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vggsnn": [[64, 128], [256, 256], [512, 512], [512, 512]],  # Deng et al. 2022 (TET), for 2-channel DVS frames
    "tiny_vgg": [[8], [16], [32], [32]],  # ~15k parameters, for CPU runs on 8x8 or 28x28 inputs
}


def make_block(in_channels: int, widths: list[int], layers: LayerFactory, pool: bool) -> tuple[nn.Sequential, int]:
    """[pool] - (conv3x3 - BN - act) per width; returns the block and its output channels."""
    named: list[tuple[str, nn.Module]] = [("pool", layers.avg_pool(2))] if pool else []
    for i, width in enumerate(widths, start=1):
        named += [
            (f"conv{i}", layers.conv(in_channels, width, 3, 1, 1, bias=False)),
            (f"bn{i}", layers.norm(width)),
            (f"act{i}", layers.act()),
        ]
        in_channels = width
    return nn.Sequential(OrderedDict(named)), in_channels


class VGG(Network):
    """A VGG from `VGG_CONFIGS[name]`; kind "ann" (ReLU) or "snn" (LIF with `neuron_options`)."""

    def __init__(
        self,
        name: str,
        *,
        kind: str = "ann",
        num_classes: int = 10,
        in_channels: int = 3,
        T: int | None = 4,
        **neuron_options,
    ):
        if name not in VGG_CONFIGS:
            raise ValueError(f"unknown VGG {name!r}; known: {sorted(VGG_CONFIGS)}")
        first, *rest = VGG_CONFIGS[name]
        layers = make_layers(kind, **neuron_options)
        stem, channels = make_block(in_channels, first, layers, pool=False)
        stem_channels, stages, stage_channels = channels, [], []
        for widths in rest:
            stage, channels = make_block(channels, widths, layers, pool=True)
            stages.append(stage)
            stage_channels.append(channels)
        super().__init__(
            stem,
            stages,
            Head(channels, num_classes),
            kind=kind,
            in_channels=in_channels,
            stem_channels=stem_channels,
            stage_channels=stage_channels,
            T=T,
        )
        init_weights(self)
