"""Shared test set-up: the Triton interpreter on CPU-only machines, a seed fixture, the `cuda` marker, and
torchvision where it is installed."""

import os
import sys
import types

import numpy as np
import pytest
import torch

# Must be set before triton is imported, so that `backend="triton"` runs the kernels on the CPU interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture
def seed() -> int:
    """Seeds torch's generators and returns the seed."""
    torch.manual_seed(0)
    return 0


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="session")
def torchvision():
    """torchvision (the `vision` extra), or the test is skipped where it is not installed.

    PyPI's torchvision for torch 2.13.0 is a CUDA build: on a CPU-only torch its C++ ops do not load and the import
    fails in `torchvision._meta_registrations`. Its models and transforms are pure Python, so the tests stand that
    one module in with an empty one before importing it (here only; the library never does this).
    """
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    return pytest.importorskip("torchvision")


@pytest.fixture
def write_image_folder():
    """Writes an ImageFolder tree: `write(root, {"train": {"cat": 3, ...}, "val": {...}}, size, suffix)` makes
    root/<split>/<class>/<i><suffix> RGB images of `size` x `size`, each class with its own mean colour, and
    returns root. Needs Pillow."""
    image_module = pytest.importorskip("PIL.Image")

    def write(root, splits: dict, size: int = 16, suffix: str = ".png", seed: int = 0):
        rng = np.random.default_rng(seed)
        for split, classes in splits.items():
            for index, (name, count) in enumerate(sorted(classes.items())):
                folder = root / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    pixels = rng.normal(60 + 120 * (index % 2), 40, (size, size, 3)).clip(0, 255).astype(np.uint8)
                    image_module.fromarray(pixels).save(folder / f"{i}{suffix}", format="PNG")
        return root

    return write
