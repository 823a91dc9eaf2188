"""Every option of a SpikeKD run, with its default, in one dataclass; the command line is generated from it.

    python -m distill.run --dataset fashion_mnist --method kd --train bptt --epochs 2
    python -m distill.run --config run.toml --epochs 3         # flags given on the command line win over the file

A TOML file holds the same options by field name (``time_steps = 4``, or ``time-steps``), at the top level.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from distill.datasets.augment import AUGMENT_HELP, parse_augment
from distill.run_folder import MARKER as RUN_FOLDER_MARKER
from models import list_models

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

METHODS = ("direct", "kd", "ckd", "blockwise")
RUN_LOCATION = ("out", "resume", "overwrite")  # where a run writes: never taken from a run folder's saved config
TRAIN_MODES = ("bptt", "rate")
INITS = ("scratch", "teacher")

# Named presets: every hyperparameter the reference code sets that SpikeKD has an option for. The batch size, epochs
# and T are left out: they are the run's budget and the data set's. A recipe sits under the TOML file and the flags.
RECIPES: dict[str, dict] = {
    "default": {},
    # Rate-based backpropagation (Yu et al., NeurIPS 2024), Tab-ct/rate-based-backpropagation:
    # experiment/cifar/config/config.py (SGD-M lr 0.1, wd 5e-4, cosine, decay 0.2 = tau 1.25, threshold 1, soft
    # detached reset), util/util.py split_params (weight decay on conv/linear weights only), model/layer.py
    # CustomEvaluator (rate-mode loss gradient / T), no gradient clipping; the KD terms of the same group's ESD code
    # (Intelli-Chip-Lab/enhanced-self-distillation-framework-for-snn, its training loss): tau 3, weight 0.3.
    "ratebp": dict(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        weight_decay_scope="weights",
        schedule="cosine",
        grad_clip=0.0,
        rate_grad_div_t=True,
        neuron_tau=1.25,
        v_threshold=1.0,
        hard_reset=False,
        detach_reset=True,
        surrogate="sigmoid",
        tau=3.0,
        alpha=0.3,
    ),
    # SAMD + NLD (Liu et al., AAAI 2026), SinoLeu/CKDSNN: config/cifar10/plt_train_kd_ckd_snn.yml (SGD lr 0.1,
    # wd 1e-4, cosine, noise_weight 0.9, no clipping), plt_train_kd_ckd_snn.py (compute_cam: relu + batch min-max;
    # SAMD softmax over positions at Tau 2, KL without tau^2; all loss weights 1), utils/utils.py (soft_loss_smooth:
    # tau 2, noise mixture), snn_models/layers.py (LIF decay 0.5 = tau 2, hard reset to 0 not detached, triangle
    # surrogate). Its student's last block is a ReLU; SpikeKD's students are spiking throughout.
    "ckdsnn": dict(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="cosine",
        grad_clip=0.0,
        neuron_tau=2.0,
        v_threshold=1.0,
        hard_reset=True,
        detach_reset=False,
        surrogate="triangle",
        tau=2.0,
        alpha=1.0,
        beta=1.0,
        map_tau=2.0,
        samd_norm="minmax",
        nld_form="mixture",
        noise_scale=0.1,
    ),
}


_AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
_AT_LEAST_0 = (lambda v: v >= 0, "an integer >= 0")
_POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
# the accepted values of the numeric options: (test, what is accepted); the choices of the others are in their fields
ACCEPTED = {
    **dict.fromkeys(("time_steps", "batch_size", "grad_accum", "eval_batch_size", "log_every"), _AT_LEAST_1),
    **dict.fromkeys(("epochs", "teacher_epochs", "max_steps", "checkpoint_every", "threads"), _AT_LEAST_0),
    **dict.fromkeys(("train_subset", "test_subset", "image_size", "workers", "balance_every"), _AT_LEAST_0),
    **dict.fromkeys(("lr", "v_threshold", "tau", "map_tau"), _POSITIVE),
    **dict.fromkeys(("alpha", "beta", "noise_scale", "weight_decay", "grad_clip"), _NON_NEGATIVE),
    "neuron_tau": (
        lambda v: math.isfinite(v) and v >= 1,
        "a finite number >= 1 (the membrane keeps 1 - 1/tau of itself)",
    ),
    "momentum": (lambda v: math.isfinite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "val_fraction": (lambda v: math.isfinite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63 - 1]"),
}


def option(default, help: str, choices: tuple | None = None, flag: str | None = None):
    """A dataclass field with its command-line help (and accepted values, and a flag name other than the field's)."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass
class Config:
    # data
    dataset: str = option(
        "digits",
        "data set",
        ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet", "cifar10_dvs"),
    )
    data_dir: str = option("", "folder of the data set ('' = its default: see distill/datasets)")
    download: bool = option(False, "download the data set if it is missing (CIFAR)")
    image_size: int = option(0, "side of ImageNet crops and DVS frames (0 = 224 / 48)")
    train_subset: int = option(0, "train on a fixed random subset of this many samples (0 = all)")
    test_subset: int = option(0, "evaluate on a fixed random subset of this many samples (0 = all)")
    val_fraction: float = option(
        0.1, "hold out this fraction of the training samples (fixed by --seed) to pick student_best.pt (0 = none)"
    )
    augment: str = option("standard", AUGMENT_HELP)
    workers: int = option(2, "DataLoader processes that read, decode and augment samples (0 = the training process)")
    # models
    arch: str = option("tiny_resnet", "architecture of the student SNN (and of the teacher ANN)", tuple(list_models()))
    teacher_arch: str = option(
        "",
        "architecture of the teacher ANN ('' = --arch); kd and ckd take any, blockwise one with the student's stages",
        ("", *list_models()),
    )
    stem: str = option(
        "auto",
        "ResNets' stem (auto = imagenet for the imagenet data set, else cifar; torchvision weights need imagenet)",
        ("auto", "cifar", "imagenet"),
    )
    time_steps: int = option(4, "SNN time steps T (event data: must equal the frames per sample)")
    neuron_tau: float = option(1.25, "LIF membrane time constant (the membrane keeps 1 - 1/tau of itself each step)")
    v_threshold: float = option(1.0, "LIF firing threshold")
    hard_reset: bool = option(False, "LIF hard reset to 0 after a spike (default: soft reset, subtract the threshold)")
    detach_reset: bool = option(True, "stop the gradient through the LIF reset")
    surrogate: str = option("sigmoid", "surrogate gradient of the spike", ("sigmoid", "atan", "triangle"))
    # method
    recipe: str = option(
        "default",
        "a named preset of the reference code's hyperparameters (distill/config.py RECIPES); the TOML file and the "
        "flags given win over it",
        tuple(RECIPES),
    )
    method: str = option("blockwise", "how the student learns", METHODS)
    train_mode: str = option("rate", "SNN training: BPTT or rate-based backpropagation", TRAIN_MODES, flag="--train")
    init: str = option(
        "scratch",
        "the student's initial weights: its own random init (the papers' protocol), or the teacher's (ANN-to-SNN "
        "conversion, then training: with --method direct this is the `convert` baseline)",
        INITS,
    )
    tau: float = option(4.0, "temperature of the logit distillation terms (kd, ckd's NLD, blockwise)")
    alpha: float = option(1.0, "weight of the logit distillation term")
    beta: float = option(1.0, "weight of ckd's SAMD term")
    map_tau: float = option(1.0, "temperature of ckd's activation maps (SAMD)")
    samd_norm: str = option(
        "zscore",
        "ckd's SAMD maps: z-scored per sample (sharp), or CKDSNN's batch min-max with its KL unscaled (flat)",
        ("zscore", "minmax", "none"),
    )
    noise_scale: float = option(
        0.1,
        "ckd's NLD noise: in units of the student's logit std (additive), or the noise's weight (mixture); 0.1 is the "
        "paper's lambda",
    )
    nld_form: str = option(
        "additive",
        "ckd's NLD: noise added to the logits, or CKDSNN's mixture of distributions",
        ("additive", "mixture"),
    )
    splits: str = option("", "blockwise: comma-separated stage indices k of the hybrids M_k ('' = 1..K-1)")
    align: str = option("conv_bn", "blockwise: alignment module phi", ("conv_bn", "conv", "identity"))
    align_init: str = option(
        "teacher_stats",
        "blockwise: phi's start: identity where channels match and the teacher's per-channel feature mean/std "
        "(teacher_stats), or PyTorch's random init (random)",
        ("teacher_stats", "random"),
    )
    branch_weights: str = option(
        "grad_norm",
        "blockwise: weight of each hybrid's loss: min(1, |grad student loss| / |grad hybrid loss|) on the student's "
        "parameters, re-measured every --balance-every steps (grad_norm); that ratio uncapped, each hybrid's gradient "
        "as large as the student's (match); or 1 (equal)",
        ("grad_norm", "match", "equal"),
    )
    balance_every: int = option(
        50, "measure each loss term's gradient norm every N steps (logged; sets grad_norm branch weights; 0 = never)"
    )
    # teacher
    teacher: str = option(
        "",
        "use the teacher in this file as it is, instead of training one: a SpikeKD teacher.pt or a state_dict file "
        "(SpikeKD's layout, or torchvision's / timm's ResNet)",
    )
    teacher_weights: str = option(
        "",
        "start the teacher stage from the weights in this file (as --teacher accepts) and fine-tune them for "
        "--teacher-epochs; the head starts fresh where its class count differs from the data set's",
    )
    teacher_epochs: int = option(15, "epochs of teacher training")
    # optimisation (both stages)
    epochs: int = option(15, "epochs of student training")
    max_steps: int = option(0, "stop each stage after this many optimizer steps (0 = no limit; for quick runs)")
    batch_size: int = option(64, "global batch size (split over ranks and grad_accum micro-batches)")
    grad_accum: int = option(1, "micro-batches per optimizer step on each rank")
    eval_batch_size: int = option(256, "batch size of evaluation")
    optimizer: str = option("sgd", "optimizer", ("sgd", "adamw"))
    lr: float = option(0.1, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "weight decay")
    weight_decay_scope: str = option(
        "all", "parameters weight decay applies to: all, or conv/linear weights only (weights)", ("all", "weights")
    )
    schedule: str = option("cosine", "learning-rate schedule over the stage's steps", ("cosine", "constant"))
    grad_clip: float = option(5.0, "clip the gradient's global norm to this (0 = off)")
    rate_grad_div_t: bool = option(
        False, "rate mode: divide the loss's gradient by T, as the rate-BP code does (the same as lr / T for SGD)"
    )
    amp: str = option("auto", "autocast: bf16 on GPU when auto", ("auto", "bf16", "off"))
    # run
    device: str = option("auto", "cpu, cuda, cuda:1 ... (auto = cuda when available; under torchrun, the local GPU)")
    seed: int = option(0, "seed of weights, sample order and augmentation")
    threads: int = option(0, "torch CPU threads (0 = the cores left idle, shared among the run's local processes)")
    out: str = option("", "run folder ('' = runs/<dataset>-<method>-<train>)")
    resume: bool = option(
        False, "continue the run in --out from its checkpoint, exactly (--lr and --threads may change)"
    )
    overwrite: bool = option(False, "start afresh in an --out that holds a finished or stopped run, replacing it")
    checkpoint_every: int = option(0, "also checkpoint every N optimizer steps, mid-epoch (0 = at epoch ends)")
    log_every: int = option(10, "write a metrics line every N steps")
    log: str = option(
        "jsonl",
        "metrics go to metrics.jsonl; tensorboard: also TensorBoard scalars in <run>/tensorboard (extra tensorboard)",
        ("jsonl", "tensorboard"),
    )
    progress: str = option("auto", "progress bars (auto = only on a terminal)", ("auto", "on", "off"))

    def __post_init__(self):
        """Checks every option and their combinations, so that a bad one stops the run before any work."""
        for f in dataclasses.fields(self):
            value = _plain(getattr(self, f.name))
            setattr(self, f.name, value)  # numpy scalars as Python numbers, so that the saved config reads back
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"{_flag(f)} must be one of {list(choices)}, got {value!r}")
            accepted = ACCEPTED.get(f.name)
            if accepted is not None and not accepted[0](value):
                raise ValueError(f"{_flag(f)} must be {accepted[1]}, got {value!r}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"--batch-size {self.batch_size} must be a multiple of --grad-accum {self.grad_accum} "
                "(each optimizer step splits the batch into that many equal micro-batches)"
            )
        if self.splits.strip():
            parts = [k.strip() for k in self.splits.split(",")]
            if not all(k.isdigit() and int(k) >= 1 for k in parts) or len(set(map(int, parts))) != len(parts):
                raise ValueError(
                    f"--splits must be distinct stage indices >= 1 separated by commas, got {self.splits!r}"
                )
        parse_augment(self.augment)
        if self.teacher and self.teacher_weights:
            raise ValueError(
                "--teacher (use a teacher as it is) and --teacher-weights (fine-tune one from these weights) exclude "
                f"each other, got {self.teacher!r} and {self.teacher_weights!r}"
            )
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from None

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.dataset}-{self.method}-{self.train_mode}")

    @property
    def label(self) -> str:
        """The method as tables name it: ``convert`` for direct training from the teacher's weights, the method with
        ``+convert`` for another method from them, else the method."""
        if self.init == "teacher":
            return "convert" if self.method == "direct" else f"{self.method}+convert"
        return self.method

    @property
    def split_list(self) -> list[int] | None:
        return [int(k) for k in self.splits.split(",") if k.strip()] if self.splits.strip() else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The options as a TOML file that ``--config`` reads back, without the run folder, ``resume`` and
        ``overwrite``: a saved file starts a new run wherever ``--out`` says, never over the one it came from."""
        items = self.to_dict().items()
        return "".join(f"{k} = {_toml_value(v)}\n" for k, v in items if k not in RUN_LOCATION)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        if isinstance(values.get("init_from_teacher"), bool):  # the option's name in configs saved before --init
            values.setdefault("init", "teacher" if values.pop("init_from_teacher") else "scratch")
        if isinstance(values.get("augment"), bool):  # runs saved when augment was an on/off switch
            values["augment"] = "standard" if values["augment"] else "none"
        recipe = values.get("recipe", "default")
        if recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {list(RECIPES)}, got {recipe!r}")
        values = {**RECIPES[recipe], **values}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {sorted(names)}")
        types = {"bool": (bool,), "int": (int,), "float": (float, int), "str": (str,)}
        for f in dataclasses.fields(cls):
            if f.name in values:
                value = _plain(values[f.name])
                if not isinstance(value, types[str(f.type)]) or (f.type != "bool" and isinstance(value, bool)):
                    raise ValueError(f"{f.name} must be a {f.type}, got {value!r}")
        return cls(**values)


def _plain(value):
    """A numpy scalar (``np.float32(0.1)``, ``np.int64(3)``, ``np.bool_``) as the Python number it holds."""
    return value.item() if isinstance(value, np.generic) else value


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m distill.run``: one flag per ``Config`` field, plus ``--config``."""
    parser = argparse.ArgumentParser(
        prog="python -m distill.run",
        description="Train (or load) an ANN teacher and distill an SNN student from it; evaluate; write a report. "
        "With no arguments: blockwise distillation of tiny_resnet, T=4, rate-based training, on the embedded "
        "digits, on the CPU, in under a minute. Multi-GPU / multi-process: torchrun --nproc_per_node=N -m "
        "distill.run ...",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file (flags win)")
    for f in dataclasses.fields(Config):
        kwargs = {"help": f.metadata["help"] + f" (default: {f.default!r})", "dest": f.name}
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[str(f.type)]
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(_flag(f), **kwargs)
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """Defaults, then ``--config FILE.toml``, then (with ``--resume``) the options saved in the run folder, then the
    flags given. A config file saved in a run folder never sets the run folder, ``resume`` or ``overwrite``."""
    given = vars(build_parser().parse_args(argv))
    values = {}
    path = given.pop("config", None)
    if path is not None:
        values = _read_toml(Path(path), "--config")
        if (Path(path).parent / RUN_FOLDER_MARKER).exists():
            values = {k: v for k, v in values.items() if k.replace("-", "_") not in RUN_LOCATION}
    values.update(given)
    try:
        if given.get("resume"):
            saved = Path(Config.from_dict(values).run_dir) / "config.toml"
            if saved.is_file():
                values = {**values, **_read_toml(saved, "--resume"), **given}
        return Config.from_dict(values)
    except (ValueError, TypeError) as error:
        raise SystemExit(f"error: {error}") from error


def _read_toml(path: Path, option: str) -> dict:
    if tomllib is None:
        raise SystemExit(f"{option} needs Python 3.11 or later (tomllib) to read {path}")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SystemExit(f"{option}: cannot read {path}: {error}") from error
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in values:
            raise SystemExit(f"{option}: {path} sets {name} twice (as {key!r} and as {name!r} or its dashed spelling)")
        values[name] = value
    return values
