"""Triton where it is installed (it has wheels for Linux), and stand-ins that let the kernel modules load without it.

`from kernels.triton_support import triton, tl` in a kernel module: with Triton installed these are `triton` and
`triton.language`; without it, `triton.jit` leaves a function as it is and `tl.constexpr` is a plain holder, so the
kernels are defined (never run) and every op takes its PyTorch twin (`kernels.backend`).
"""

from __future__ import annotations

import types

try:
    import triton
    import triton.language as tl

    MISSING: str | None = None
except ImportError as error:  # no wheel for this platform, or not installed
    MISSING = f"the triton package cannot be imported here ({error}); it has wheels for Linux only"

    class _Constexpr:
        """Stands in for tl.constexpr: holds a value, and serves as an annotation."""

        def __init__(self, value=None):
            self.value = value

    triton = types.SimpleNamespace(jit=lambda fn=None, **_: fn if fn is not None else (lambda f: f))
    tl = types.SimpleNamespace(constexpr=_Constexpr)
