"""A trained student as a user takes it: `load_student(path)` and `export(model, example)`.

    student = load_student("runs/digits-blockwise-rate")       # the run folder, or a student.pt file
    logits = student(images)                                   # images [B, C, H, W] in [0, 1]; eval mode
    program = export(student, images)                          # torch.export.ExportedProgram, same logits

A student file (`student.pt`, `student_best.pt` of a run folder) holds the SNN's weights ("model"), the arguments
of `create_model` that rebuild it ("model_args": name, num_classes, in_channels, T, stem, neuron options) and the
normalisation its inputs had in training ("input": per-channel mean and std). It is read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from models.network import Network
from models.neuron import LIF
from models.registry import create_model
from models.weights import read_weights_file

STUDENT_FILES = ("student.pt",)  # a run folder's student: the last epoch's (pass student_best.pt's path for the best)


class Student(nn.Module):
    """An SNN with the input normalisation it was trained with: x in [0, 1] -> (x - mean) / std -> the net's logits.

    x is [B, C, H, W] (an image, direct encoding) or [T, B, C, H, W] (a sequence of frames); mean and std are per
    channel. `net` is the `Network`; `T` its timesteps and `neuron_options` its LIF options.
    """

    kind = "snn"

    def __init__(self, net: Network, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if getattr(net, "kind", None) != "snn":
            raise ValueError(f"Student needs an SNN (kind='snn'), got kind={getattr(net, 'kind', None)!r}")
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1))

    @property
    def T(self) -> int:
        return self.net.T

    @property
    def neuron_options(self) -> dict:
        """The options of the net's LIF neurons (all layers share them)."""
        lif = next(m for m in self.net.modules() if isinstance(m, LIF))
        return asdict(lif.options)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: Tensor, mode: str | None = None) -> Tensor:
        """x [B, C, H, W] or [T, B, C, H, W] in [0, 1] -> logits [B, classes]; mode as `Network.forward`."""
        return self.net(self.normalize(x), mode=mode)

    def extra_repr(self) -> str:
        return f"T={self.T}, mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def student_file(path: str | Path) -> Path:
    """`path` itself if it is a file, else the run folder's student file."""
    path = Path(path)
    if path.is_dir():
        for name in STUDENT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"load_student: run folder {path} has no {' or '.join(STUDENT_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"load_student: no run folder or file {path}")
    return path


def load_student(path: str | Path, device: torch.device | str = "cpu") -> Student:
    """The trained SNN of a run folder or a student file, in eval mode, with its T, neuron options and input
    normalisation (see the module doc)."""
    path = student_file(path)
    stored = read_weights_file(path)
    absent = [key for key in ("model", "model_args", "input") if key not in stored]
    if absent:
        raise ValueError(
            f"load_student: {path} lacks {absent}; a student file holds model, model_args and input (the student.pt "
            "of a run folder)"
        )
    net = create_model(**stored["model_args"], weights=stored["model"])
    student = Student(net, stored["input"]["mean"], stored["input"]["std"])
    return student.to(device).eval()


def export(model: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """A `torch.export` program of `model` in eval mode (a `Student`, or a `Network` of either kind), traced on
    `example`'s shape: `program.module()(x)` gives the module's logits. The model is left in eval mode."""
    if not isinstance(example, Tensor):
        raise TypeError(f"example must be a torch.Tensor input of the model, got {type(example).__name__}")
    model.eval()
    return torch.export.export(model, (example,))
