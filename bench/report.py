"""Markdown tables and PNG plots from saved pytest-benchmark runs.

    pytest bench --benchmark-only --benchmark-json=run.json
    python -m bench.report run.json [more.json | a folder of them ...] [--machine NAME] [--out DIR]

Writes DIR/report.md (default DIR: bench/results/<machine>/, machine from the recorded GPU or CPU name) and, when
matplotlib is installed, DIR/training_time.png, DIR/training_memory.png and DIR/kernels_gbps.png. Kernel
throughput is the least traffic of the op (`bench.providers.bytes_moved`) over its time (the median over rounds, or
`--stat min` on a machine shared with other jobs, where the median measures the neighbours), set against the
copy bandwidth measured in the same run; each target is judged met or missed, and a miss says by how much.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import machine_slug

RESULTS = Path(__file__).resolve().parent / "results"
KERNEL_MODES = ("fwd", "fwd+bwd", "rate")
TRAIN_MODES = ("bptt", "rate", "blockwise", "sj-bptt")
PROVIDER_ORDER = ("triton", "reference", "compile", "sj-torch", "sj-triton", "sj-cuda", "sj-auto")
SJ_PROVIDERS = ("sj-torch", "sj-triton", "sj-cuda", "sj-auto")
STATS = ("median", "min", "mean")
INFO_KEYS = ("device", "device_name", "scale", "torch", "threads", "cuda")
TARGET_T = 16  # the training targets compare T=16 with T=1


@dataclass
class Run:
    """The cases of one machine, merged from every input file (a later file's case replaces an earlier one's)."""

    info: dict = field(default_factory=dict)
    kernels: dict = field(default_factory=dict)  # (mode, provider, T) -> case
    copies: list = field(default_factory=list)
    train: dict = field(default_factory=dict)  # (mode, T) -> case
    sources: list = field(default_factory=list)
    run_at: dict = field(default_factory=dict)  # source file name -> when pytest-benchmark wrote it
    stat: str = "median"  # the pytest-benchmark statistic taken as a case's time


def load(paths: list[Path], stat: str = "median") -> Run:
    if stat not in STATS:
        raise ValueError(f"stat must be one of {list(STATS)}, got {stat!r}")
    run = Run(stat=stat)
    files = [f for p in paths for f in (sorted(p.rglob("*.json")) if p.is_dir() else [p])]
    if not files:
        raise SystemExit(f"no pytest-benchmark JSON found in {[str(p) for p in paths]}")
    for path in files:
        data = json.loads(path.read_text())
        if "benchmarks" not in data:
            continue  # another JSON file in the folder
        run.sources.append(str(path))
        run.run_at[path.name] = data.get("datetime")
        for bench in data["benchmarks"]:
            extra = bench.get("extra_info", {})
            case = {**extra, "time": bench["stats"][stat], "rounds": bench["stats"]["rounds"]}
            kind = extra.get("kind")
            if kind == "kernel":
                key = (extra["mode"], extra["provider"], extra["T"], extra["neurons"], extra.get("dtype", "float32"))
                run.kernels[key] = case
            elif kind == "copy":
                run.copies.append(case)
            elif kind == "train":
                run.train[extra["mode"], extra["T"]] = case
            else:
                continue
            run.info = run.info or {k: extra[k] for k in INFO_KEYS if k in extra}
    if not run.sources:
        raise SystemExit(f"none of {[str(f) for f in files]} is a pytest-benchmark JSON (no 'benchmarks' key)")
    return run


def gbps(case: dict) -> float:
    return case["bytes"] / case["time"] / 1e9


def copy_gbps(run: Run) -> float | None:
    return max((gbps(c) for c in run.copies), default=None)


def on_gpu(run: Run) -> bool:
    return run.info.get("device") == "cuda"


def train_memory(case: dict) -> float:
    """Bytes the targets compare: on CUDA the peak allocated over the step (`torch.cuda.max_memory_allocated`); on
    the CPU the peak RSS above the pre-step RSS (the process's ~0.4 GB of libraries would otherwise hide the
    activations)."""
    if case.get("device") == "cuda":
        return case["peak_bytes"]
    return case["peak_bytes"] - case["baseline_bytes"]


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _pow2(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else f"{n:,}"


def _providers(run: Run) -> list[str]:
    present = {k[1] for k in run.kernels}
    return [p for p in PROVIDER_ORDER if p in present] + sorted(present - set(PROVIDER_ORDER))


def _shapes(run: Run) -> list[tuple[int, str]]:
    """(N, dtype) of the kernel cases, fp32 first."""
    return sorted({(k[3], k[4]) for k in run.kernels}, key=lambda s: (s[1] != "float32", s[1], s[0]))


def kernel_tables(run: Run) -> list[str]:
    providers, roof = _providers(run), copy_gbps(run)
    lines = []
    for mode in KERNEL_MODES:
        cases = {k: c for k, c in run.kernels.items() if k[0] == mode}
        if not cases:
            continue
        op = next(iter(cases.values()))["op"]
        lines += [f"### `{op}` {mode}: {run.stat} time, GB/s (% of copy bandwidth)", ""]
        lines += ["| N | dtype | T | " + " | ".join(providers) + " |", "|---|---|---|" + "---|" * len(providers)]
        for n, dtype in _shapes(run):
            for t in sorted({k[2] for k in cases if (k[3], k[4]) == (n, dtype)}):
                cells = []
                for p in providers:
                    case = cases.get((mode, p, t, n, dtype))
                    if case is None:
                        cells.append("-")
                        continue
                    share = f" ({100 * gbps(case) / roof:.0f}%)" if roof else ""
                    cells.append(f"{_fmt_time(case['time'])}, {gbps(case):.0f} GB/s{share}")
                lines.append(f"| {_pow2(n)} | {dtype} | {t} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def train_table(run: Run) -> list[str]:
    if not run.train:
        return []
    steps = sorted({t for _, t in run.train})
    modes = [m for m in TRAIN_MODES if any((m, t) in run.train for t in steps)]
    first = next(iter(run.train.values()))
    if first.get("device") == "cuda":
        memory = "peak allocated over the step (MiB), and above what was allocated before it [in brackets]"
    else:
        memory = "peak RSS above the pre-step RSS (MiB), and the absolute peak RSS [in brackets]"
    lines = [
        f"### Training step: {first['model']}, batch {first['batch']}, {first['image']}x{first['image']} input",
        "",
        f"Time per step ({run.stat} over rounds) and memory: {memory}.",
        "",
        "| T | " + " | ".join(f"{m} time | {m} memory" for m in modes) + " |",
        "|---|" + "---|---|" * len(modes),
    ]
    for t in steps:
        cells = []
        for m in modes:
            case = run.train.get((m, t))
            if case is None:
                cells += ["-", "-"]
                continue
            other = case["peak_bytes"] - case["baseline_bytes"] if case.get("device") == "cuda" else case["peak_bytes"]
            cells += [_fmt_time(case["time"]), f"{_mib(train_memory(case))} [{_mib(other)}]"]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines + [""]


def _verdict(value: float, target: float, at_least: bool) -> str:
    ok = value >= target if at_least else value <= target
    if ok:
        return "met"
    short = target / value if at_least else value / target
    return f"**missed**, {'short' if at_least else 'over'} by {short:.2f}x"


def training_targets(run: Run) -> list[str]:
    """Rate-mode memory flat in T; SpikingJelly's BPTT against SpikeKD's rate mode at T=16."""
    out = []
    rate1, rate16 = run.train.get(("rate", 1)), run.train.get(("rate", TARGET_T))
    sj16 = run.train.get(("sj-bptt", TARGET_T))
    bptt16 = run.train.get(("bptt", TARGET_T))
    if rate1 and rate16:
        ratio = train_memory(rate16) / train_memory(rate1)
        out.append(
            f"- `rate` memory, T={TARGET_T} vs T=1: {ratio:.2f}x ({_mib(train_memory(rate1))} -> "
            f"{_mib(train_memory(rate16))} MiB; target <= 1.3x): {_verdict(ratio, 1.3, False)}"
        )
    else:
        out.append(f"- `rate` memory T={TARGET_T} vs T=1: not measured (no rate cases at T=1 and T={TARGET_T})")
    for name, other in (("SpikingJelly BPTT (`sj-bptt`)", sj16), ("SpikeKD `bptt`", bptt16)):
        if other is None or rate16 is None:
            out.append(f"- {name} vs `rate` at T={TARGET_T}: not measured")
            continue
        memory = train_memory(other) / train_memory(rate16)
        time = other["time"] / rate16["time"]
        out.append(
            f"- {name} vs `rate` at T={TARGET_T}: memory {memory:.2f}x (target >= 4x): {_verdict(memory, 4, True)}; "
            f"time {time:.2f}x ({_fmt_time(other['time'])} vs {_fmt_time(rate16['time'])}; target >= 2x): "
            f"{_verdict(time, 2, True)}"
        )
    return out


# Bandwidth targets: N -> least share of the copy bandwidth, for fwd, fwd+bwd and rate in fp32 and bf16.
BANDWIDTH_TARGETS = {1 << 24: 0.85, 1 << 20: 0.70}
# Against SpikingJelly's fastest backend at the largest N: (mode, dtype) -> least speed-up.
PEER_TARGETS = {
    ("fwd", "float32"): 1.3,
    ("fwd", "bfloat16"): 1.3,
    ("fwd+bwd", "bfloat16"): 1.2,
    ("fwd+bwd", "float32"): 1.0,
}


def kernel_targets(run: Run) -> list[str]:
    triton = {k: c for k, c in run.kernels.items() if k[1] == "triton"}
    roof = copy_gbps(run)
    if not triton or not roof:
        return [
            "- kernels against the copy bandwidth and SpikingJelly: not measured here (the `triton` provider needs a "
            "CUDA device; `bench/gpu.sh` on an H100/H200 measures them)"
        ]
    out = []
    for n, least in BANDWIDTH_TARGETS.items():
        for mode in KERNEL_MODES:
            for dtype in ("float32", "bfloat16"):
                steps = sorted(k[2] for k in triton if (k[0], k[3], k[4]) == (mode, n, dtype))
                if not steps:
                    continue
                case = triton[mode, "triton", steps[-1], n, dtype]
                share = gbps(case) / roof
                at16 = triton.get((mode, "triton", TARGET_T, n, dtype))
                also = f", {100 * gbps(at16) / roof:.0f}% at T={TARGET_T}" if at16 and steps[-1] != TARGET_T else ""
                out.append(
                    f"- `{case['op']}` {mode}, {dtype}, N={_pow2(n)}, T={steps[-1]}: {100 * share:.0f}% of copy"
                    f"{also} (target >= {100 * least:.0f}%): {_verdict(share, least, True)}"
                )
    largest = max(k[3] for k in triton)
    for (mode, dtype), least in PEER_TARGETS.items():
        speedups = []
        for (m, _, t, n, d), case in sorted(triton.items()):
            if (m, n, d) != (mode, largest, dtype):
                continue
            peers = [run.kernels[m, p, t, n, d]["time"] for p in SJ_PROVIDERS if (m, p, t, n, d) in run.kernels]
            if peers:
                speedups.append((t, min(peers) / case["time"]))
        if not speedups:
            out.append(f"- `lif_multistep` {mode}, {dtype} vs SpikingJelly: not measured (no SpikingJelly cases)")
            continue
        worst_t, worst = min(speedups, key=lambda s: s[1])
        listed = ", ".join(f"T={t}: {x:.2f}x" for t, x in speedups)
        out.append(
            f"- `lif_multistep` {mode}, {dtype}, N={_pow2(largest)}, against SpikingJelly's fastest backend: {listed} "
            f"(target >= {least}x at every T): {_verdict(worst, least, True)}"
            + ("" if worst >= least else f" (at T={worst_t})")
        )
    return out


def targets(run: Run) -> list[str]:
    """Every target, met, missed (by how much) or not measured here."""
    return training_targets(run) + kernel_targets(run)


def plots(run: Run, out: Path) -> list[str]:
    """Writes the PNGs; returns their file names (empty, with a note printed, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        return []
    written = []
    if run.train:
        for name, value, label in (
            ("training_time.png", lambda c: c["time"] * 1e3, "time per step (ms)"),
            ("training_memory.png", lambda c: train_memory(c) / 2**20, _memory_label(run)),
        ):
            fig, ax = plt.subplots(figsize=(6, 4))
            for mode in TRAIN_MODES:
                points = sorted((t, value(c)) for (m, t), c in run.train.items() if m == mode)
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=mode)
            ax.set(ylabel=label, title=_title(run, "training step"))
            _time_axis(ax, {t for _, t in run.train})
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / name, dpi=120)
            plt.close(fig)
            written.append(name)
    if run.kernels:
        modes = [m for m in KERNEL_MODES if any(k[0] == m for k in run.kernels)]
        fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
        roof = copy_gbps(run)
        largest = max(k[3] for k in run.kernels)
        for ax, mode in zip(axes[0], modes, strict=True):
            for provider in _providers(run):
                for dtype in sorted({k[4] for k in run.kernels}):
                    points = sorted(
                        (k[2], gbps(c))
                        for k, c in run.kernels.items()
                        if (k[0], k[1], k[3], k[4]) == (mode, provider, largest, dtype)
                    )
                    if points:
                        ax.plot(*zip(*points, strict=True), marker="o", label=f"{provider} {dtype}")
            if roof:
                ax.axhline(roof, color="black", linestyle="--", label=f"copy {roof:.0f} GB/s")
            ax.set(yscale="log", ylabel="GB/s (least traffic / time)", title=f"{mode}, N = {_pow2(largest)}")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            _time_axis(ax, {k[2] for k in run.kernels if k[0] == mode})
            ax.legend(fontsize="small")
        fig.suptitle(_title(run, "neuron ops"))
        fig.tight_layout()
        fig.savefig(out / "kernels_gbps.png", dpi=120)
        plt.close(fig)
        written.append("kernels_gbps.png")
    return written


def _time_axis(ax, steps: set[int]) -> None:
    """x: T on a log2 scale, ticked at the measured values only."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(steps), labels=[str(t) for t in sorted(steps)])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("T (timesteps)")


def _memory_label(run: Run) -> str:
    first = next(iter(run.train.values()))
    return "peak allocated (MiB)" if first.get("device") == "cuda" else "peak RSS above pre-step RSS (MiB)"


def _title(run: Run, what: str) -> str:
    return f"{what}: {run.info.get('device_name', '?')}"


WHAT_IS_MEASURED = """\
What is measured:

- **Training steps** (`bench/test_training_bench.py`): forward on a random batch (direct encoding), cross-entropy,
  backward and an SGD step, for SpikeKD's `bptt` (BPTT through the fused LIF kernel), `rate` (rate-based
  backpropagation: no graph through time), `blockwise` (the student in rate mode with every hybrid branch of the
  block-wise replacement method), and `sj-bptt`: the same network with SpikingJelly 2.0's multi-step `LIFNode`
  (its own backend choice) in every neuron, trained by BPTT, as SpikingJelly users train today.
- **Neuron ops** (`bench/test_kernels_bench.py`): `lif_multistep` forward (`fwd`), forward + backward for a random
  upstream gradient (`fwd+bwd`) and the rate spike pass `lif_rate` (`rate`) on [T, N] inputs, by provider: `triton`
  (SpikeKD's kernels), `reference` (SpikeKD's PyTorch twins, the CPU path), `compile` (`torch.compile` of the twins)
  and SpikingJelly's backends (`sj-*`). GB/s is the least traffic of the op (fwd: read X, write S; fwd+bwd: also
  write and re-read H, read dL/dS, write dL/dX; rate: read X, write S, rate and elig) over its time, the same bytes
  for every provider, against the device's copy bandwidth (read + write) measured in the same run. Times include
  the host's launch path, as a user's call does.
"""


def write_report(run: Run, out: Path, command: str) -> tuple[Path, list[str]]:
    """DIR/report.md and the plots; returns the report's path and the PNG names written."""
    out.mkdir(parents=True, exist_ok=True)
    written = plots(run, out)
    roof = copy_gbps(run)
    info = run.info
    lines = [
        f"# SpikeKD benchmarks: {info.get('device_name', 'unknown device')}",
        "",
        f"- machine: {info.get('device')} ({info.get('device_name')}); torch {info.get('torch')}"
        + (f", CUDA {info['cuda']}" if info.get("cuda") else "")
        + (f"; {info['threads']} CPU thread(s)" if info.get("device") == "cpu" else ""),
        f"- scale: `{info.get('scale')}` (bench/config.py); times: the {run.stat} over each case's rounds",
        "- run at: " + ", ".join(f"{at} ({name})" for name, at in run.run_at.items()),
        "- copy bandwidth (device-to-device `copy_`, read + write): "
        + (f"{roof:.1f} GB/s" if roof else "not measured"),
        f"- this report: `{command}` over {', '.join(Path(s).name for s in run.sources)}",
        "",
        WHAT_IS_MEASURED,
        "## Targets",
        "",
        *targets(run),
        "",
    ]
    if run.train:
        lines += ["## Training: time and memory vs T", "", *train_table(run)]
    if run.kernels:
        lines += [
            "## Neuron ops",
            "",
            "Providers absent from a table were skipped here (the `triton` provider and SpikingJelly's triton/cuda "
            "backends need CUDA; SpikingJelly has no rate pass, and its kernels take no bf16).",
            "",
            *kernel_tables(run),
        ]
    if written:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in written] + [""]
    else:
        lines += ["## Plots", "", "No plots: matplotlib is not installed (`pip install spikekd[plot]`).", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path, written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="pytest-benchmark JSON files or folders of them")
    parser.add_argument("--machine", help="results folder name (default: from the recorded device name)")
    parser.add_argument("--out", type=Path, help="output folder (default: bench/results/<machine>/)")
    parser.add_argument(
        "--stat", choices=STATS, default="median", help="time of a case over its rounds (min on a shared machine)"
    )
    args = parser.parse_args(argv)
    run = load(args.inputs, args.stat)
    machine = args.machine or machine_slug(run.info.get("device_name", ""))
    out = args.out or RESULTS / machine
    command = "python -m bench.report " + " ".join(sys.argv[1:] if argv is None else argv)
    path, written = write_report(run, out, command)
    print(f"wrote {path}" + "".join(f", {name}" for name in written))
    if not written:
        print("no plots: matplotlib is not installed (pip install 'spikekd[plot]'); the tables are in report.md")


if __name__ == "__main__":
    main()
