"""``python -m bench.accuracy``: does distillation beat its baselines? A grid of methods x training modes x recipes x
seeds, every student with the same step budget and the same teacher, each row a ``distill.run`` job.

    python -m bench.accuracy --quick                      # digits, tiny budget: the whole pipeline in about a minute
    python -m bench.accuracy --dataset fashion_mnist --seeds 0,1,2 --epochs 5 --train-subset 10000 --threads 1
    python -m bench.accuracy ... -- --grad-clip 0         # flags after -- go to every distill.run row
    python -m bench.accuracy ... --jobs 8                 # 8 runs at a time, each in its own process

Methods (rows): ``direct`` (cross-entropy, from scratch: the directly trained SNN), ``convert`` (cross-entropy from
the teacher's weights: ANN-to-SNN conversion and fine-tuning), ``kd``, ``ckd`` and ``blockwise`` (from scratch), and
``ann``: the teacher's architecture as an ANN, from scratch, trained on the students' budget (the same images, epochs
and seed), one run per seed whatever the train modes. It is what the budget allows without spikes, so it tells the
cost of spiking apart from the cost of the budget in a student's distance to the (longer trained) teacher.

Writes, under ``--out`` (default ``bench/results/accuracy/<dataset>``): ``results.json`` (the grid's settings, the
teacher's checksum among them, the teacher and one record per run: method, init, recipe, train mode, seed, budget,
accuracy per epoch and final, firing rate, time, the devices its epochs ran on, command), ``report.md`` (mean +- sd
per method, and the difference to ``direct`` with its sd, paired by seed; then each target of the benchmark, met or
missed by how many points) and ``accuracy.png`` (test accuracy per epoch per method, mean over seeds; needs
matplotlib). The run folders go to ``--runs`` (default ``runs/accuracy/<dataset>``). Rows already in ``results.json``
are skipped, a row cut short resumes from its checkpoint and one killed before its first checkpoint starts over, so
the same command continues an interrupted grid.
``--jobs N`` runs N rows at a time, each in a process of its own (a machine with N free cores, or a GPU that one small
run leaves idle); each record is saved as its run finishes, whatever the order; a failed run stops the grid once the
runs under way have finished, and an interrupt stops every run at a checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from bench.config import device_name
from distill.config import METHODS, RECIPES, TRAIN_MODES, Config, parse_config
from distill.run import RUN_ERRORS
from distill.run_folder import MARKER
from distill.signals import Interrupted
from distill.trainer import train
from models.registry import list_models

# a table row -> (distill.run --method, --init)
ROWS = {
    "direct": ("direct", "scratch"),
    "convert": ("direct", "teacher"),
    "kd": ("kd", "scratch"),
    "ckd": ("ckd", "scratch"),
    "blockwise": ("blockwise", "scratch"),
}
assert {method for method, _ in ROWS.values()} == set(METHODS)
ANN = "ann"  # the ANN row's method and train mode: the teacher's architecture trained on the students' budget
LABELS = (*ROWS, ANN)
DEFAULT_RECIPE = "default"
DEFAULT_ARCH = "tiny_resnet"  # also the architecture of every grid saved before --arch existed
# distill.run options whose default has changed, with the default before grids recorded it: a grid saved earlier ran
# with these. A grid's rows all run with the same defaults (a changed default is a changed setting).
EARLIER_DEFAULTS = {"neuron_tau": 2.0}
VARIANTS = "variants.md"  # a hand-written account of other settings tried, beside the report when there is one
QUICK = dict(
    dataset="digits",
    methods=",".join(LABELS),
    train="rate",
    seeds="0,1",
    teacher_epochs=3,
    epochs=2,
    train_subset=256,
    test_subset=128,
    batch_size=32,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--dataset", default="fashion_mnist", help="distill.run --dataset (default: fashion_mnist)")
    add("--arch", default=DEFAULT_ARCH, help=f"teacher and student architecture (default: {DEFAULT_ARCH})")
    add("--methods", default=",".join(LABELS), help=f"comma-separated rows among {list(LABELS)} (default: all)")
    add("--train", default="rate", help=f"comma-separated training modes among {list(TRAIN_MODES)} (default: rate)")
    add("--recipes", default=DEFAULT_RECIPE, help="comma-separated distill.run --recipe values (default: default)")
    add("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    add("--epochs", type=int, default=5, help="student epochs (default: 5)")
    add("--train-subset", type=int, default=10000, help="student training images (0 = all; default: 10000)")
    add("--test-subset", type=int, default=0, help="test images (0 = all; default: 0)")
    add("--batch-size", type=int, default=64, help="batch size (default: 64)")
    add("--teacher", default="", help="the teacher's checkpoint (default: train one into RUNS/teacher)")
    add("--teacher-epochs", type=int, default=20, help="epochs of the teacher, on the full training set (default: 20)")
    add("--threads", type=int, default=1, help="torch CPU threads per run (default: 1)")
    add("--jobs", type=int, default=1, help="runs at a time, each in its own process (default: 1, in this process)")
    add("--out", default="", help="results folder (default: bench/results/accuracy/<dataset>)")
    add("--runs", default="", help="run folders (default: runs/accuracy/<dataset>)")
    add(
        "--machine",
        default="",
        help="the machine the report names (default: the one this runs on, as detected); with --report-only, for a "
        "grid whose runs moved between machines",
    )
    add(
        "--report-only",
        action="store_true",
        help="rewrite report.md and accuracy.png from OUT/results.json; run nothing",
    )
    add("--quick", action="store_true", help=f"a tiny grid for tests: {QUICK} (given flags win)")
    add("extra", nargs="*", help="after --: flags passed to every distill.run row (e.g. -- --grad-clip 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if parser.parse_args(argv).quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    args.argv = argv
    args.methods, args.train = _names(args.methods, LABELS, "--methods"), _names(args.train, TRAIN_MODES, "--train")
    args.recipes = _names(args.recipes, None, "--recipes")
    if args.arch not in list_models():
        parser.error(f"--arch must be one of {list_models()}, got {args.arch!r}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated ints, got {args.seeds!r}")
    if not args.seeds:
        parser.error("--seeds: give at least one seed")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1 (runs at a time), got {args.jobs}")
    args.out = Path(args.out or f"bench/results/accuracy/{args.dataset}")
    args.runs = Path(args.runs or f"runs/accuracy/{args.dataset}")
    return args


def _names(text: str, accepted, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if accepted is not None and n not in accepted]
    if unknown or not names:
        raise SystemExit(f"error: {flag} must be a comma-separated list among {list(accepted or [])}, got {text!r}")
    return names


# ----------------------------------------------------------------------------------------------- running rows


def common_flags(args: argparse.Namespace) -> list[str]:
    """The distill.run flags every job of the grid shares (the teacher's job included). No validation split: the
    budget is every one of the ``--train-subset`` images (the teacher: the full training set), as in the saved grids."""
    flags = ["--dataset", args.dataset, "--arch", args.arch, "--batch-size", str(args.batch_size)]
    flags += ["--test-subset", str(args.test_subset)]
    return [*flags, "--val-fraction", "0", "--threads", str(args.threads), "--progress", "off"]


def job_argv(argv: list[str], out: Path) -> list[str]:
    """distill.run's arguments for a job into ``out``: a job cut short continues from its checkpoint, and one killed
    before its first checkpoint starts over (``--overwrite`` replaces only a SpikeKD run folder's files)."""
    if (out / "results.json").exists():
        return [*argv, "--out", str(out)]
    if (out / "checkpoint.pt").exists():
        return [*argv, "--out", str(out), "--resume"]
    cut_short = (out / MARKER).exists() and (out / "metrics.jsonl").exists()
    return [*argv, "--out", str(out), *(["--overwrite"] if cut_short else [])]


def run_job(argv: list[str], out: Path) -> dict:
    """One distill.run job in this process; a run that refuses or stops says why in one line, as distill.run does."""
    try:
        return train(parse_config(job_argv(argv, out)))
    except RUN_ERRORS as error:
        raise SystemExit(f"error: {out.name}: {error}") from error


def ensure_teacher(args: argparse.Namespace) -> tuple[Path, str]:
    """The teacher's checkpoint (trained here unless ``--teacher``) and the command that made it."""
    if args.teacher:
        if not Path(args.teacher).is_file():
            raise SystemExit(f"error: --teacher must be a teacher checkpoint file, got {args.teacher!r} (no such file)")
        return Path(args.teacher), f"given: {args.teacher}"
    out = args.runs / "teacher"
    argv = [*common_flags(args), "--epochs", "0", "--teacher-epochs", str(args.teacher_epochs)]
    command = "python -m distill.run " + shlex.join([*argv, "--out", str(out)])
    if not (out / "teacher.pt").exists():
        print(f"teacher: {command}", flush=True)
        run_job(argv, out)
    return out / "teacher.pt", command


def file_sha256(path: Path) -> str:
    """The checksum of a file: a teacher retrained to the same path is another teacher, and its grid another grid."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def row_argv(args: argparse.Namespace, teacher: Path, label: str, train_mode: str, recipe: str, seed: int) -> list:
    if label == ANN:  # the teacher stage alone, on the students' images and epochs
        stage = ["--epochs", "0", "--teacher-epochs", str(args.epochs), "--seed", str(seed)]
    else:
        method, init = ROWS[label]
        stage = ["--teacher", str(teacher), "--method", method, "--init", init, "--train", train_mode]
        stage += ["--seed", str(seed), "--epochs", str(args.epochs)]
    argv = [*common_flags(args), *stage, "--train-subset", str(args.train_subset)]
    if recipe != DEFAULT_RECIPE:
        argv += ["--recipe", recipe]
    return [*argv, *args.extra]


def row_key(label: str, train_mode: str, recipe: str, seed: int) -> str:
    return f"{label}-{train_mode}-{recipe}-s{seed}"


def grid_rows(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    """(label, train mode, recipe, seed) of every run of the grid, seed by seed; the ANN row once per recipe and seed
    (its train mode is ``ann``)."""
    rows = []
    for seed in args.seeds:
        for train_mode in args.train:
            for recipe in args.recipes:
                rows += [(label, train_mode, recipe, seed) for label in args.methods if label != ANN]
        rows += [(ANN, ANN, recipe, seed) for recipe in args.recipes if ANN in args.methods]
    return rows


def row_job(args, teacher: Path, row: tuple) -> tuple[list[str], Path]:
    """The row's distill.run arguments (without ``--out``) and its run folder."""
    return row_argv(args, teacher, *row), args.runs / row_key(*row)


def row_record(args, row: tuple, argv: list[str], out: Path, results: dict, wall_time_s: float) -> dict:
    """The grid's record of a finished row, from its run's results (``results.json``)."""
    label, train_mode, recipe, seed = row
    ann = label == ANN  # its accuracy is the teacher stage's; no spikes, and no teacher of its own
    history = results["teacher_history" if ann else "student_history"]
    method, init = (ANN, "scratch") if ann else ROWS[label]
    return dict(
        method=label,
        loss=method,
        init=init,
        recipe=recipe,
        train=train_mode,
        seed=seed,
        budget=dict(epochs=args.epochs, steps=history[-1]["step"] if history else 0, train_images=args.train_subset),
        accuracy=results["teacher_acc" if ann else "student_acc"],
        accuracy_per_epoch=[h["test_acc"] for h in history],
        teacher_accuracy=None if ann else results["teacher_acc"],
        firing_rate=None if ann else results["firing_rate"],
        devices=list(dict.fromkeys(h["device"] for h in history if "device" in h)),  # more than one: the run moved
        train_time_s=round(results["teacher_time_s" if ann else "student_time_s"], 1),
        wall_time_s=round(wall_time_s, 1),
        command="python -m distill.run " + shlex.join([*argv, "--out", str(out)]),
    )


def finished_rows(args, teacher: Path, todo: list[tuple]) -> Iterator[tuple[tuple, dict]]:
    """(row, record) for each row of ``todo`` as its run finishes: one after another in this process, or with
    ``--jobs`` N, N ``python -m distill.run`` processes at a time."""
    if not todo:
        return
    if args.jobs == 1:
        for i, row in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {row_key(*row)} ...", flush=True)
            argv, out = row_job(args, teacher, row)
            started = time.perf_counter()
            results = run_job(argv, out)
            yield row, row_record(args, row, argv, out, results, time.perf_counter() - started)
    else:
        yield from finished_processes(args, teacher, todo)


def finished_processes(args, teacher: Path, todo: list[tuple]) -> Iterator[tuple[tuple, dict]]:
    """``--jobs`` N: each row a ``python -m distill.run`` process, N at a time. After a failed run no new one starts;
    those under way finish and are yielded, then the grid stops with the failure. On an interrupt (Ctrl-C, or SIGINT
    or SIGTERM to this process) each run under way gets one SIGINT, writes a checkpoint at its current step and exits;
    the same command resumes them. The runs have a session of their own, so only this process signals them."""
    waiting, running, failed = list(todo), {}, []
    # SIGINT too: a grid started in the background by a shell inherits it ignored, and would not stop on it
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    print(f"{min(args.jobs, len(todo))} runs at a time, each a distill.run process", flush=True)
    try:
        while waiting or running:
            while waiting and not failed and len(running) < args.jobs:
                row = waiting.pop(0)
                argv, out = row_job(args, teacher, row)
                command = [sys.executable, "-m", "distill.run", *job_argv(argv, out)]
                process = subprocess.Popen(command, start_new_session=True)
                running[process] = (row, argv, out, time.perf_counter())
                print(f"started {row_key(*row)}", flush=True)
            if not running:
                break
            time.sleep(0.2)
            for process in [p for p in running if p.poll() is not None]:
                row, argv, out, started = running.pop(process)
                if process.returncode != 0:
                    failed.append(f"{row_key(*row)} (exit {process.returncode}; its messages are above)")
                    print(
                        f"{row_key(*row)} failed with exit status {process.returncode}; no new run starts", flush=True
                    )
                    continue
                results = json.loads((out / "results.json").read_text())
                yield row, row_record(args, row, argv, out, results, time.perf_counter() - started)
    except BaseException:
        stop_runs(list(running))
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed:
        raise SystemExit(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; {len(waiting)} not started")


def stop_runs(processes: list[subprocess.Popen]) -> None:
    """Sends each run still going one SIGINT and waits while they write their checkpoints; further signals to this
    process meanwhile (``timeout`` signals both the process and its group) are ignored."""
    handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        going = [process for process in processes if process.poll() is None]
        if going:
            print(f"stopping {len(going)} run(s) at a checkpoint; the same command resumes them", flush=True)
        for process in going:
            process.send_signal(signal.SIGINT)
        for process in going:
            process.wait()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"{signal.Signals(signum).name}: stopping the runs at a checkpoint")


# ----------------------------------------------------------------------------------------------- results


def load_results(path: Path, settings: dict, rows: list[tuple] | None = None) -> dict:
    """The grid's results so far; a file written with other settings is an error (it would mix budgets). The grid's
    command may differ (more seeds, other methods). The neuron's defaults are compared where ``rows`` (default: any)
    has a spiking row whose recipe leaves them to the defaults."""
    if not path.exists():
        return dict(settings=settings, records=[])
    results = json.loads(path.read_text())
    saved = {"arch": DEFAULT_ARCH, **results["settings"]}
    if "teacher_sha256" not in saved:  # a grid saved before its teacher's checksum was kept: its path alone
        results["settings"]["teacher_sha256"] = saved["teacher_sha256"] = settings.get("teacher_sha256")
    ran, extra_ran = run_options(saved, EARLIER_DEFAULTS)
    today, extra_today = run_options(settings)
    if ran != today and (rows is None or any(takes_defaults(row) for row in rows)):
        flags = " ".join(f"{_flag(name)} {value:g}" for name, value in ran.items())
        raise SystemExit(
            f"error: {path} holds a grid whose rows ran with {ran} (distill.run's defaults then, or its flags after "
            f"`--`); this command's would run with {today}. Add `-- {flags}` to continue it"
        )
    same = ("command", "extra", "defaults")
    changed = sorted(k for k in settings if k not in same and saved.get(k) != settings[k])
    changed += ["extra"] if extra_ran != extra_today else []
    if changed:
        raise SystemExit(
            f"error: {path} holds a grid run with other settings ({changed}); give another --out (and --runs) or "
            "delete it to start over"
        )
    return results


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(records: list[dict]) -> list[dict]:
    """One line per (method, train mode, recipe): accuracy mean +- sd over seeds and its differences to ``direct``
    and to ``kd`` of the same train mode and recipe, paired by seed (None for the baseline itself or without it), and
    the teacher's accuracy on the same test images (each seed's test subset), mean over the seeds (None for ``ann``)."""
    groups: dict[tuple, dict[int, dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["train"], r["recipe"]), {})[r["seed"]] = r

    def paired_difference(by_seed: dict[int, dict], baseline: str, train_mode: str, recipe: str):
        base = groups.get((baseline, train_mode, recipe), {})
        paired = [100 * (by_seed[s]["accuracy"] - base[s]["accuracy"]) for s in by_seed if s in base]
        return mean_sd(paired) if paired and by_seed is not base else None

    lines = []
    for (label, train_mode, recipe), by_seed in groups.items():
        accuracy = mean_sd([100 * r["accuracy"] for r in by_seed.values()])
        lines.append(
            dict(
                method=label,
                train=train_mode,
                recipe=recipe,
                seeds=sorted(by_seed),
                accuracy=accuracy,
                vs_direct=paired_difference(by_seed, "direct", train_mode, recipe),
                vs_kd=paired_difference(by_seed, "kd", train_mode, recipe),
                firing_rate=None if label == ANN else statistics.fmean(r["firing_rate"] for r in by_seed.values()),
                teacher_accuracy=_mean_percent([r.get("teacher_accuracy") for r in by_seed.values()]),
                train_time_s=statistics.fmean(r["train_time_s"] for r in by_seed.values()),
            )
        )
    order = {name: i for i, name in enumerate(LABELS)}
    return sorted(lines, key=lambda s: (s["train"] != ANN, s["train"], s["recipe"], order[s["method"]]))


def _mean_percent(fractions: list[float | None]) -> float | None:
    known = [100 * f for f in fractions if f is not None]
    return statistics.fmean(known) if known else None


def targets(lines: list[dict]) -> list[dict]:
    """The benchmark's targets, judged within each train mode and recipe (``summary`` lines): each a dict of target,
    train mode, recipe, seeds, what was measured, and ``shortfall`` (points below the target; 0 when met). Targets
    whose rows are missing are left out. A difference to a baseline is over the seeds both rows have; the distance to
    the teacher is to its accuracy on the same test images (a seed's test subset), over the row's seeds."""
    judged = []
    seeds_of = {(line["method"], line["train"], line["recipe"]): line["seeds"] for line in lines}

    def judge(target: str, line: dict, measured: str, shortfall: float, baseline: str | None = None) -> None:
        paired = seeds_of.get((baseline, line["train"], line["recipe"]), []) if baseline else line["seeds"]
        seeds = ",".join(str(seed) for seed in line["seeds"] if seed in paired)
        judged.append(dict(target=target, train=line["train"], recipe=line["recipe"], seeds=seeds, measured=measured,
                           shortfall=max(0.0, shortfall)))  # fmt: skip

    ann = {line["recipe"]: line["accuracy"][0] for line in lines if line["method"] == ANN}
    for line in lines:
        if line["method"] == "ckd" and line["vs_kd"]:
            judge("ckd >= kd", line, _difference(line["vs_kd"]), -line["vs_kd"][0], "kd")
        if line["method"] != "blockwise":
            continue
        if line["vs_kd"]:
            mean, sd = line["vs_kd"]  # at least 2 points and at least its sd: short by the further bound
            target = "blockwise >= kd + 2 points, and >= its sd"
            judge(target, line, _difference(line["vs_kd"]), max(2 - mean, sd - mean), "kd")
        if line["vs_direct"]:
            target = "blockwise >= direct + 6 points"
            judge(target, line, _difference(line["vs_direct"]), 6 - line["vs_direct"][0], "direct")
        if line["teacher_accuracy"] is not None:
            gap = line["teacher_accuracy"] - line["accuracy"][0]
            measured = f"{gap:.2f} points below"
            if line["recipe"] in ann:
                ann_gap = line["teacher_accuracy"] - ann[line["recipe"]]
                measured += f" (the ANN trained on the students' budget: {ann_gap:.2f} below)"
            judge("blockwise within 3 points of the teacher", line, measured, gap - 3)
    return judged


def _targets_table(judged: list[dict]) -> list[str]:
    lines = [
        "| target | train | recipe | seeds | measured (mean +- sd over seeds) | status |",
        "|---|---|---|---|---|---|",
    ]
    for t in judged:
        status = "met" if t["shortfall"] == 0 else f"missed by {t['shortfall']:.2f} points"
        lines.append(f"| {t['target']} | {t['train']} | {t['recipe']} | {t['seeds']} | {t['measured']} | {status} |")
    return lines


def moved_runs(records: list[dict]) -> str:
    """A sentence naming the runs whose epochs ran on more than one device (resumed elsewhere), or nothing."""
    moved = [f"{row_key(r['method'], r['train'], r['recipe'], r['seed'])} ({' then '.join(r['devices'])})"
             for r in records if len(r.get("devices", [])) > 1]  # fmt: skip
    return f" Runs resumed on another device: {', '.join(moved)}." if moved else ""


def teacher_accuracy_text(records: list[dict], teacher: dict) -> str:
    """The teacher's test accuracy: one figure, or, where each seed tests on a subset of its own, their mean and each
    seed's (a student is compared with the teacher on its own seed's images)."""
    by_seed = {r["seed"]: 100 * r["teacher_accuracy"] for r in records if r.get("teacher_accuracy") is not None}
    if len(set(by_seed.values())) <= 1:
        return f"{next(iter(by_seed.values()), 100 * teacher.get('accuracy', math.nan)):.2f} %"
    each = ", ".join(f"seed {seed}: {by_seed[seed]:.2f} %" for seed in sorted(by_seed))
    return f"{statistics.fmean(by_seed.values()):.2f} % (mean over the seeds' test subsets; {each})"


def teacher_checksum_text(settings: dict) -> str:
    """The teacher file's SHA-256, by which a reader can tell whether a file at the teacher's path is this grid's."""
    checksum = settings.get("teacher_sha256")
    if checksum:
        return f"Teacher file SHA-256: {checksum}."
    return "The teacher file's checksum was not recorded (the grid predates checksums): its path may now hold another."


def takes_defaults(row: tuple) -> bool:
    """Whether a (label, train mode, recipe, seed) row runs a neuron with an ``EARLIER_DEFAULTS`` option left to
    distill.run's defaults (the ANN row has no neuron; the reference recipes set their own)."""
    label, _, recipe, _ = row
    return label != ANN and not set(EARLIER_DEFAULTS) <= set(RECIPES.get(recipe, {}))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def applying_defaults(extra: list[str], defaults: dict | None = None) -> dict:
    """The changeable defaults (``EARLIER_DEFAULTS``' options; today's values unless ``defaults``) that the rows run
    with: those that the flags after ``--`` do not set."""
    given = {flag.split("=")[0] for flag in extra if flag.startswith("--")}
    values = defaults if defaults is not None else {name: getattr(Config(), name) for name in EARLIER_DEFAULTS}
    return {name: value for name, value in values.items() if _flag(name) not in given}


def run_options(settings: dict, earlier: dict | None = None) -> tuple[dict, list[str]]:
    """What a grid's rows run with of ``EARLIER_DEFAULTS``' options (from its defaults, or the flags after ``--``
    that set them), and its other flags after ``--``. A grid saved before it recorded its defaults ran with
    ``earlier``'s."""
    extra = settings.get("extra", [])
    values = dict(settings.get("defaults", applying_defaults(extra, earlier)))
    flags, others, i = {_flag(name): name for name in EARLIER_DEFAULTS}, [], 0
    while i < len(extra):
        flag, _, value = extra[i].partition("=")
        if flag in flags and not value and i + 1 < len(extra):
            value, i = extra[i + 1], i + 1
        if flag in flags and value:
            values[flags[flag]] = float(value)
        else:
            others.append(extra[i])
        i += 1
    return values, others


def defaults_text(settings: dict) -> str:
    """The distill.run defaults the rows ran with, and how to run them so where today's differ."""
    ran = settings.get("defaults", applying_defaults(settings.get("extra", []), EARLIER_DEFAULTS))
    now = applying_defaults(settings.get("extra", []))
    if not ran:
        return ""
    if ran == now:
        return f"distill.run's defaults: {', '.join(f'{k} {v}' for k, v in ran.items())}."
    flags = " ".join(f"{_flag(k)} {v:g}" for k, v in ran.items() if now[k] != v)
    return (
        f"distill.run's defaults when these rows ran: {', '.join(f'{k} {v}' for k, v in ran.items())} (today's "
        f"differ: a run's command in results.json needs `{flags}` to run as it did, unless its --recipe sets them)."
    )


def write_report(path: Path, results: dict) -> None:
    settings, teacher = results["settings"], results.get("teacher", {})
    budget = settings["budget"]
    lines = [
        f"# Accuracy benchmark: {settings['dataset']}",
        "",
        f"Architecture (teacher and students): {settings.get('arch', DEFAULT_ARCH)}.",
        f"Teacher (ANN): {teacher_accuracy_text(results['records'], teacher)} ({teacher.get('command', '')}). "
        f"{teacher_checksum_text(settings)}",
        f"Student budget (every row): {budget['epochs']} epochs on {budget['train_images'] or 'all'} training "
        f"images, batch {budget['batch_size']}; test set: {settings['test_images'] or 'all'} images. "
        f"Machine: {settings['machine']}, {settings['threads']} thread(s) per run.{moved_runs(results['records'])}",
        *([f"Every row also runs with `{shlex.join(settings['extra'])}`."] if settings.get("extra") else []),
        *filter(None, [defaults_text(settings)]),
        f"The grid's last command (each run's own is in results.json): `{settings['command']}`",
        "",
        "| method | train | recipe | seeds | accuracy (mean +- sd) | vs direct (paired) | vs kd (paired) "
        "| firing rate | train time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary(results["records"]):
        vs_direct, vs_kd = (_difference(s[key]) for key in ("vs_direct", "vs_kd"))
        lines.append(
            f"| {s['method']} | {s['train']} | {s['recipe']} | {','.join(map(str, s['seeds']))} "
            f"| {s['accuracy'][0]:.2f} +- {s['accuracy'][1]:.2f} % | {vs_direct} | {vs_kd} "
            f"| {_percent(s['firing_rate'])} | {s['train_time_s']:.0f} s |"
        )
    lines += [
        "",
        "`convert` starts from the teacher's weights; every other row from scratch. `ann` is the teacher's "
        "architecture as an ANN, trained on the students' budget: what the budget allows without spikes. Accuracy: "
        "mean +- sample "
        "standard deviation over seeds; vs direct / vs kd: mean +- sd over seeds of the difference, in points, to that "
        "row's run with the same seed (same training subset and sample order). Each run's command is in results.json.",
        "",
    ]
    judged = targets(summary(results["records"]))
    if judged:
        lines += ["## Targets", "", *_targets_table(judged), ""]
    if (path.parent / VARIANTS).exists():
        lines += [
            f"Variants of the defaults tried against these targets, and what they gave: [{VARIANTS}]({VARIANTS}).",
            "",
        ]
    path.write_text("\n".join(lines))


def _difference(value: tuple[float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:+.2f} +- {value[1]:.2f}"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f} %"


def write_plot(path: Path, results: dict) -> bool:
    """Test accuracy per epoch per method (mean over seeds), one panel per train mode, one colour per method (dotted
    for a recipe other than the default); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("accuracy.png skipped: matplotlib is not installed (pip install -e '.[plot]')", file=sys.stderr)
        return False
    modes = sorted({r["train"] for r in results["records"]} - {ANN}) or [ANN]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
    for ax, train_mode in zip(axes[0], modes, strict=True):
        curves: dict[tuple[str, str], list[list[float]]] = {}
        for r in results["records"]:
            if r["train"] in (train_mode, ANN):  # the ANN row in every panel
                curves.setdefault((r["method"], r["recipe"]), []).append(r["accuracy_per_epoch"])
        for (method, recipe), runs in curves.items():
            length = min(len(run) for run in runs)
            mean = [100 * statistics.fmean(run[e] for run in runs) for e in range(length)]
            name = method if recipe == DEFAULT_RECIPE else f"{method} ({recipe})"
            style = dict(color=f"C{LABELS.index(method)}", linestyle="-" if recipe == DEFAULT_RECIPE else ":")
            ax.plot(range(1, length + 1), mean, marker="o", label=f"{name} (n={len(runs)})", **style)
        teacher = results.get("teacher", {}).get("accuracy")
        if teacher is not None:
            ax.axhline(100 * teacher, color="grey", linestyle="--", label="teacher")
        ax.set(title=f"{results['settings']['dataset']}, {train_mode}", xlabel="epoch", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def save(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out / "results.json")
    write_report(out / "report.md", results)
    write_plot(out / "accuracy.png", results)


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.report_only:
        path = args.out / "results.json"
        if not path.exists():
            raise SystemExit(f"error: --report-only: no {path}; run the grid first")
        results = json.loads(path.read_text())
        if args.machine:
            results["settings"]["machine"] = args.machine
        save(args.out, results)
        return results
    teacher, teacher_command = ensure_teacher(args)
    settings = dict(
        dataset=args.dataset,
        arch=args.arch,
        budget=dict(epochs=args.epochs, train_images=args.train_subset, batch_size=args.batch_size),
        test_images=args.test_subset,
        teacher=str(teacher),
        teacher_sha256=file_sha256(teacher),
        extra=args.extra,
        defaults=applying_defaults(args.extra),
        threads=args.threads,
        machine=args.machine or device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        command="python -m bench.accuracy " + shlex.join(args.argv),
    )
    grid = grid_rows(args)
    results = load_results(args.out / "results.json", settings, grid)
    results["settings"]["command"] = settings["command"]  # the latest; each record keeps its own run's command
    done = {row_key(r["method"], r["train"], r["recipe"], r["seed"]) for r in results["records"]}
    todo = [row for row in grid if row_key(*row) not in done]
    print(f"accuracy grid: {len(grid)} runs, {len(grid) - len(todo)} done, results in {args.out}", flush=True)
    try:
        run_grid(args, teacher, teacher_command, results, todo)
    except (KeyboardInterrupt, Interrupted) as stop:
        print(f"bench.accuracy: {stopped_message(str(stop), results, args.out)}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    if not todo and results["records"]:
        save(args.out, results)
    return results


def stopped_message(reason: str, results: dict, out: Path) -> str:
    """What an interrupted grid says: why it stopped, where its finished rows are (if any), how to go on."""
    finished = len(results["records"])
    where = f"{finished} finished row(s) are in {out / 'results.json'}" if finished else "no row had finished"
    return f"stopped ({reason or 'interrupted'}); {where}; the same command continues the grid"


def run_grid(args, teacher: Path, teacher_command: str, results: dict, todo: list[tuple]) -> None:
    """Runs the rows of ``todo``, adding each record to ``results`` and saving them as each run finishes."""
    for i, (row, record) in enumerate(finished_rows(args, teacher, todo), 1):
        if record["teacher_accuracy"] is not None:
            results["teacher"] = dict(accuracy=record["teacher_accuracy"], command=teacher_command)
        results["records"].append(record)
        save(args.out, results)
        against = "" if record["teacher_accuracy"] is None else f" (teacher {100 * record['teacher_accuracy']:.2f} %)"
        print(
            f"[{i}/{len(todo)}] {row_key(*row)}: {100 * record['accuracy']:.2f} %{against}, "
            f"{record['wall_time_s']:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
