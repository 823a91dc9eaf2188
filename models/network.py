"""The network every architecture is: a stem, K stages and a head, run as an ANN or as an SNN in one of three modes.

    ANN:  x [B, C, H, W] -> stem -> stage_1 .. stage_K -> head -> logits [B, classes]
    SNN:  x [B, C, H, W] (direct encoding, repeated over T) or [T, B, C, H, W] (events, Poisson spikes)
          -> the same layers on sequences -> rate feature r_K = mean_t s_K -> head -> logits [B, classes]

The head (global average pool + linear) is linear, so head(mean_t s_t) = mean_t head(s_t): the logits are the mean
over time of the per-step logits, computed once. SNN modes: "bptt" (graph through time), "rate" (the two-stream
pass of docs/design.md: the logits and features are the rate stream's), "eval" (no graph, nothing saved). The default is
"bptt" when the net is training, "eval" otherwise. An ANN builds a graph unless mode="eval".
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from kernels import rate_reduce
from models.encoding import direct_encode
from models.neuron import LIF, check_mode
from models.streams import Streams


class Head(nn.Module):
    """Global average pool + fc: feature [B, C, H, W] -> logits [B, num_classes]."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class Network(nn.Module):
    """stem (nn.Sequential), stages (nn.ModuleList of K stages), head (`Head`); see the module docstring.

    Attributes: kind ("ann" | "snn"), T (timesteps of the SNN; None for an ANN), num_stages, in_channels,
    stem_channels, stage_channels (output channels of each stage).
    """

    def __init__(
        self,
        stem: nn.Sequential,
        stages: list[nn.Module],
        head: Head,
        *,
        kind: str,
        in_channels: int,
        stem_channels: int,
        stage_channels: list[int],
        T: int | None,
    ):
        super().__init__()
        if kind == "snn" and (isinstance(T, bool) or not isinstance(T, int) or T < 1):
            raise ValueError(f"T must be an int >= 1 (timesteps) for kind='snn', got {T!r}")
        self.stem, self.stages, self.head = stem, nn.ModuleList(stages), head
        self.kind = kind
        self.T = T if kind == "snn" else None
        self.in_channels = in_channels
        self.stem_channels = stem_channels
        self.stage_channels = list(stage_channels)
        # The stateless layers before the stem's first neuron run once on a static image (direct encoding).
        self._front = next((i for i, m in enumerate(stem) if isinstance(m, LIF)), len(stem))

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor, mode: str | None = None, return_features: bool = False):
        """x -> logits [B, classes], or (logits, features) with the K per-stage rate features [B, C_k, H_k, W_k]."""
        mode = self.resolve_mode(mode)
        self._check_input(x)
        with torch.no_grad() if mode == "eval" else nullcontext():
            h = [self.stem(x) if self.kind == "ann" else self._encode(x, mode)]
            logits, features = self._run_stages(h, 0, return_features)
        return (logits, features) if return_features else logits

    def forward_tail(self, feature: torch.Tensor, start: int, mode: str | None = None) -> torch.Tensor:
        """stages[start:] and the head on a feature [B, C, H, W] (an SNN repeats it over T) -> logits [B, classes].

        The input of stage `start` (0-based): what the stem gives for start=0, stage `start`'s output otherwise. This
        is the tail of a hybrid: the ANN's stages k+1..K after an aligned SNN rate feature r_k.
        """
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= self.num_stages:
            raise ValueError(f"start must be an int in [0, {self.num_stages}] (a stage index), got {start!r}")
        expected = self.stem_channels if start == 0 else self.stage_channels[start - 1]
        if not isinstance(feature, torch.Tensor) or feature.dim() != 4 or feature.shape[1] != expected:
            shape = tuple(feature.shape) if isinstance(feature, torch.Tensor) else type(feature).__name__
            raise ValueError(f"feature must be [B, {expected}, H, W] (the input of stage {start}), got {shape}")
        mode = self.resolve_mode(mode)
        with torch.no_grad() if mode == "eval" else nullcontext():
            h = feature
            if self.kind == "snn":
                h = feature.unsqueeze(0).expand(self.T, *feature.shape)
                h = Streams(h.detach(), feature) if mode == "rate" else h
            logits, _ = self._run_stages([h], start, False)
        return logits

    def resolve_mode(self, mode: str | None) -> str:
        """The mode a call runs in: `mode` if given; else for an SNN "bptt" when training and "eval" otherwise, and for
        an ANN "bptt" (a graph, as plain PyTorch: an ANN's modes differ only in that "eval" builds none)."""
        check_mode(mode)
        if mode is None:
            return "bptt" if self.training or self.kind == "ann" else "eval"
        return mode

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        accepted = "[B, C, H, W]" if self.kind == "ann" else "[B, C, H, W] (static) or [T, B, C, H, W] (sequence)"
        if x.dim() not in ((4,) if self.kind == "ann" else (4, 5)):
            raise ValueError(f"x must be {accepted} for kind={self.kind!r}, got shape {tuple(x.shape)}")
        if x.shape[-3] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[-3]} channels (shape {tuple(x.shape)}), but this net takes in_channels="
                f"{self.in_channels}"
            )
        if x.dim() == 5 and x.shape[0] != self.T:
            raise ValueError(
                f"x is a sequence of T={x.shape[0]} steps (shape {tuple(x.shape)}), but net.T={self.T}; "
                "pass net.T steps, a static [B, C, H, W] input, or set net.T"
            )

    def _encode(self, x: torch.Tensor, mode: str) -> torch.Tensor | Streams:
        """The stem on the input: direct encoding of a static image, or the given sequence (as Streams in rate mode)."""
        if x.dim() == 4:
            h = direct_encode(x, self.T, self.stem[: self._front], rate=mode == "rate")
            return self.stem[self._front :](h)
        return self.stem(Streams.from_sequence(x) if mode == "rate" else x)

    def _run_stages(self, inputs: list, start: int, keep: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """stages[start:] and the head on the one element of `inputs`, taken out of the list so that no caller keeps
        the first stage input (in rate mode a [T, B, ...] spike stream) alive through all the stages."""
        h = inputs.pop()
        features = []
        for stage in self.stages[start:]:
            for layer in _layers(stage):
                h = layer(h)
            if keep:
                features.append(self._rate_feature(h))
        last = features[-1] if features else self._rate_feature(h)
        return self.head(last), features

    def _rate_feature(self, h: torch.Tensor | Streams) -> torch.Tensor:
        """[B, C, H, W]: the stage output (ANN), the rate stream (rate mode), or mean_t of the spikes (bptt, eval)."""
        if isinstance(h, Streams):
            return h.rate
        return rate_reduce(h).to(h.dtype) if self.kind == "snn" else h


def _layers(stage: nn.Module) -> list[nn.Module]:
    """A stage's layers, to be run one after the other: those of a plain nn.Sequential without hooks (what its forward
    does, but each layer's input is let go once the next layer has it), else the stage itself."""
    plain = type(stage) is nn.Sequential and not (stage._forward_hooks or stage._forward_pre_hooks)
    return list(stage) if plain else [stage]


def init_weights(net: nn.Module) -> None:
    """He initialisation of convs (fan_out), BN to the identity: what torchvision does for ResNets and VGGs."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
