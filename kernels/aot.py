"""Compile every kernel specialisation the ops can launch, for real GPU targets, on any machine.

    python -m kernels.aot [--target sm_80,sm_90] [--jobs N]

The Triton interpreter (`TRITON_INTERPRET=1`, which the CPU tests use) accepts code that the compiler rejects, so a
green CPU test run says nothing about whether the kernels build for a GPU. This command runs the real compiler (the
triton wheel ships `ptxas`, no GPU needed): it calls every op's Triton launcher on small CPU tensors in every
storage dtype and every combination of neuron options, records the launches instead of running them (the exact
arguments and constexprs the launchers pass), adds every launch shape of `kernels.launch.LAUNCH_SHAPES`, and
compiles each distinct specialisation for each target. It exits with status 1 naming the kernel, its
specialisation and the compiler's message for each failure, and also fails when a `*_kernel` of the package is
launched by none of the calls, so a kernel added later is covered once an op launches it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import itertools
import os
import pkgutil
import sys
import time
from dataclasses import dataclass
from unittest import mock

import torch

STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_TYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


@dataclass(frozen=True)
class Specialisation:
    """One compilation: a kernel (by module and name), its argument types, constexprs and warps."""

    module: str
    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int

    def describe(self) -> str:
        dtypes = sorted({t for _, t in self.signature if t.startswith("*")})
        flags = ", ".join(f"{k}={v}" for k, v in self.constexprs)
        return f"{self.kernel}[{flags}, num_warps={self.num_warps}, pointers {'/'.join(dtypes)}]"


def parse_targets(text: str) -> list[int]:
    """'sm_80,sm_90' -> [80, 90]."""
    archs = []
    for item in text.split(","):
        name = item.strip()
        if not name.startswith("sm_") or not name[3:].isdigit():
            raise ValueError(f"--target takes comma-separated CUDA targets such as sm_80,sm_90, got {item!r}")
        archs.append(int(name[3:]))
    return archs


def kernel_modules() -> list:
    """Every module of the `kernels` package that defines a Triton kernel (loaded without the interpreter)."""
    import kernels

    modules = [importlib.import_module(f"kernels.{info.name}") for info in pkgutil.iter_modules(kernels.__path__)]
    return [m for m in modules if _kernels_of(m)]


def _kernels_of(module) -> dict:
    import triton

    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, triton.JITFunction) and name.endswith("_kernel") and obj.__module__ == module.__name__
    }


def _neuron_option_grid():
    from kernels.options import SURROGATES, LIFOptions

    for v_reset, decay_input, detach_reset, surrogate in itertools.product(
        (None, 0.0), (False, True), (True, False), SURROGATES
    ):
        yield LIFOptions(v_reset=v_reset, decay_input=decay_input, detach_reset=detach_reset, surrogate=surrogate)


def _call_every_op(dtype: torch.dtype) -> None:
    """Each op's Triton path once per option combination, on tiny CPU tensors (the launches are only recorded),
    with T = 3 and T = 1 (Triton turns an int argument equal to 1 into a constant: another specialisation)."""
    for n_steps in (3, 1):
        _call_every_op_at(dtype, n_steps)


def _call_every_op_at(dtype: torch.dtype, n_steps: int) -> None:
    from kernels import poisson_encode, rate_reduce

    ops = torch.ops.spikekd
    x = torch.zeros(n_steps, 2, 5, dtype=dtype)
    expanded = torch.zeros(1, 2, 5, dtype=dtype).expand(n_steps, 2, 5)
    for options in _neuron_option_grid():
        args = options.op_args()
        for store_h in (True, False):
            ops.lif_multistep(x, *args, store_h, "triton")
        _, h_seq = ops.lif_multistep(x, *args, True, "triton")
        for sum_over_t in (False, True):
            ops.lif_multistep_backward(x, h_seq, *args, sum_over_t, "triton")
        ops.lif_rate(x, *args, "triton")
        ops.lif_rate_(x.clone(), *args, "triton")
        ops.lif_rate(expanded, *args, "triton")
    rate_reduce(x, backend="triton")
    elig = torch.zeros(2, 5)
    ops.rate_ste(x[0], elig, elig, "triton")
    ops.rate_ste_backward(x[0], elig, dtype, "triton")
    poisson_encode(x[0], 2, 0, backend="triton")


@contextlib.contextmanager
def _triton_path_everywhere(modules):
    """The ops take their Triton path on CPU tensors (nothing runs: launches are recorded)."""
    with contextlib.ExitStack() as stack:
        for module in modules:
            if hasattr(module, "use_triton"):
                stack.enter_context(mock.patch.object(module, "use_triton", lambda backend, x: True))
        yield


def _type_of(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TYPE_NAMES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a kernel argument of type {type(value).__name__}: {value!r}")


def _specialisation(kernel, args, constexprs, num_warps) -> Specialisation:
    runtime = [p.name for p in kernel.params if not p.is_constexpr]
    if len(runtime) != len(args):
        raise TypeError(f"{kernel.__name__} takes {len(runtime)} runtime arguments, the launcher passed {len(args)}")
    # As Triton's launcher does: an int equal to 1 is compiled as the constant 1.
    ones = {name: 1 for name, value in zip(runtime, args, strict=False) if type(value) is int and value == 1}
    constants = dict(constexprs, **ones)
    signature = [(name, _type_of(value)) for name, value in zip(runtime, args, strict=False) if name not in ones]
    signature += [(name, "constexpr") for name in constants]
    return Specialisation(
        kernel.__module__, kernel.__name__, tuple(signature), tuple(sorted(constants.items())), num_warps
    )


def collect_specialisations() -> list[Specialisation]:
    """Every distinct (kernel, types, constexprs, warps) the ops launch, with every launch shape of the table."""
    from kernels.launch import LAUNCH_SHAPES, recording_launches

    modules = kernel_modules()
    with recording_launches() as launches, _triton_path_everywhere(modules):
        for dtype in STORAGE_DTYPES:
            _call_every_op(dtype)
    found: dict[Specialisation, None] = {}
    first_of_kernel: dict[str, tuple] = {}
    for kernel, args, constexprs, num_warps in launches:
        found[_specialisation(kernel, args, constexprs, num_warps)] = None
        first_of_kernel.setdefault(kernel.__name__, (kernel, args, constexprs))
    for kernel, args, constexprs in first_of_kernel.values():  # each launch shape, on one specialisation
        for _, block, num_warps in LAUNCH_SHAPES:
            found[_specialisation(kernel, args, dict(constexprs, BLOCK=block), num_warps)] = None
    missing = sorted(name for m in modules for name in _kernels_of(m) if name not in first_of_kernel)
    if missing:
        raise RuntimeError(f"no op launches {', '.join(missing)}: add its op to kernels/aot.py's _call_every_op")
    return list(found)


def compile_one(spec: Specialisation, arch: int) -> str | None:
    """Compiles one specialisation for sm_<arch>; None on success, else the compiler's message."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(spec.module), spec.kernel)
    source = ASTSource(kernel, dict(spec.signature), constexprs=dict(spec.constexprs))
    options = {"num_warps": spec.num_warps, "enable_fp_fusion": False}
    try:
        triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as error:  # the compiler's errors have no common base class
        return f"{type(error).__name__}: {error}".strip()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="sm_80,sm_90", help="CUDA targets, comma-separated (default sm_80,sm_90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (default: CPUs)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: the interpreter replaces the compiler; run without it")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        archs = parse_targets(args.target)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    specs = collect_specialisations()
    jobs = [(spec, arch) for arch in archs for spec in specs]
    failures = []
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        messages = pool.map(compile_one, [spec for spec, _ in jobs], [arch for _, arch in jobs], chunksize=4)
        for (spec, arch), message in zip(jobs, messages, strict=True):
            if message is not None:
                failures.append(f"sm_{arch} {spec.describe()}:\n    " + message.replace("\n", "\n    "))
    for failure in failures:
        print(failure, file=sys.stderr)
    elapsed = time.perf_counter() - start
    targets = ", ".join(f"sm_{a}" for a in archs)
    print(f"kernels.aot: {len(jobs) - len(failures)}/{len(jobs)} compiled for {targets} in {elapsed:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
