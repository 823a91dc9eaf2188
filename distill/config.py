"""Every option of a SpikeKD run, with its default, in one dataclass; the command line is generated from it.

    python -m distill.run --dataset fashion_mnist --method kd --train bptt --epochs 2
    python -m distill.run --config run.toml --epochs 3         # flags given on the command line win over the file

A TOML file holds the same options by field name (``time_steps = 4``, or ``time-steps``), at the top level.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.datasets.augment import AUGMENT_HELP, parse_augment
from models import list_models

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

METHODS = ("direct", "kd", "ckd", "blockwise")
TRAIN_MODES = ("bptt", "rate")


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
    neuron_tau: float = option(2.0, "LIF membrane time constant")
    v_threshold: float = option(1.0, "LIF firing threshold")
    surrogate: str = option("sigmoid", "surrogate gradient of the spike", ("sigmoid", "atan", "triangle"))
    # method
    method: str = option("blockwise", "how the student learns", METHODS)
    train_mode: str = option("rate", "SNN training: BPTT or rate-based backpropagation", TRAIN_MODES, flag="--train")
    init_from_teacher: bool = option(True, "start the student from the teacher's weights")
    tau: float = option(4.0, "temperature of the logit distillation terms (kd, ckd's NLD, blockwise)")
    alpha: float = option(1.0, "weight of the logit distillation term")
    beta: float = option(1.0, "weight of ckd's SAMD term")
    map_tau: float = option(1.0, "temperature of ckd's activation maps (SAMD)")
    noise_scale: float = option(1.0, "ckd's NLD noise, in units of the student's logit std")
    splits: str = option("", "blockwise: comma-separated stage indices k of the hybrids M_k ('' = 1..K-1)")
    align: str = option("conv_bn", "blockwise: alignment module phi", ("conv_bn", "conv", "identity"))
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
    schedule: str = option("cosine", "learning-rate schedule over the stage's steps", ("cosine", "constant"))
    grad_clip: float = option(5.0, "clip the gradient's global norm to this (0 = off)")
    amp: str = option("auto", "autocast: bf16 on GPU when auto", ("auto", "bf16", "off"))
    # run
    device: str = option("auto", "cpu, cuda, cuda:1 ... (auto = cuda when available; under torchrun, the local GPU)")
    seed: int = option(0, "seed of weights, sample order and augmentation")
    threads: int = option(0, "torch CPU threads (0 = the cores left idle, shared among the run's local processes)")
    out: str = option("", "run folder ('' = runs/<dataset>-<method>-<train>)")
    resume: bool = option(False, "continue the run in --out from its checkpoint, exactly")
    checkpoint_every: int = option(0, "also checkpoint every N optimizer steps, mid-epoch (0 = at epoch ends)")
    log_every: int = option(10, "write a metrics line every N steps")
    log: str = option(
        "jsonl",
        "metrics go to metrics.jsonl; tensorboard: also TensorBoard scalars in <run>/tensorboard (extra tensorboard)",
        ("jsonl", "tensorboard"),
    )
    progress: str = option("auto", "progress bars (auto = only on a terminal)", ("auto", "on", "off"))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {value!r}")
        positive = ("time_steps", "batch_size", "grad_accum", "eval_batch_size", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.epochs < 0 or self.teacher_epochs < 0:
            raise ValueError(f"epochs and teacher_epochs must be >= 0, got {self.epochs} and {self.teacher_epochs}")
        parse_augment(self.augment)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.teacher and self.teacher_weights:
            raise ValueError(
                "teacher (use a teacher as it is) and teacher_weights (fine-tune one from these weights) exclude "
                f"each other, got {self.teacher!r} and {self.teacher_weights!r}"
            )
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from None

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.dataset}-{self.method}-{self.train_mode}")

    @property
    def split_list(self) -> list[int] | None:
        return [int(k) for k in self.splits.split(",") if k.strip()] if self.splits.strip() else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The options as a TOML file that ``--config`` reads back."""
        return "".join(f"{k} = {_toml_value(v)}\n" for k, v in self.to_dict().items())

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        if isinstance(values.get("augment"), bool):  # runs saved when augment was an on/off switch
            values["augment"] = "standard" if values["augment"] else "none"
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {sorted(names)}")
        types = {"bool": (bool,), "int": (int,), "float": (float, int), "str": (str,)}
        for f in dataclasses.fields(cls):
            if f.name in values:
                value = values[f.name]
                if not isinstance(value, types[str(f.type)]) or (f.type != "bool" and isinstance(value, bool)):
                    raise ValueError(f"{f.name} must be a {f.type}, got {value!r}")
        return cls(**values)


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
    """Defaults, then ``--config FILE.toml``, then the flags given."""
    given = vars(build_parser().parse_args(argv))
    values = {}
    path = given.pop("config", None)
    if path is not None:
        if tomllib is None:
            raise SystemExit("--config needs Python 3.11 or later (tomllib)")
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise SystemExit(f"--config: cannot read {path}: {error}") from error
    values.update(given)
    try:
        return Config.from_dict(values)
    except (ValueError, TypeError) as error:
        raise SystemExit(f"error: {error}") from error
