"""The one place that decides which implementation runs an op.

`auto`: the Triton kernel on CUDA tensors, the pure-PyTorch reference elsewhere. `triton`: the kernel, on CUDA or,
with TRITON_INTERPRET=1, on the CPU (numpy, slow: for tests); anywhere else it raises. `reference`: always the twin.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "reference")


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    from kernels.triton_support import MISSING

    return MISSING is None


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


def use_triton(backend: str, x: torch.Tensor) -> bool:
    """True when `backend` resolves to the Triton kernel for a tensor on `x.device`."""
    check_backend(backend)
    if backend == "reference":
        return False
    runnable = triton_available() and (x.is_cuda or (x.device.type == "cpu" and interpreter_enabled()))
    if backend == "triton":
        if not triton_available():
            from kernels.triton_support import MISSING

            raise RuntimeError(f"backend='triton' cannot run: {MISSING}; use backend='auto' or 'reference'")
        if not runnable:
            raise RuntimeError(
                f"backend='triton' cannot run on a {x.device.type} tensor here: it needs triton installed and a "
                "CUDA tensor, or TRITON_INTERPRET=1 for the CPU interpreter; use backend='auto' or 'reference'"
            )
        return True
    return x.is_cuda and runnable
