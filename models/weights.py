"""Weights for SpikeKD's nets from a model, a state_dict or a file, in SpikeKD's own layout or in torchvision's.

    net = create_model("resnet34", num_classes=10, stem="imagenet", weights="resnet34.pth")

`weights` is an `nn.Module`, a state_dict (a mapping of names to tensors) or the path of a file that holds one
(`torch.save(model.state_dict(), path)`, a SpikeKD checkpoint such as `teacher.pt`, or a dict with the state_dict
under "model" or "state_dict"). Files are read with `torch.load(weights_only=True)`: tensors and plain containers
only, no code runs.

The one mapping from torchvision's ResNet-18/34 (timm's ResNets use the same names) to SpikeKD's twins with the
ImageNet stem:

    conv1, bn1                               -> stem.conv, stem.bn
    layer{k}.{i}.conv1 | bn1 | conv2 | bn2   -> stages.{k-1}.{i}.conv1 | bn1 | conv2 | bn2
    layer{k}.{i}.downsample.0 | .1           -> stages.{k-1}.{i}.shortcut.conv | shortcut.bn
    fc                                       -> head.fc

The blocks compute the same function (conv-BN-ReLU-conv-BN, add the shortcut, ReLU), so an ANN twin with these
weights gives torchvision's logits. torchvision's VGG-BN cannot map: its convs have biases, its pools are max pools
and its classifier is three linear layers over a 7x7 map, where SpikeKD's VGG twin has bias-free convs, average
pools and a global-pool linear head; such weights are refused with that reason.

When the head's class count differs from the net's (ImageNet's 1000 classes for a 10-class data set), every weight
but the head's is loaded and the head keeps its fresh initialisation: `LoadedWeights.head_replaced` says so.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

HEAD_KEYS = ("head.fc.weight", "head.fc.bias")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


@dataclass(frozen=True)
class LoadedWeights:
    """What `load_weights` did: the layout it read, and whether the head was left new (class counts differed)."""

    layout: str
    head_replaced: bool
    source_classes: int | None  # the head's class count in the weights given (None where they hold no head)


def read_state_dict(weights: nn.Module | Mapping | str | Path) -> dict[str, Tensor]:
    """The state_dict held by a model, a mapping or a file, without the prefixes of DDP or torch.compile wrappers."""
    if isinstance(weights, nn.Module):
        state = weights.state_dict()
    elif isinstance(weights, (str, Path)):
        state = read_weights_file(Path(weights))
    elif isinstance(weights, Mapping):
        state = weights
    else:
        raise TypeError(
            f"weights must be an nn.Module, a state_dict (a mapping of names to tensors) or a file path, got "
            f"{type(weights).__name__}"
        )
    state = _unwrap(state)
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(f"weights: not a state_dict; these entries are not tensors: {not_tensors[:5]}")
    return {_strip_wrappers(k): v for k, v in state.items()}


def read_weights_file(path: str | Path) -> Mapping:
    """What a weights file holds, read with torch.load(weights_only=True) onto the CPU; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights: no file {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        unsafe = isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower()
        why = ": loading the rest would run code from the file, which SpikeKD does not do" if unsafe else ""
        raise ValueError(
            f"weights: {path} cannot be read as tensors with torch.load(weights_only=True) ({_gist(error)}){why}; "
            "save the model's state_dict instead: torch.save(model.state_dict(), path)"
        ) from error


def _gist(error: BaseException) -> str:
    """The line of torch.load's long message that says what was refused, else its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refused = [line for line in lines if line.startswith("WeightsUnpickler error")]
    return (refused or lines or [type(error).__name__])[0]


def _unwrap(state) -> Mapping:
    """The state_dict inside a checkpoint dict ("model" or "state_dict"), or `state` itself."""
    if not isinstance(state, Mapping):
        raise ValueError(f"weights: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), Mapping):
            return state[key]
    return state


def _strip_wrappers(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def detect_layout(state: Mapping[str, Tensor]) -> str:
    """The layout of `state`'s names, "spikekd" or "torchvision-resnet"; raises for torchvision's VGG and for names
    of no known layout."""
    names = set(state)
    if any(n.startswith(("stem.", "stages.", "head.")) for n in names):
        return "spikekd"
    if "conv1.weight" in names and any(n.startswith("layer1.") for n in names):
        return "torchvision-resnet"
    if any(n.startswith("features.") for n in names) and any(n.startswith("classifier.") for n in names):
        raise ValueError(
            "weights: torchvision VGG weights cannot load into SpikeKD's VGG twins: torchvision's convs have biases, "
            "its pools are max pools and its classifier is three linear layers over a 7x7 map, while the twins have "
            "bias-free convs, average pools and a global-pool linear head. ResNet-18/34 weights load (stem='imagenet')"
        )
    raise ValueError(
        f"weights: names of no known layout (e.g. {sorted(names)[:4]}); accepted: SpikeKD's own (stem., stages., "
        "head.) and torchvision's / timm's ResNet (conv1, bn1, layer1..layer4, fc)"
    )


def torchvision_resnet_to_spikekd(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames a torchvision (or timm) ResNet state_dict to SpikeKD's ResNet layout (the table in the module doc)."""
    renamed = {}
    for name, value in state.items():
        new = _rename_torchvision_resnet(name)
        if new is None:
            raise ValueError(f"weights: {name!r} has no place in SpikeKD's ResNet (torchvision layout assumed)")
        renamed[new] = value
    return renamed


def _rename_torchvision_resnet(name: str) -> str | None:
    match = re.match(r"^layer(\d+)\.(\d+)\.(.*)$", name)
    if match:
        stage, block, rest = int(match[1]) - 1, match[2], match[3]
        rest = rest.replace("downsample.0.", "shortcut.conv.", 1).replace("downsample.1.", "shortcut.bn.", 1)
        return f"stages.{stage}.{block}.{rest}"
    for prefix, replacement in (("conv1.", "stem.conv."), ("bn1.", "stem.bn."), ("fc.", "head.fc.")):
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return None


def load_weights(net: nn.Module, weights: nn.Module | Mapping | str | Path) -> LoadedWeights:
    """Loads `weights` into `net` (a SpikeKD ANN or SNN twin) in place; see the module doc for what is accepted.

    Every parameter and buffer must be given with its shape, except the head's where the class counts differ (then
    the head is left as it was). Raises ValueError naming the missing, unexpected or misshapen entries.
    """
    state = read_state_dict(weights)
    layout = detect_layout(state)
    if layout == "torchvision-resnet":
        state = torchvision_resnet_to_spikekd(state)
    own = net.state_dict()
    source_classes = state["head.fc.weight"].shape[0] if "head.fc.weight" in state else None
    own_classes = own["head.fc.weight"].shape[0] if "head.fc.weight" in own else None
    head_replaced = None not in (source_classes, own_classes) and source_classes != own_classes
    if head_replaced:
        state = {k: v for k, v in state.items() if k not in HEAD_KEYS}
    _check_names_and_shapes(state, own, layout, skip=HEAD_KEYS if head_replaced else ())
    net.load_state_dict(state, strict=not head_replaced)
    return LoadedWeights(layout, head_replaced, source_classes)


def _some(names: list[str], shown: int = 4) -> str:
    return "[" + ", ".join(names[:shown]) + (", ...]" if len(names) > shown else "]")


def _check_names_and_shapes(state: Mapping[str, Tensor], own: Mapping[str, Tensor], layout: str, skip) -> None:
    missing = sorted(k for k in own if k not in state and k not in skip)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise ValueError(
            f"weights ({layout} layout) do not fit this architecture: {len(missing)} of its entries missing "
            f"{_some(missing)}, {len(unexpected)} unexpected {_some(unexpected)}"
        )
    misshapen = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state if state[k].shape != own[k].shape]
    if misshapen:
        name, given, expected = misshapen[0]
        hint = ""
        if name == "stem.conv.weight" and given[-1] != expected[-1]:
            stem = "imagenet" if given[-1] == 7 else "cifar"
            hint = f"; the weights have a {given[-1]}x{given[-1]} stem conv: build the net with stem={stem!r}"
        raise ValueError(
            f"weights: {name} has shape {given}, the net's is {expected} ({len(misshapen)} entries differ){hint}"
        )
