"""Whole training steps, SpikeKD `bptt` vs `rate` vs `blockwise` and SpikingJelly's BPTT (`sj-bptt`), across T: time
per step and peak memory (absolute, and above the memory held before the step).

Targets, judged by `python -m bench.report`: rate-mode memory flat in T (T=16 within 1.3x of T=1), and at T=16
SpikingJelly's BPTT at least 4x the memory and 2x the time of SpikeKD's rate mode.
"""

from __future__ import annotations

import pytest
import torch

from bench.providers import spikingjelly_version, synchronized
from bench.training import TRAIN_MODES, TrainCase, build_step, cpu_peak_memory, cuda_peak_memory, models_import_error


@pytest.mark.parametrize("train_mode", TRAIN_MODES)
def test_train_step(benchmark, train_mode, train_steps, scale, device, machine_info):
    missing = models_import_error()
    if missing:
        pytest.skip(f"training benchmarks need models.create_model and models.HybridNet: {missing}")
    if train_mode == "sj-bptt" and spikingjelly_version() is None:
        pytest.skip("spikingjelly is not installed (pip install --no-deps spikingjelly==2.0.0 loguru)")
    case = TrainCase(scale.train_model, train_mode, train_steps, scale.train_batch, scale.train_image)
    benchmark.group = f"train {case.model} T={case.T}"
    benchmark.extra_info.update(
        machine_info, kind="train", model=case.model, mode=case.mode, T=case.T, batch=case.batch, image=case.image
    )
    if device.type == "cpu":
        # Measured first, in a fresh process: this one's peak already holds every earlier case.
        benchmark.extra_info.update(cpu_peak_memory(case), memory="peak RSS of a fresh process")
    step = synchronized(build_step(case, device), device)
    out_of_memory = None
    try:
        step()  # warm-up: gradients, optimizer state, kernel compilation
        if device.type == "cuda":
            benchmark.extra_info.update(cuda_peak_memory(step, device), memory="torch.cuda.max_memory_allocated")
    except torch.cuda.OutOfMemoryError as error:
        out_of_memory = str(error).splitlines()[0]
    if out_of_memory is not None:
        del step  # the model and its activations, before the next case allocates
        pytest.skip(f"out of GPU memory at batch {case.batch}, T={case.T}: {out_of_memory}")
    benchmark.pedantic(step, rounds=scale.train_rounds, iterations=1)
