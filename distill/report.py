"""The run's summary as text: the table ``python -m distill.run`` prints and the ``report.md`` of the run folder."""

from __future__ import annotations

from pathlib import Path

from distill.config import Config
from distill.evaluate import E_AC_PJ, E_MAC_PJ


def summary_rows(results: dict) -> list[tuple[str, str]]:
    cfg = results["config"]
    return [
        ("data set", f"{cfg['dataset']} ({architectures(cfg)}, T={cfg['time_steps']})"),
        ("method", f"{_label(cfg)} / {cfg['train_mode']} (student init: {cfg.get('init', 'scratch')})"),
        ("teacher accuracy", f"{100 * results['teacher_acc']:.2f} %"),
        ("student accuracy", f"{100 * results['student_acc']:.2f} %"),
        *best_student_row(results.get("student_best") or {}),
        ("firing rate", f"{100 * results['firing_rate']:.2f} % (mean over LIF layers)"),
        ("energy / sample", f"SNN {results['snn_energy_uj']:.3f} uJ vs ANN {results['ann_energy_uj']:.3f} uJ"),
        ("time", f"teacher {results['teacher_time_s']:.1f} s, student {results['student_time_s']:.1f} s"),
        ("peak memory", f"{results['peak_memory_mb']:.0f} MiB ({results['device']}{threads(results)})"),
    ]


def _label(cfg: dict) -> str:
    return Config.from_dict(cfg).label


def best_student_row(best: dict) -> list[tuple[str, str]]:
    if not best:
        return []
    text = f"epoch {best['epoch']}: val {100 * best['val_acc']:.2f} %, test {100 * best['test_acc']:.2f} %"
    return [("best student (val)", text + " (student_best.pt)")]


def threads(results: dict) -> str:
    count = results.get("threads")
    return "" if count is None else f", {count} thread{'s' if count != 1 else ''}"


def architectures(cfg: dict) -> str:
    """ "resnet18", or "resnet34 -> resnet18" where the teacher's architecture differs from the student's."""
    teacher = cfg.get("teacher_arch") or cfg["arch"]
    return cfg["arch"] if teacher == cfg["arch"] else f"{teacher} -> {cfg['arch']}"


def format_table(rows: list[tuple[str, str]]) -> str:
    """A two-column markdown table."""
    width = max(len(k) for k, _ in rows)
    value_width = max(len(v) for _, v in rows)
    lines = [f"| {'':{width}} | {'':{value_width}} |", f"|{'-' * (width + 2)}|{'-' * (value_width + 2)}|"]
    lines += [f"| {k:{width}} | {v:{value_width}} |" for k, v in rows]
    return "\n".join(lines)


def write_report(path: str | Path, results: dict) -> None:
    cfg = results["config"]
    lines = [
        f"# SpikeKD run: {cfg['dataset']}, {_label(cfg)} / {cfg['train_mode']}",
        "",
        format_table(summary_rows(results)),
        "",
        "## Accuracy per epoch",
        "",
        "| stage | epoch | step | train loss | train accuracy | val accuracy | test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in ("teacher", "student"):
        for h in results[f"{stage}_history"]:
            cells = [stage, h["epoch"], h["step"], _number(h, "train_loss"), *_percents(h, "train", "val", "test")]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "## Energy estimate (per sample)",
        "",
        f"E_MAC = {E_MAC_PJ} pJ, E_AC = {E_AC_PJ} pJ (45 nm, Horowitz 2014). The SNN accumulates once per input spike",
        "and fan-out (SOPs); layers with non-binary input (the first conv, the head) count as MACs.",
        "",
        "| | MACs | SOPs | energy |",
        "|---|---|---|---|",
        f"| ANN teacher | {results['ann_macs']:.4g} | 0 | {results['ann_energy_uj']:.4f} uJ |",
        f"| SNN student | {results['snn_macs']:.4g} | {results['snn_sops']:.4g} | {results['snn_energy_uj']:.4f} uJ |",
        "",
        "## Firing rate per LIF layer (spikes per neuron per time step)",
        "",
        "| layer | rate |",
        "|---|---|",
    ]
    lines += [f"| {name} | {rate:.4f} |" for name, rate in results["firing_rates"].items()]
    lines += ["", "## Configuration", "", "```toml", Config.from_dict(cfg).to_toml().rstrip(), "```", ""]
    lines += ["Reproduce: `python -m distill.run --config config.toml --out NEW_FOLDER` (this block, saved in the run "
              "folder).", ""]  # fmt: skip
    Path(path).write_text("\n".join(lines))


def _number(record: dict, key: str) -> str:
    return f"{record[key]:.4f}" if key in record else "-"


def _percents(record: dict, *splits: str) -> list[str]:
    return [f"{100 * record[f'{s}_acc']:.2f} %" if f"{s}_acc" in record else "-" for s in splits]
