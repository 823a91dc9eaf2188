"""Stateless layers for spiking nets, and the layer factory that makes ANN and SNN twins from one spec.

Each SNN layer subclasses its torch layer (same parameter names, so `snn.load_state_dict(ann.state_dict())` works)
and accepts a time-first sequence [T, B, ...] (time folded into batch, "t b ... -> (t b) ...") or, in rate mode, a
`Streams` pair, on which it acts on both streams. `BatchNorm2d` in rate mode normalises both streams with the spike
stream's statistics and passes the gradient through the rate stream's own (docs/design.md, "Rate-based
backpropagation").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from models.neuron import LIF
from models.streams import Streams, apply_linear, fold_time

KINDS = ("ann", "snn")


class Conv2d(nn.Conv2d):
    """nn.Conv2d on x [T, B, C, H, W] or on both streams."""

    def forward(self, x: torch.Tensor | Streams) -> torch.Tensor | Streams:
        return apply_linear(super().forward, x)


class AvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d on x [T, B, C, H, W] or on both streams (linear, so exact in rate mode)."""

    def forward(self, x: torch.Tensor | Streams) -> torch.Tensor | Streams:
        return apply_linear(super().forward, x)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d on x [T, B, C, H, W] or on both streams.

    Max pooling is not linear: in rate mode the rate stream is maxpool(mean_t s) <= mean_t maxpool(s_t), the usual
    approximation of rate-based backprop. Only the ImageNet ResNet stem uses it.
    """

    def forward(self, x: torch.Tensor | Streams) -> torch.Tensor | Streams:
        return apply_linear(super().forward, x)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d over x [T, B, C, H, W] (statistics over T*B*H*W, as tdBN), or over Streams in rate mode.

    Rate mode with batch statistics, per channel:
        mu_s, var_s = statistics of the spike stream (no graph; they also update the running statistics)
        mu = mu_s + mu_r - sg(mu_r),  var = var_s + var_r - sg(var_r)   (mu_r, var_r of the rate stream [B, C, H, W])
        spikes' = bn(spikes; mu_s, var_s),  rate' = (rate - mu) / sqrt(var + eps) * weight + bias
    so the rate stream is normalised with the spike stream's values while its gradient is that of a BatchNorm on
    the rate stream itself (sg = stop-gradient). With running statistics BN is an affine map and acts on both.
    """

    def forward(self, x: torch.Tensor | Streams) -> torch.Tensor | Streams:
        if not isinstance(x, Streams):
            return fold_time(super().forward, x)
        if not (self.training or self.running_mean is None):
            return apply_linear(super().forward, x)
        with torch.no_grad():
            spikes, mu_s, rstd_s = self._normalise_spikes(x)
        rate = _upcast(x.rate)
        var_r, mu_r = torch.var_mean(rate, dim=(0, 2, 3), unbiased=False)
        mu = mu_s + (mu_r - mu_r.detach())
        # rsqrt(var_s + (var_r - sg(var_r)) + eps): the value rstd_s, the derivative -rstd_s^3 / 2 per unit of var_r
        rstd = rstd_s - 0.5 * rstd_s**3 * (var_r - var_r.detach())
        rate = (rate - mu[:, None, None]) * rstd[:, None, None]
        if self.affine:
            rate = rate * self.weight[:, None, None] + self.bias[:, None, None]
        return Streams(spikes, rate.to(x.rate.dtype), owned=True)

    def _normalise_spikes(self, x: Streams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The spike stream normalised with its own batch statistics, as `nn.BatchNorm2d.forward` normalises it in
        training (the same kernel, output bits and running-statistics update), and those statistics per channel:
        the mean and 1 / sqrt(var + eps), in fp32 (fp64 for fp64). One pass of torch's kernel gives all three; it
        writes over the spikes where they are an owned temporary on the CPU (CUDA's BatchNorm is cuDNN's, which has
        no in-place form)."""
        spikes = x.spikes
        if spikes.shape[0] * spikes.shape[1] * spikes.shape[3] * spikes.shape[4] <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {spikes.shape}")
        flat = spikes.reshape(-1, *spikes.shape[2:])
        if self.running_mean is None or self.running_var is None:
            op, args = torch.ops.aten.native_batch_norm, (flat, self.weight, self.bias, None, None, True, 0.0, self.eps)
        else:
            momentum = 0.0 if self.momentum is None else self.momentum  # as nn.BatchNorm2d counts and averages
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    momentum = 1.0 / float(self.num_batches_tracked)
            op = torch.ops.aten._batch_norm_with_update
            args = (flat, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps)
        if not self._can_normalise_in_place(x):
            out, mean, rstd = op(*args)[:3]
            return out.view(spikes.shape), mean, rstd
        mean, rstd = flat.new_empty(0), flat.new_empty(0)
        outputs = dict(out=flat, save_mean=mean, save_invstd=rstd)
        if op is torch.ops.aten._batch_norm_with_update:
            outputs["reserve"] = flat.new_empty(0, dtype=torch.uint8)
        op.out(*args, **outputs)
        return spikes, mean, rstd

    def _can_normalise_in_place(self, x: Streams) -> bool:
        """Whether torch's kernel can write over the spikes: an owned contiguous temporary, on the CPU, in the
        statistics' dtype, not under autocast."""
        stats = self.running_mean if self.running_mean is not None else self.weight
        return (
            x.reusable
            and x.spikes.device.type == "cpu"
            and (stats is None or x.spikes.dtype == stats.dtype)
            and not torch.is_autocast_enabled("cpu")
        )


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Statistics in fp32 (fp64 stays fp64) whatever the storage dtype, as torch's BatchNorm computes them."""
    return x if x.dtype == torch.float64 else x.float()


@dataclass(frozen=True)
class LayerFactory:
    """The layers of one kind of net: blocks call these and are the same code for the ANN and the SNN twin."""

    kind: str
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    avg_pool: Callable[..., nn.Module]
    max_pool: Callable[..., nn.Module]
    act: Callable[[], nn.Module]


NEURON_OPTIONS = ("tau", "v_threshold", "v_reset", "decay_input", "detach_reset", "surrogate", "alpha", "backend")


def make_layers(kind: str, **neuron_options) -> LayerFactory:
    """kind "ann": torch layers and ReLU; kind "snn": the time-folded layers above and `LIF(**neuron_options)`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    unknown = sorted(set(neuron_options) - set(NEURON_OPTIONS))
    if unknown:
        raise TypeError(f"unknown keyword argument(s) {unknown}; accepted neuron options: {list(NEURON_OPTIONS)}")
    if kind == "ann":
        if neuron_options:
            raise TypeError(f"neuron options {sorted(neuron_options)} apply only to kind='snn', got kind='ann'")
        return LayerFactory("ann", nn.Conv2d, nn.BatchNorm2d, nn.AvgPool2d, nn.MaxPool2d, nn.ReLU)
    LIF(**neuron_options)  # checks the options once, here, with errors that name them
    return LayerFactory("snn", Conv2d, BatchNorm2d, AvgPool2d, MaxPool2d, lambda: LIF(**neuron_options))
