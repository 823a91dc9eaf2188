"""The launch-shape sweep that `kernels.launch.LAUNCH_SHAPES` is chosen from (CUDA only).

    python -m bench.launch_sweep --out DIR [--steps 8]

Times `lif_multistep` forward, forward+backward and `lif_rate` with every candidate (BLOCK, num_warps), fp32 and
bf16, at layer sizes from 2^16 to 2^24 neurons and T = --steps, and the device's copy bandwidth. Writes
DIR/launch_sweep.json (one record per case) and DIR/launch_sweep.md: per op, dtype and N, the fastest shape and the
shape the table picks now, in GB/s of the op's least traffic (`bench.providers.bytes_moved`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

import torch

import kernels.launch
from bench.providers import bytes_moved
from kernels import lif_multistep, lif_rate

CANDIDATES = ((128, 1), (256, 2), (512, 2), (512, 4), (1024, 4), (1024, 8), (2048, 8))
SIZES = (1 << 16, 1 << 18, 1 << 19, 1 << 20, 1 << 22, 1 << 24)
DTYPES = ("float32", "bfloat16")
MODES = ("fwd", "fwd+bwd", "rate")


def _call(mode: str, x: torch.Tensor):
    if mode == "fwd":
        return lambda: lif_multistep(x, backend="triton")
    if mode == "rate":
        return lambda: lif_rate(x, backend="triton")
    leaf = x.detach().requires_grad_()
    grad = torch.rand_like(x)
    return lambda: torch.autograd.grad(lif_multistep(leaf, backend="triton"), leaf, grad)


def _milliseconds(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=5, rep=25))


def copy_gbps() -> float:
    src = torch.rand(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = _milliseconds(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


def sweep(steps: int) -> list[dict]:
    records = []
    for dtype in DTYPES:
        for n in SIZES:
            x = (torch.randn(steps, n, device="cuda") * 1.5 + 0.5).to(getattr(torch, dtype))
            for mode in MODES:
                for block, num_warps in CANDIDATES:
                    with mock.patch.object(kernels.launch, "LAUNCH_SHAPES", ((1 << 62, block, num_warps),)):
                        ms = _milliseconds(_call(mode, x))
                    gbps = bytes_moved(mode, steps, n, x.element_size()) / ms / 1e6
                    records.append(dict(mode=mode, dtype=dtype, N=n, T=steps, BLOCK=block, num_warps=num_warps,
                                        ms=ms, gbps=gbps))  # fmt: skip
            del x
    return records


def summary(records: list[dict], copy: float) -> list[str]:
    lines = [
        f"Launch-shape sweep on {torch.cuda.get_device_name()}, T = {records[0]['T']}, copy bandwidth {copy:.0f} GB/s.",
        "",
        "| op | dtype | N | fastest (BLOCK, warps) | GB/s | % of copy | table's pick | GB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        for dtype in DTYPES:
            for n in SIZES:
                cases = [r for r in records if (r["mode"], r["dtype"], r["N"]) == (mode, dtype, n)]
                best = max(cases, key=lambda r: r["gbps"])
                pick = kernels.launch.launch_shape(n)
                now = next(r for r in cases if (r["BLOCK"], r["num_warps"]) == pick)
                lines.append(
                    f"| {mode} | {dtype} | 2^{n.bit_length() - 1} | ({best['BLOCK']}, {best['num_warps']}) | "
                    f"{best['gbps']:.0f} | {100 * best['gbps'] / copy:.0f}% | {pick} | {now['gbps']:.0f} |"
                )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.launch_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for launch_sweep.json and launch_sweep.md")
    parser.add_argument("--steps", type=int, default=8, help="T of every case (default 8)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the launch-shape sweep times the Triton kernels and needs a CUDA device")
    start = time.perf_counter()
    copy = copy_gbps()
    records = sweep(args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    info = dict(device=torch.cuda.get_device_name(), copy_gbps=copy, seconds=time.perf_counter() - start)
    (args.out / "launch_sweep.json").write_text(json.dumps(dict(info, records=records), indent=1))
    lines = summary(records, copy)
    (args.out / "launch_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
