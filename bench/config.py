"""Benchmark scales (sizes, timesteps, training set-up) and the name of the machine the numbers come from."""

from __future__ import annotations

import os
import platform
import re
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scale:
    """One size class of the whole suite. `compile_max_steps`: largest T timed for torch.compile (0 = none)."""

    neurons: tuple[int, ...]  # N, neurons per timestep in the kernel benchmarks
    dtypes: tuple[str, ...]  # storage dtypes of the kernel benchmarks
    steps: tuple[int, ...]  # T of the kernel benchmarks
    copy_elements: int  # fp32 elements of the copy-bandwidth benchmark
    compile_max_steps: int  # torch.compile's unrolled graphs take long to build at large T
    train_model: str  # models.create_model name
    train_batch: int
    train_image: int  # square input side
    train_steps: tuple[int, ...]  # T of the training benchmarks
    train_rounds: int  # timed steps per training case


SCALES: dict[str, Scale] = {
    # `bench/gpu.sh --dry-run`: the whole pipeline in seconds on a CPU.
    "tiny": Scale((1 << 10,), ("float32",), (1, 4), 1 << 20, 0, "tiny_resnet", 2, 8, (2,), 1),
    # A CPU run: cache-sized kernels, a 25k-parameter ResNet.
    "small": Scale(
        (1 << 16,), ("float32",), (1, 2, 4, 8, 16, 32), 1 << 24, 16, "tiny_resnet", 16, 32, (1, 2, 4, 8, 16), 3
    ),
    # A CPU run of the training steps on the CIFAR ResNet-18 of the GPU scale (memory targets at the real model).
    "resnet18-cpu": Scale(
        (1 << 16,), ("float32",), (1, 2, 4, 8, 16, 32), 1 << 24, 16, "resnet18", 16, 32, (1, 2, 4, 8, 16), 1
    ),
    # An H100/H200: real layer sizes (a CIFAR ResNet-18 layer at batch 64 holds 2^19 to 2^21 neurons) and
    # bandwidth-bound ones (2^24 neurons = 64 MiB a timestep in fp32), fp32 and bf16; CIFAR ResNet-18, batch 64.
    "large": Scale(
        (1 << 19, 1 << 20, 1 << 24),
        ("float32", "bfloat16"),
        (1, 2, 4, 8, 16, 32),
        1 << 28,
        8,
        "resnet18",
        64,
        32,
        (1, 2, 4, 8, 16),
        5,
    ),
}


def default_scale() -> str:
    return "large" if torch.cuda.is_available() else "small"


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """What ran the numbers: the GPU's name, or the CPU's model with its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def machine_slug(name: str) -> str:
    """A folder name for bench/results/: lower case, [a-z0-9-] only."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or socket.gethostname() or "machine"
