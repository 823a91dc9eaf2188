"""Evaluation: accuracy, per-layer firing rates and an energy estimate of the SNN against its ANN twin.

    python -m distill.evaluate runs/digits-blockwise-rate                 # a run folder, or a student file
    python -m distill.evaluate runs/x/student.pt --dataset cifar10 --data-dir ~/cifar

Energy (the usual estimate of SNN papers, 45 nm CMOS figures of Horowitz, ISSCC 2014): a multiply-accumulate costs
``E_MAC = 4.6 pJ``, an accumulate ``E_AC = 0.9 pJ``. The ANN spends ``MACs * E_MAC``. In the SNN, a conv or linear
layer whose input is binary spikes only accumulates, once per input spike and fan-out: its synaptic operations are
``SOPs = MACs * T * (fraction of non-zero inputs)``; a layer whose input is not binary (the first conv on the direct-
encoded image, a layer after average pooling, the head on the rate feature) is counted in MACs. Batch norm folds into
the convs and is not counted.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from distill.datasets import DATASETS, SPLITS, Dataset, DatasetError, load_dataset
from distill.datasets.pipeline import batches
from models import LIF, FiringRates, load_student
from models.student import student_file
from models.weights import read_weights_file

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
    workers: int = 0,
) -> float:
    """Top-1 accuracy of ``model`` (an ANN or an SNN in eval mode) on ``data[index]``; under ``torch.distributed``
    each rank passes its own ``index`` and the counts are summed over ranks. ``workers``: DataLoader processes that
    read sets stored as files."""
    index = torch.arange(len(data)) if index is None else index
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in batches(data, index.split(batch_size), device, workers):
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
def profile(
    model: nn.Module,
    data: Dataset,
    device: torch.device,
    index: Tensor,
    batch_size: int = 256,
    normalize: bool = True,
    workers: int = 0,
) -> Profile:
    """Accuracy, firing rates of every LIF layer (spikes per neuron per time step) and operation counts per sample of
    ``model`` on ``data[index]``, in eval mode, on this process only. ``normalize`` False: the model takes the
    samples scaled to [0, 1] and normalises them itself (a ``models.Student``)."""
    was_training = model.training
    model.eval()
    counter = _OpCounter(model)
    spiking = any(isinstance(m, LIF) for m in model.modules())
    correct = 0
    try:
        with FiringRates(model) if spiking else nullcontext() as rates:
            for x, y in batches(data, index.split(batch_size), device, workers, normalize=normalize):
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


# ----------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill.evaluate",
        description="Accuracy, per-layer firing rates and the energy estimate of a trained student. The data set, "
        "its folder and the test subset default to the run's own, so the run's reported accuracy comes back.",
    )
    parser.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a run folder (its student.pt) or a student file")
    parser.add_argument("--dataset", choices=DATASETS, help="data set (default: the run's)")
    parser.add_argument("--data-dir", help="folder of the data set (default: the run's for its data set)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split (default: test)")
    parser.add_argument("--image-size", type=int, help="side of ImageNet crops and DVS frames (default: the run's)")
    subset_help = "a fixed random subset of this many samples, 0 = all (default: the run's --test-subset)"
    parser.add_argument("--subset", type=int, help=subset_help)
    parser.add_argument("--batch-size", type=int, help="batch size (default: the run's --eval-batch-size)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes reading files (default: 2)")
    return parser


def evaluation_data(args: argparse.Namespace, config: dict) -> Dataset:
    """The data set to evaluate on: the flags given, else the run's data set, folder, image size and test subset."""
    dataset = args.dataset or config.get("dataset")
    if dataset is None:
        raise DatasetError(f"{args.path} does not say which data set it was trained on; pass --dataset")
    own = dataset == config.get("dataset")
    data_dir = args.data_dir if args.data_dir is not None else (config.get("data_dir", "") if own else "")
    image_size = args.image_size or (config.get("image_size", 0) if own else 0)
    data = load_dataset(dataset, args.split, data_dir or None, False, image_size or None)
    subset = args.subset if args.subset is not None else (config.get("test_subset", 0) if own else 0)
    if args.split != "test" and args.subset is None:
        subset = 0
    return data.subset(subset, config.get("seed", 0))


def main(argv: list[str] | None = None) -> Profile:
    """Prints the student's accuracy, firing rates and energy estimate on the data; returns them."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    try:
        path = student_file(args.path)
        config = read_weights_file(path).get("config", {})
        student = load_student(path, device)
        data = evaluation_data(args, config)
    except (FileNotFoundError, ValueError, DatasetError) as error:
        raise SystemExit(f"error: {error}") from error
    net = student.net
    if data.num_classes != net.head.fc.out_features or data.in_channels != net.in_channels:
        raise SystemExit(
            f"error: the student takes {net.in_channels}-channel images of {net.head.fc.out_features} classes; "
            f"{data.name} has {data.in_channels} channels and {data.num_classes} classes"
        )
    batch_size = args.batch_size or config.get("eval_batch_size", 256)
    result = profile(student, data, device, torch.arange(len(data)), batch_size, False, args.workers)
    result.firing_rates = {name.removeprefix("net."): rate for name, rate in result.firing_rates.items()}
    print(format_profile(f"{path} ({config.get('arch', 'SNN')}, T={student.T})", data, args.split, result))
    return result


def format_profile(student: str, data: Dataset, split: str, result: Profile) -> str:
    lines = [
        f"student:         {student}",
        f"data:            {data.name} {split}, {len(data)} samples",
        f"accuracy:        {100 * result.accuracy:.2f} %",
        f"firing rate:     {100 * result.mean_firing_rate:.2f} % (mean over {len(result.firing_rates)} LIF layers)",
        f"energy / sample: {result.energy_uj:.3f} uJ ({result.macs:.4g} MACs x {E_MAC_PJ} pJ + {result.sops:.4g} SOPs "
        f"x {E_AC_PJ} pJ)",
        "firing rate per LIF layer (spikes per neuron per time step):",
    ]
    width = max((len(name) for name in result.firing_rates), default=0)
    lines += [f"  {name:{width}}  {rate:.4f}" for name, rate in result.firing_rates.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
