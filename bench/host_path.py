"""Host time per call of the ops' Triton path: what a GPU waits for when a layer's kernel is shorter than it.

    python -m bench.host_path [--calls 2000]

On any machine, CUDA or not: the ops run their Triton path with the kernel launches recorded instead of issued
(`kernels.launch.recording_launches`), so the time is SpikeKD's Python and PyTorch's dispatch and autograd alone,
without Triton's own launcher or the kernel. Prints one line per case, in microseconds per call (the median of five
runs).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch

import kernels.lif
import kernels.rate
from kernels import lif_multistep, lif_rate, rate_ste
from kernels.launch import recording_launches


def _cases() -> dict:
    x = torch.zeros(8, 1024)
    leaf = x.clone().requires_grad_()
    grad = torch.ones_like(x)
    current = torch.zeros(1024, requires_grad=True)
    return {
        "lif_multistep fwd": lambda: lif_multistep(x, backend="triton"),
        "lif_multistep fwd+bwd": lambda: torch.autograd.grad(lif_multistep(leaf, backend="triton"), leaf, grad),
        "lif_rate": lambda: lif_rate(x, backend="triton"),
        "rate_ste fwd+bwd": lambda: torch.autograd.grad(rate_ste(current, x[0], x[0], backend="triton"), current, x[0]),
    }


def microseconds_per_call(fn, calls: int) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.host_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per run (default 2000)")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls must be >= 1, got {args.calls}")
    with contextlib.ExitStack() as stack:
        launches = stack.enter_context(recording_launches())
        for module in (kernels.lif, kernels.rate):
            stack.enter_context(mock.patch.object(module, "use_triton", lambda backend, x: True))
        for name, fn in _cases().items():
            fn()
            print(f"{name}: {microseconds_per_call(fn, args.calls):.1f} us per call")
            launches.clear()


if __name__ == "__main__":
    main()
