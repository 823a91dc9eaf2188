"""Evaluation: accuracy, operation counts against hand-counted MACs / SOPs, energy, firing rates."""

import pytest
import torch
from torch import nn

from distill.datasets.base import Dataset
from distill.evaluate import E_AC_PJ, E_MAC_PJ, Profile, accuracy, profile
from models import create_model


class Net(nn.Module):
    """conv 1->2 (3x3, pad 1) on 4x4, then flatten and linear 32->3: 2*16*9 = 288 + 32*3 = 96 MACs per sample."""

    kind = "ann"

    def __init__(self, binary_input=False):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Linear(32, 3)
        self.binary_input = binary_input

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def data(images, labels):
    return Dataset("toy", labels=labels, num_classes=3, images=images, scale=1.0)


def test_macs_counted_by_hand():
    toy = data(torch.rand(5, 1, 4, 4) + 0.1, torch.zeros(5, dtype=torch.int64))
    p = profile(Net(), toy, torch.device("cpu"), torch.arange(5))
    assert p.macs == 288 + 96 and p.sops == 0 and p.firing_rates == {}
    assert p.energy_uj == pytest.approx((288 + 96) * E_MAC_PJ * 1e-6)


def test_binary_inputs_count_as_synaptic_operations():
    images = torch.zeros(4, 1, 4, 4)
    images[:, :, :2] = 1.0  # half of the inputs spike
    p = profile(Net(), data(images, torch.zeros(4, dtype=torch.int64)), torch.device("cpu"), torch.arange(4))
    assert p.sops == pytest.approx(288 * 0.5) and p.macs == 96  # the conv accumulates; the linear's input is analog
    assert p.energy_uj == pytest.approx((144 * E_AC_PJ + 96 * E_MAC_PJ) * 1e-6)


def test_accuracy_and_firing_rates_of_an_snn():
    torch.manual_seed(0)
    snn = create_model("tiny_resnet", "snn", num_classes=3, in_channels=1, T=2)
    toy = data(10 * torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]))  # strong enough to spike
    p = profile(snn, toy, torch.device("cpu"), torch.arange(6))
    assert p.firing_rates and all(0 <= r <= 1 for r in p.firing_rates.values())
    assert p.sops > 0 and p.accuracy == pytest.approx(accuracy(snn, toy, torch.device("cpu"), batch_size=4))
    assert isinstance(p, Profile) and 0 <= p.mean_firing_rate <= 1
