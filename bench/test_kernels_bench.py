"""Neuron ops by provider x mode x T, and the device's copy bandwidth (the roofline of these memory-bound kernels).

Each case records in extra_info the bytes it must move at least (`bench.providers.bytes_moved`), so that
`python -m bench.report` turns its time into GB/s and sets it against the measured copy bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from bench.providers import Unavailable, bytes_moved, make_call, spikingjelly_version, synchronized

OPS = {"fwd": "lif_multistep", "fwd+bwd": "lif_multistep", "rate": "lif_rate"}


def _input(n_steps: int, n_neurons: int, dtype: str, device: torch.device) -> torch.Tensor:
    # Currents around the threshold: about 40% of the neurons fire at each step.
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(n_steps, n_neurons, generator=g, device=device) * 1.5 + 0.5
    return x.to(getattr(torch, dtype))


def test_lif(benchmark, provider, mode, n_steps, n_neurons, dtype, compile_max_steps, device, machine_info):
    if provider == "compile" and n_steps > compile_max_steps:
        pytest.skip(f"torch.compile timed up to T={compile_max_steps} at this scale (its unrolled graph builds slowly)")
    x = _input(n_steps, n_neurons, dtype, device)
    try:
        call = make_call(provider, mode, x)
    except Unavailable as why:
        pytest.skip(str(why))
    run = synchronized(call, device)
    run()  # compile / JIT / autotune outside the timed rounds
    benchmark.group = f"{OPS[mode]} {mode} {dtype} N={n_neurons} T={n_steps}"
    benchmark.extra_info.update(
        machine_info,
        kind="kernel",
        op=OPS[mode],
        provider=provider,
        mode=mode,
        T=n_steps,
        neurons=n_neurons,
        dtype=dtype,
        bytes=bytes_moved(mode, n_steps, n_neurons, x.element_size()),
    )
    if provider.startswith("sj-"):
        benchmark.extra_info["spikingjelly"] = spikingjelly_version()
    benchmark(run)


def test_copy_bandwidth(benchmark, scale, device, machine_info):
    """dst.copy_(src) of a tensor far larger than the caches: reads and writes every byte once."""
    src = torch.rand(scale.copy_elements, device=device)
    dst = torch.empty_like(src)
    run = synchronized(lambda: dst.copy_(src), device)
    run()
    benchmark.group = "copy"
    size = src.numel() * src.element_size()
    benchmark.extra_info.update(machine_info, kind="copy", provider="torch copy_", elements=src.numel(), bytes=2 * size)
    benchmark(run)
