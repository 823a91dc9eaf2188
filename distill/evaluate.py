"""Evaluation: accuracy, per-layer firing rates and an energy estimate of the SNN against its ANN twin.

Energy (the usual estimate of SNN papers, 45 nm CMOS figures of Horowitz, ISSCC 2014): a multiply-accumulate costs
``E_MAC = 4.6 pJ``, an accumulate ``E_AC = 0.9 pJ``. The ANN spends ``MACs * E_MAC``. In the SNN, a conv or linear
layer whose input is binary spikes only accumulates, once per input spike and fan-out: its synaptic operations are
``SOPs = MACs * T * (fraction of non-zero inputs)``; a layer whose input is not binary (the first conv on the direct-
encoded image, a layer after average pooling, the head on the rate feature) is counted in MACs. Batch norm folds into
the convs and is not counted.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from distill.datasets import Dataset
from models import LIF, FiringRates

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


def model_input(x: Tensor, kind: str) -> Tensor:
    """A batch as a model takes it: event data ``[B, T, C, H, W]`` becomes time-first for an SNN and its mean over
    time for an ANN; static images ``[B, C, H, W]`` go as they are (the SNN encodes them directly)."""
    if x.dim() == 5:
        return x.transpose(0, 1) if kind == "snn" else x.mean(1)
    return x


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: Dataset,
    device: torch.device,
    batch_size: int = 256,
    index: Tensor | None = None,
    autocast: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` (an ANN or an SNN in eval mode) on ``data[index]``; under ``torch.distributed``
    each rank passes its own ``index`` and the counts are summed over ranks."""
    index = torch.arange(len(data)) if index is None else index
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(index), batch_size):
        x, y = data.batch(index[start : start + batch_size], device)
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            logits = model(model_input(x, model.kind))
        correct += (logits.argmax(-1) == y).sum()
        total += len(y)
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        counts = torch.stack([correct, total])
        dist.all_reduce(counts)
        correct, total = counts
    return float(correct / total.clamp_min(1))


@dataclass
class Profile:
    """What ``profile`` measured, per sample."""

    accuracy: float
    firing_rates: dict[str, float] = field(default_factory=dict)
    macs: float = 0.0  # multiply-accumulates per sample (ANN: all of them; SNN: those of non-binary inputs)
    sops: float = 0.0  # synaptic (accumulate) operations per sample, SNN only

    @property
    def mean_firing_rate(self) -> float:
        return sum(self.firing_rates.values()) / len(self.firing_rates) if self.firing_rates else 0.0

    @property
    def energy_uj(self) -> float:
        return (self.macs * E_MAC_PJ + self.sops * E_AC_PJ) * 1e-6


class _OpCounter:
    """Forward hooks on every conv and linear layer that count MACs, or SOPs where the input is binary."""

    def __init__(self, net: nn.Module):
        self.macs = self.sops = 0.0
        self.handles = [
            m.register_forward_hook(self._count) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)
        ]

    def _count(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        ops = float(output.numel()) * per_output  # over the call's (T x) B samples
        binary = bool(((x == 0) | (x == 1)).all())
        if binary:
            self.sops += ops * float((x != 0).float().mean())
        else:
            self.macs += ops

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def profile(model: nn.Module, data: Dataset, device: torch.device, index: Tensor, batch_size: int = 256) -> Profile:
    """Accuracy, firing rates of every LIF layer (spikes per neuron per time step) and operation counts per sample of
    ``model`` on ``data[index]``, in eval mode, on this process only."""
    was_training = model.training
    model.eval()
    counter = _OpCounter(model)
    spiking = any(isinstance(m, LIF) for m in model.modules())
    correct = 0
    try:
        with FiringRates(model) if spiking else nullcontext() as rates:
            for start in range(0, len(index), batch_size):
                x, y = data.batch(index[start : start + batch_size], device)
                correct += int((model(model_input(x, model.kind)).argmax(-1) == y).sum())
    finally:
        counter.close()
        model.train(was_training)
    n = max(len(index), 1)
    return Profile(
        accuracy=correct / n,
        firing_rates=rates.rates() if spiking else {},
        macs=counter.macs / n,
        sops=counter.sops / n,
    )
