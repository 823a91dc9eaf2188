"""How closely rate-based backprop's weight gradient follows BPTT's, stage by stage.

    python -m bench.gradient_agreement --dataset fashion_mnist --arch resnet20 --time-steps 1,2,4,8
    python -m bench.gradient_agreement --dataset fashion_mnist --student runs/a/student.pt,runs/b/student.pt

For each seed: a batch of the training set (drawn by the seed), the network in training mode (batch statistics), and
the cross-entropy's weight gradient taken twice on the same weights: by BPTT (exact for the surrogate spike) and in
rate mode (the two-stream pass of docs/design.md). Per parameter group (the stem, each stage, the head, and all of
them) the table gives the cosine between the two gradients and the ratio of their norms, rate / BPTT, as mean +- sd
over the seeds. A cosine near 1 means that rate mode descends in BPTT's direction; at T = 1 the two are the same.
The network is freshly initialised by the seed (``--arch``, ``--time-steps``, ``--neuron-tau``) or a trained
student (``--student``, each with its own T and neuron; a row per student, named by its run folder).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.accuracy import mean_sd
from distill.config import Config
from distill.datasets import DATASETS, load_dataset
from models import create_model, list_models, load_student


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gradient_agreement",
        description="cosine and norm ratio of rate-mode and BPTT weight gradients, per stage",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--dataset", default="digits", choices=DATASETS, help="the batch's data set (its default folder)")
    add("--arch", default="resnet20", choices=list_models(), help="architecture of a freshly initialised SNN")
    add("--time-steps", default="4", help="comma-separated T of the fresh SNN")
    add("--neuron-tau", default=f"{Config().neuron_tau:g}", help="comma-separated LIF time constants of the fresh SNN")
    add(
        "--student",
        default="",
        help="comma-separated trained students (student.pt files or run folders) instead of a fresh SNN",
    )
    add("--batch-size", type=int, default=64, help="images per batch")
    add("--seeds", default="0,1,2", help="comma-separated seeds (batch and fresh weights)")
    add("--threads", type=int, default=1, help="torch CPU threads")
    add("--out", default="", help="also write the table to this new markdown file")
    return parser


def _numbers(text: str, flag: str, kind, accepted, what: str) -> list:
    """The comma-separated values of ``flag``; a clear error when one is not ``what``."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(accepted(v) for v in values):
        raise SystemExit(f"error: {flag} must be comma-separated {what}, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.time_steps = _numbers(args.time_steps, "--time-steps", int, lambda v: v >= 1, "integers >= 1")
    args.neuron_tau = _numbers(args.neuron_tau, "--neuron-tau", float, lambda v: v >= 1, "numbers >= 1")
    args.seeds = _numbers(args.seeds, "--seeds", int, lambda v: v >= 0, "integers >= 0")
    if args.batch_size < 2:
        raise SystemExit(f"error: --batch-size must be an integer >= 2 (batch statistics), got {args.batch_size}")
    if args.out and Path(args.out).exists():
        raise SystemExit(f"error: --out must be a new file (nothing is overwritten), got {args.out!r}, which exists")
    args.students = [Path(p) for p in args.student.split(",") if p.strip()]
    if args.students:
        given = [f for f in ("--time-steps", "--neuron-tau", "--arch") if any(a.startswith(f) for a in argv or [])]
        if given:
            raise SystemExit(f"error: --student brings its own architecture, T and neuron; drop {', '.join(given)}")
        absent = [str(p) for p in args.students if not p.exists()]
        if absent:
            raise SystemExit(f"error: --student must be student files or run folders; not found: {', '.join(absent)}")
    return args


def group_of(name: str) -> str:
    """The parameter group a weight belongs to: ``stem``, ``stage1`` .. ``stageK`` or ``head``."""
    top = name.split(".")[0]
    return f"stage{int(name.split('.')[1]) + 1}" if top == "stages" else top


def gradients(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """The cross-entropy's gradient of every trainable weight of ``net`` in ``mode``, by name."""
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x, mode=mode), y).backward()
    return {n: p.grad.detach().flatten().clone() for n, p in net.named_parameters() if p.grad is not None}


def agreement(bptt: dict[str, torch.Tensor], rate: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """(cosine, norm ratio rate / BPTT) per group, and over every weight (``all``)."""
    groups: dict[str, list[str]] = {}
    for name in bptt:
        groups.setdefault(group_of(name), []).append(name)
    groups["all"] = list(bptt)
    result = {}
    for group, names in groups.items():
        b = torch.cat([bptt[n] for n in names]).double()
        r = torch.cat([rate[n] for n in names]).double()
        result[group] = (F.cosine_similarity(b, r, dim=0).item(), (r.norm() / b.norm()).item())
    return result


def probe(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[float, float]]:
    net.train()
    return agreement(gradients(net, x, y, "bptt"), gradients(net, x, y, "rate"))


def trained_students(paths: list[Path]) -> list[tuple[str, int, float, torch.nn.Module]]:
    """(name, T, tau, network) of each student, read once for every seed."""
    rows = []
    for path in paths:
        student = load_student(path)
        rows.append(
            ((path if path.is_dir() else path.parent).name, student.T, student.neuron_options["tau"], student.net)
        )
    return rows


def fresh_networks(args: argparse.Namespace, num_classes: int, in_channels: int, seed: int):
    """(name, T, tau, network) for each T and tau, initialised by ``seed``."""
    for T in args.time_steps:
        for tau in args.neuron_tau:
            torch.manual_seed(seed)
            net = create_model(args.arch, kind="snn", T=T, tau=tau, num_classes=num_classes, in_channels=in_channels)
            yield f"fresh {args.arch}", T, tau, net


def measure(args: argparse.Namespace) -> dict[tuple[str, int, float], list[dict]]:
    """Per row (network, T, tau), one agreement per seed."""
    data = load_dataset(args.dataset, "train")
    students = trained_students(args.students)
    found: dict[tuple[str, int, float], list[dict]] = {}
    for seed in args.seeds:
        picked = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))[: args.batch_size]
        x, y = data.batch(picked)
        for name, T, tau, net in students or fresh_networks(args, data.num_classes, x.shape[-3], seed):
            found.setdefault((name, T, tau), []).append(probe(net, x, y))
    return found


def _mean_sd(values: list[float]) -> str:
    return "{:.2f} +- {:.2f}".format(*mean_sd(values))


def table(found: dict[tuple[str, int, float], list[dict]]) -> list[str]:
    groups = list(next(iter(found.values()))[0])
    groups = [g for g in groups if g != "all"] + ["all"]
    lines = [
        "| network | T | tau | " + " | ".join(f"{g} cos" for g in groups) + " | all norm ratio |",
        "|---|---|---|" + "---|" * (len(groups) + 1),
    ]
    for (name, T, tau), runs in found.items():
        cosines = [_mean_sd([run[g][0] for run in runs]) for g in groups]
        ratio = _mean_sd([run["all"][1] for run in runs])
        lines.append(f"| {name} | {T} | {tau:g} | " + " | ".join(cosines) + f" | {ratio} |")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    found = measure(args)
    lines = [
        f"Rate-mode against BPTT weight gradients of the cross-entropy: {args.dataset}, batch {args.batch_size}, "
        f"seeds {','.join(map(str, args.seeds))} (mean +- sd over seeds).",
        f"Command: `python -m bench.gradient_agreement {shlex.join(argv)}`",
        "",
        *table(found),
    ]
    print("\n".join(lines), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
