"""The trainer: a teacher stage (train the ANN, or load it), a student stage (distill the SNN), evaluation, report.

Each stage reads straight through: schedule, micro-batches (forward, backward), all-reduce (DDP), NaN check, clip,
step, log, checkpoint, evaluate. The sample order and every random draw (augmentation, NLD noise) are functions of
(seed, stage, step), and a checkpoint holds the step, the model, optimizer, scheduler and RNG states: a run resumed
from any checkpoint ends with the same weights, bit for bit, as one that never stopped (same device, same threads).

Run folder (``Config.run_dir``): ``checkpoint.pt`` (latest, of the stage in progress), ``teacher.pt`` and
``student.pt`` (final weights), ``metrics.jsonl`` (one JSON object a line), ``results.json``, ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from distill.checkpoint import (
    CheckpointError,
    NonFiniteCheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from distill.config import Config
from distill.datasets import Dataset, DatasetError, load_dataset, random_crop_flip
from distill.datasets.augment import SampleAugment, parse_augment
from distill.datasets.pipeline import batches
from distill.datasets.sampling import epoch_order, eval_shard, micro_batches, mix_seed, steps_per_epoch
from distill.evaluate import accuracy, model_input, profile
from distill.losses import BlockwiseLoss, CKDLoss, KDLoss, cross_entropy
from distill.memory import available_memory_bytes, peak_resident_bytes
from distill.run_folder import RunLock, check_run_folder, claim, clear_results, remove_temporary_files
from distill.signals import Interrupted, StopSignals
from models import HybridNet, LoadedWeights, create_model, load_weights
from models.weights import read_weights_file

STAGES = ("teacher", "student")
PROFILE_SAMPLES = 512  # test samples used for firing rates and operation counts
STATISTICS_SAMPLES = 256  # training samples from which blockwise's phi_k take the teacher's feature statistics
# may change when resuming
RUN_CONTROL = ("resume", "overwrite", "out", "progress", "device", "log_every", "log", "workers")
CHANGEABLE_ON_RESUME = {  # may change when resuming too, but then the run differs from one that never stopped
    "lr": "the learning rate of the remaining steps",
    "threads": "CPU reductions may round differently",
}


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient or the state became NaN or infinite; the run stopped without applying or saving it, and
    the message names the last checkpoint, which is finite."""


class SetupError(RuntimeError):
    """The options cannot run here: a device this machine lacks, images too small for the architecture."""


@dataclass
class Context:
    """Where the run executes: device, ranks, data, run folder."""

    cfg: Config
    device: torch.device
    rank: int
    world_size: int
    train: Dataset
    test: Dataset
    run_dir: Path
    val: Dataset | None = None  # held out of the training samples; picks student_best.pt
    scalars: object | None = None  # a TensorBoard SummaryWriter under --log tensorboard, on rank 0, once claimed
    stop: StopSignals = field(default_factory=StopSignals)  # SIGINT / SIGTERM received while training
    last_checkpoint: str = ""  # the last checkpoint written (all of them are finite), for the messages of a stop

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def autocast(self) -> bool:
        return self.cfg.amp == "bf16" or (self.cfg.amp == "auto" and self.device.type == "cuda")

    def log(self, record: dict) -> None:
        """One metrics record: a line of metrics.jsonl and, under --log tensorboard, a scalar per number in it
        (tag "<stage>/<key>", at the record's step)."""
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.scalars is not None:
            for key, value in record.items():
                if key not in ("stage", "step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.scalars.add_scalar(f"{record['stage']}/{key}", value, record["step"])

    def say(self, line: str) -> None:
        """A progress line for the person watching, on stderr (beside any progress bar), from rank 0."""
        if self.is_main:
            tqdm.write(line, file=sys.stderr)
            sys.stderr.flush()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


# ----------------------------------------------------------------------------------------------- set-up


def setup(cfg: Config) -> Context:
    """Process group (under torchrun), device, threads, data, and the architecture's check on one image. Writes
    nothing: the run folder is claimed once every check has passed (``claim_run_folder``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(cfg.threads or default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    root = cfg.data_dir or None
    size = cfg.image_size or None
    if cfg.download and world_size > 1 and rank != 0:
        dist.barrier()  # rank 0 downloads first
    train = load_dataset(cfg.dataset, "train", root, cfg.download, size)
    test = load_dataset(cfg.dataset, "test", root, cfg.download, size)
    if cfg.download and world_size > 1 and rank == 0:
        dist.barrier()
    for flag, asked, data in (("--train-subset", cfg.train_subset, train), ("--test-subset", cfg.test_subset, test)):
        if asked > len(data):
            raise SetupError(
                f"{flag} {asked} is more than the {len(data)} samples of {cfg.dataset}'s split; pass 0 for all"
            )
    train, test = train.subset(cfg.train_subset, cfg.seed), test.subset(cfg.test_subset, cfg.seed)
    train, val = train.split(cfg.val_fraction, cfg.seed)
    if train.time_steps is not None and train.time_steps != cfg.time_steps:
        raise DatasetError(
            f"time_steps={cfg.time_steps} but the {cfg.dataset} samples have {train.time_steps} frames; "
            f"pass --time-steps {train.time_steps}"
        )
    check_data_size(cfg, train, world_size, len(val) if val is not None else 0)
    check_models(cfg, train)
    if cfg.log == "tensorboard" and rank == 0:
        tensorboard_writer()  # installed: checked before the run folder changes
    ctx = Context(cfg, device, rank, world_size, train, test, cfg.run_dir, val)
    check_memory(ctx)
    ctx.barrier()
    return ctx


def tensorboard_writer(run_dir: Path | None = None):
    """A TensorBoard SummaryWriter into ``run_dir/tensorboard``; with no ``run_dir``, only the check that TensorBoard
    is installed (a SetupError saying how to install it otherwise)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise SetupError(
            f"--log tensorboard needs TensorBoard: pip install 'spikekd[tensorboard]' ({error})"
        ) from error
    return None if run_dir is None else SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def default_threads(processes_here: int) -> int:
    """The torch CPU threads of ``--threads 0``: the cores this process may run on (its CPU affinity), less those
    the machine's other work keeps busy (the 1-minute load average, rounded down), shared among the run's processes
    on this machine; at least 1. An idle 16-core machine gives 16 (8 each for 2 processes); a 2-core machine with
    another job running gives 1, where torch's default of 2 would make the two fight over the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, (cores - busy) // max(processes_here, 1))


def resolve_device(name: str, local_rank: int) -> torch.device:
    """`--device` as a torch.device with an index for CUDA ("auto" and "cuda": this process's local GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise SetupError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise SetupError(f"--device {name}: GPU {index} does not exist; this machine has {torch.cuda.device_count()}")
    return torch.device("cuda", index)


def check_data_size(cfg: Config, train: Dataset, world_size: int, held_out: int = 0) -> None:
    """The batch options against the training set (after ``--train-subset`` and the ``held_out`` validation
    samples) and the number of processes."""
    if cfg.batch_size > len(train):
        val = f" (after --val-fraction {cfg.val_fraction} held {held_out} out)" if held_out else ""
        raise SetupError(
            f"--batch-size {cfg.batch_size} is larger than the {len(train)} training samples of {cfg.dataset}{val}; "
            "pass a smaller --batch-size (or a larger --train-subset or a smaller --val-fraction)"
        )
    if cfg.batch_size % (world_size * cfg.grad_accum):
        raise SetupError(
            f"--batch-size {cfg.batch_size} must be a multiple of the {world_size} processes x --grad-accum "
            f"{cfg.grad_accum}"
        )


def check_models(cfg: Config, data: Dataset) -> None:
    """Builds the ANNs of the student's and the teacher's architecture, the SNN and (blockwise) the hybrid of ``cfg``
    and runs the ANNs on one blank image of the data set's size, so that options the architectures cannot take
    (images too small for their downsampling, a block-wise teacher whose stages do not match the student's, splits
    past the stages, an alignment that cannot map the channels, a student started from the weights of another
    architecture) stop the run here with a way out, before any training."""
    student_sizes = stage_sizes(cfg, "--arch", cfg.arch, data)
    teacher = teacher_arch(cfg)
    if teacher != cfg.arch:
        teacher_sizes = stage_sizes(cfg, "--teacher-arch", teacher, data)
        if cfg.method == "blockwise" and teacher_sizes != student_sizes:
            height, width = data.sample_shape[-2:]
            raise SetupError(
                f"--method blockwise runs the teacher's stages after the student's, so their stages must match: on "
                f"{height}x{width} images --teacher-arch {teacher} has {len(teacher_sizes)} stages of sizes "
                f"{teacher_sizes}, --arch {cfg.arch} has {len(student_sizes)} of sizes {student_sizes}; pick a "
                "teacher of the student's family (resnet18 and resnet34, vgg11 and vgg16, ...) or use --method kd "
                "or ckd"
            )
        if cfg.init == "teacher":
            raise SetupError(
                f"--init teacher copies the teacher's weights into the student, so it needs one architecture, "
                f"but --teacher-arch is {teacher} and --arch is {cfg.arch}; pass --init scratch"
            )
    try:
        student = build_model(cfg, "snn", data)
        if cfg.method == "blockwise":
            HybridNet(student, build_model(cfg, "ann", data), splits=cfg.split_list, align=cfg.align)
    except ValueError as error:
        raise SetupError(f"--arch {cfg.arch}: {error}") from error


def stage_sizes(cfg: Config, flag: str, arch: str, data: Dataset) -> list[tuple[int, int]]:
    """The spatial size of each stage's output of `arch`'s ANN twin on the data set's images."""
    height, width = data.sample_shape[-2:]
    net = build_model(cfg, "ann", data, arch).eval()
    try:
        with torch.no_grad():
            _, features = net(torch.zeros(1, data.in_channels, height, width), return_features=True)
    except RuntimeError as error:
        raise SetupError(
            f"{flag} {arch} cannot take the {height}x{width} images of {cfg.dataset} ({error}); use an "
            "architecture for small images (tiny_resnet, tiny_vgg) or, for imagenet and cifar10_dvs, a larger "
            "--image-size"
        ) from error
    return [tuple(f.shape[-2:]) for f in features]


def check_memory(ctx: Context) -> None:
    """Estimates each stage's training memory and refuses options that need more than the device has free, before
    any training: the model's weights, gradients and momentum, plus the tensors a forward pass keeps for backward,
    measured on 2 samples and scaled to the micro-batch (what they keep grows in proportion to it)."""
    cfg, device = ctx.cfg, ctx.device
    micro = cfg.batch_size // (ctx.world_size * cfg.grad_accum)
    available = available_memory_bytes(device)
    if available is None:
        return
    for stage, module in memory_check_stages(ctx).items():
        state = 3 * sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
        per_sample = saved_for_backward_bytes(ctx, module, samples=2) / 2
        needed = state + per_sample * micro
        if device.type == "cpu":  # the processes of this machine share its memory
            needed *= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if needed > available:
            gib = 2**30
            raise SetupError(
                f"the {stage} stage's training step at --time-steps {cfg.time_steps} with micro-batches of {micro} "
                f"samples (--batch-size {cfg.batch_size} / {ctx.world_size} processes / --grad-accum "
                f"{cfg.grad_accum}) needs about {needed / gib:.1f} GiB ({per_sample / 2**20:.1f} MiB a sample, for "
                f"each process on this machine), but {device} has {available / gib:.1f} GiB free; raise "
                "--grad-accum, or lower --batch-size or --time-steps"
            )


def memory_check_stages(ctx: Context) -> dict[str, nn.Module]:
    """The module each stage trains, freshly built on ``ctx.device`` (block-wise's phi_k included): what
    ``check_memory`` runs a forward pass of."""
    cfg, device = ctx.cfg, ctx.device
    student = build_model(cfg, "snn", ctx.train)
    if cfg.method == "blockwise":
        student = HybridNet(student, build_model(cfg, "ann", ctx.train), cfg.split_list, cfg.align)
    stages = {"student": student.to(device)}
    if not cfg.teacher:
        stages["teacher"] = build_model(cfg, "ann", ctx.train).to(device)
    return stages


def saved_for_backward_bytes(ctx: Context, module: nn.Module, samples: int) -> int:
    """The bytes of the tensors (other than parameters) that a training forward pass of ``module`` on ``samples``
    training samples keeps for its backward pass, each storage counted once."""
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    kept: dict[int, int] = {}

    def keep(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    x, _ = ctx.train.batch(torch.arange(samples), ctx.device)
    is_ann = getattr(module, "kind", "snn") == "ann"  # a HybridNet runs the SNN's modes
    module.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        with torch.autocast(ctx.device.type, torch.bfloat16, enabled=ctx.autocast):
            if is_ann:
                module(model_input(x, "ann"))
            else:
                module(model_input(x, "snn"), mode=ctx.cfg.train_mode)
    return sum(kept.values())


def teacher_arch(cfg: Config) -> str:
    return cfg.teacher_arch or cfg.arch


def build_model(cfg: Config, kind: str, data: Dataset, arch: str | None = None) -> nn.Module:
    """The SNN student (kind "snn") or the ANN teacher (kind "ann"); `arch` None: the one `cfg` gives that kind."""
    return create_model(**model_args(cfg, kind, data, arch))


def model_args(cfg: Config, kind: str, data: Dataset, arch: str | None = None) -> dict:
    """The arguments of `create_model` for the student or the teacher, as saved beside their weights."""
    arch = arch or (cfg.arch if kind == "snn" else teacher_arch(cfg))
    args = dict(name=arch, kind=kind, num_classes=data.num_classes, in_channels=data.in_channels, T=cfg.time_steps)
    if kind == "snn":
        args.update(tau=cfg.neuron_tau, v_threshold=cfg.v_threshold, surrogate=cfg.surrogate)
        args.update(v_reset=0.0 if cfg.hard_reset else None, detach_reset=cfg.detach_reset)
    if "resnet" in arch:
        args["stem"] = resnet_stem(cfg)
    return args


def resnet_stem(cfg: Config) -> str:
    if cfg.stem != "auto":
        return cfg.stem
    return "imagenet" if cfg.dataset == "imagenet" else "cifar"


def parameter_groups(cfg: Config, params: list[nn.Parameter]) -> list[dict]:
    """One group with ``weight_decay``, or (``weight_decay_scope="weights"``) decay on conv and linear weights only
    (the tensors of more than one dimension) and none on BatchNorm's affine and biases, as the rate-BP code does."""
    if cfg.weight_decay_scope == "all":
        return [dict(params=params, weight_decay=cfg.weight_decay)]
    decayed = [p for p in params if p.dim() > 1]
    return [
        dict(params=decayed, weight_decay=cfg.weight_decay),
        dict(params=[p for p in params if p.dim() <= 1], weight_decay=0.0),
    ]


def make_optimizer(cfg: Config, params: list[nn.Parameter], total_steps: int):
    groups = parameter_groups(cfg, params)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.schedule == "cosine":
        factor = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    else:
        factor = lambda step: 1.0
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_base_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
    """Makes ``lr`` the peak of the schedule from its current step on (what a changed ``--lr`` does on resume)."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)


# ----------------------------------------------------------------------------------------------- losses


@dataclass
class StepLoss:
    """A micro-batch's loss as named terms (the step minimises their weighted sum, weights 1 unless balanced), the
    trained model's logits ``[B, classes]`` (for the train accuracy), and whether each term is also logged on its own
    as ``loss_<name>`` (its weighted share of the loss: blockwise's branches)."""

    terms: dict[str, Tensor]
    logits: Tensor
    log_terms: bool = False


def teacher_loss(net: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> StepLoss:
    """The teacher stage's loss: cross-entropy of the ANN, as its one term ``{"ce"}``."""
    logits = net(model_input(x, "ann"))
    return StepLoss({"ce": cross_entropy(logits, y)}, logits)


def student_loss(cfg: Config, teacher: nn.Module) -> Callable:
    """The student stage's loss ``(net, x, y, generator) -> StepLoss`` for ``cfg.method``; ``net`` is what
    ``student_module`` returns (possibly DDP-wrapped)."""
    mode = cfg.train_mode
    if cfg.method == "direct":

        def loss(net, x, y, g):
            logits = net(model_input(x, "snn"), mode=mode)
            return StepLoss({"ce": cross_entropy(logits, y)}, logits)

        return loss
    if cfg.method == "blockwise":
        blockwise = BlockwiseLoss(cfg.alpha, cfg.tau)

        def loss(net, x, y, g):
            outputs = net(model_input(x, "snn"), mode=mode)
            return StepLoss(blockwise.terms(outputs, y), outputs["student"], log_terms=True)

        return loss
    if cfg.method == "kd":
        kd = KDLoss(cfg.alpha, cfg.tau)

        def loss(net, x, y, g):
            with torch.no_grad():
                teacher_logits = teacher(model_input(x, "ann"))
            logits = net(model_input(x, "snn"), mode=mode)
            return StepLoss(kd.terms(logits, teacher_logits, y), logits)

        return loss
    ckd = CKDLoss(cfg.alpha, cfg.beta, cfg.tau, cfg.map_tau, cfg.noise_scale, cfg.samd_norm, cfg.nld_form)

    def loss(net, x, y, g):
        with torch.no_grad():
            teacher_logits, teacher_features = teacher(model_input(x, "ann"), return_features=True)
        logits, features = net(model_input(x, "snn"), mode=mode, return_features=True)
        fc = teacher.head.fc.weight
        terms = ckd.terms(logits, features[-1], teacher_logits, teacher_features[-1], fc, y, cfg.time_steps, g)
        return StepLoss(terms, logits)

    return loss


def student_module(
    cfg: Config, student: nn.Module, teacher: nn.Module, sample: Tensor
) -> tuple[nn.Module, list[nn.Parameter]]:
    """The module the student stage trains (the SNN, or the ``HybridNet`` of blockwise) and its trainable params.

    ``sample``: a batch of training inputs, from which blockwise's phi_k take the teacher's feature statistics."""
    if cfg.method == "blockwise":
        torch.manual_seed(mix_seed(cfg.seed, 2))  # the alignment modules' initial weights
        hybrid = HybridNet(student, teacher, splits=cfg.split_list, align=cfg.align)
        if cfg.align_init == "teacher_stats":
            hybrid.match_teacher_statistics(model_input(sample, "snn"))
        return hybrid, list(hybrid.student_parameters())
    teacher.requires_grad_(False)
    teacher.eval()
    return student, list(student.parameters())


def term_grad_norms(terms: dict[str, Tensor], params: list[nn.Parameter]) -> dict[str, float]:
    """``{name: |d term / d params|}`` (global L2 norm over ``params``), keeping the graph for the step's backward."""
    norms = {}
    for name, term in terms.items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        grads = [g for g in grads if g is not None]
        norms[name] = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
    return norms


def balanced_weights(norms: dict[str, float], reference: str, cap: float = 1.0) -> dict[str, float]:
    """Each term's weight ``min(cap, |grad reference| / |grad term|)``: with ``cap`` 1 no term's gradient exceeds the
    reference's; with ``cap`` inf every term's gradient is as large as the reference's. A reference with no gradient (a
    student that does not spike yet) leaves every weight at 1, so that the other terms can still move it."""
    reference_norm = norms[reference]
    if not reference_norm > 0:
        return dict.fromkeys(norms, 1.0)
    return {name: min(cap, reference_norm / norm) if norm > 0 else 1.0 for name, norm in norms.items()}


# ----------------------------------------------------------------------------------------------- one stage


def fit(
    ctx: Context,
    stage: str,
    module: nn.Module,
    params: list[nn.Parameter],
    loss_fn: Callable,
    epochs: int,
    evaluate: Callable[[str], float],
    resume: dict | None,
    keep_best: Callable[[dict], None] | None = None,
    probe_params: list[nn.Parameter] | None = None,
    balance_reference: str | None = None,
    balance_cap: float = 1.0,
) -> dict:
    """Trains ``module`` for ``epochs`` (at most ``max_steps`` steps), checkpointing into the run folder.

    ``loss_fn`` gives named terms; the step minimises their weighted sum (weights 1, unless ``balance_reference``).
    Every ``balance_every`` steps (from step 0) each term's gradient norm on ``probe_params`` (default ``params``) is
    measured on the first micro-batch and logged; with ``balance_reference`` (a term's name) the weights are then
    reset to ``balanced_weights`` (at most ``balance_cap``). ``evaluate(split)``: the trained model's accuracy on
    "val" or "test". ``resume``: a checkpoint of this stage to continue from. ``keep_best(record)``: called (on rank
    0) at the end of each epoch whose validation accuracy beats every earlier one. Returns the stage's summary.
    """
    cfg, stage_id = ctx.cfg, STAGES.index(stage)
    per_epoch = steps_per_epoch(len(ctx.train), cfg.batch_size)
    total = epochs * per_epoch if not cfg.max_steps else min(epochs * per_epoch, cfg.max_steps)
    optimizer, scheduler = make_optimizer(cfg, params, total)
    grad_divisor = cfg.time_steps if cfg.rate_grad_div_t and cfg.train_mode == "rate" and stage == "student" else 1
    step, elapsed, history, tally, weights = 0, 0.0, [], EpochTally(), {}
    probe_params = params if probe_params is None else probe_params
    if resume is not None:
        module.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_base_lr(optimizer, scheduler, cfg.lr)  # --resume may lower it
        set_rng_state(resume["rng"])
        step, elapsed, history = resume["step"], resume["elapsed"], resume["history"]
        tally = EpochTally(**resume.get("tally", {}))
        ctx.last_checkpoint = f"{ctx.run_dir / 'checkpoint.pt'} ({stage} stage, step {step})"
        weights = resume.get("term_weights", {})
    net = module
    if ctx.world_size > 1:
        net = DistributedDataParallel(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    def checkpoint(done: bool = False) -> None:
        if ctx.is_main:
            state = dict(
                stage=stage,
                done=done,
                step=step,
                elapsed=elapsed,
                history=history,
                term_weights=weights,
                tally=asdict(tally),
                threads=torch.get_num_threads(),
                model=module.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                rng=rng_state(),
                config=cfg.to_dict(),
            )
            path = ctx.run_dir / "checkpoint.pt"
            try:
                save_checkpoint(path, state)
            except NonFiniteCheckpointError as error:
                bar.close()
                raise NonFiniteLossError(f"{stage} stage, step {step}: {error}. {last_good(ctx)}") from error
            ctx.last_checkpoint = f"{path} ({stage} stage, step {step})"
        ctx.barrier()

    show = {"on": True, "off": False, "auto": sys.stderr.isatty()}[cfg.progress] and ctx.is_main
    bar = tqdm(total=total, initial=step, desc=stage, disable=not show, dynamic_ncols=True, leave=False)
    order_epoch, order, stream = -1, None, None
    sample_augment = make_sample_augment(cfg, ctx.train)
    standard_augment = "standard" in parse_augment(cfg.augment)
    module.train()
    started = time.perf_counter() - elapsed
    session_start = (step, elapsed)  # for the ETA: the pace of this process, not of an earlier one
    while step < total:
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(len(ctx.train), epoch, mix_seed(cfg.seed, stage_id))
            stream = epoch_stream(ctx, order, range(in_epoch, per_epoch), (cfg.seed, stage_id, epoch), sample_augment)
        accum = cfg.grad_accum
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        step_parts: dict[str, float] = {}
        term_sums: dict[str, Tensor] = {}
        probe = cfg.balance_every > 0 and step % cfg.balance_every == 0
        for i in range(accum):
            micro = ctx.rank * accum + i
            generator = torch.Generator().manual_seed(mix_seed(cfg.seed, stage_id, step, micro))
            x, y = next(stream)
            if standard_augment:
                x = random_crop_flip(x, ctx.train.crop_padding, ctx.train.flip, generator)
            last = i == accum - 1
            sync = nullcontext() if last or net is module else net.no_sync()
            with sync, torch.autocast(ctx.device.type, torch.bfloat16, enabled=ctx.autocast):
                out = loss_fn(net, x, y, generator)
            if probe and i == 0:
                norms = term_grad_norms(out.terms, probe_params)
                if ctx.world_size > 1:  # rank 0's (the step's first micro-batch, as in one process with
                    # --grad-accum): every rank weighs the terms alike, as the checkpoint (rank 0's) does
                    shared = torch.tensor(list(norms.values()), dtype=torch.float64, device=ctx.device)
                    dist.broadcast(shared, src=0)
                    norms = dict(zip(norms, shared.tolist(), strict=True))
                if balance_reference is not None:
                    weights = balanced_weights(norms, balance_reference, balance_cap)
                record = dict(stage=stage, step=step, term_grad_norm=norms, term_weight=weights)
                ctx.log({**record, "time": round(time.perf_counter() - started, 3)})
            weighted = {name: weights.get(name, 1.0) * term for name, term in out.terms.items()}
            loss = sum(weighted.values())
            (loss / (accum * grad_divisor)).backward()
            loss_sum += loss.detach().double()
            tally.count(out.logits, y)
            for name, term in out.terms.items():  # this rank's micro-batches
                term_sums[name] = term_sums.get(name, 0.0) + term.detach().double() / accum
                if out.log_terms:  # each term's weighted share: the shares sum to the loss
                    part = f"loss_{name}"
                    step_parts[part] = step_parts.get(part, 0.0) + float(weighted[name].detach()) / accum
        stop_on_any_rank = False
        if ctx.world_size > 1:  # with the loss, whether a rank got a signal: all ranks stop at the same step
            stop_flag = torch.tensor(float(ctx.stop.requested), dtype=torch.float64, device=ctx.device)
            reduced = torch.stack([loss_sum, stop_flag])
            dist.all_reduce(reduced)
            loss_sum, stop_on_any_rank = reduced[0], bool(reduced[1] > 0)
        loss_value = float(loss_sum) / (accum * ctx.world_size)
        if not math.isfinite(loss_value):
            bar.close()
            raise NonFiniteLossError(
                f"{stage} stage: the loss is {loss_value} at step {step + 1} (epoch {epoch + 1}); stopped before "
                f"applying it. {last_good(ctx)}"
            )
        if cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            if not math.isfinite(grad_norm):
                bar.close()
                raise NonFiniteLossError(
                    f"{stage} stage: the gradient's norm is {grad_norm} at step {step + 1} (epoch {epoch + 1}); "
                    f"stopped before applying it. {last_good(ctx)}"
                )
        else:
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        step += 1
        elapsed = time.perf_counter() - started
        tally.add_step(loss_value, step_parts)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        if step % cfg.log_every == 0 or step == total:
            record = dict(stage=stage, step=step, epoch=epoch + 1, loss=loss_value, lr=lr, grad_norm=grad_norm)
            terms_logged = {name: float(value) for name, value in term_sums.items()}
            ctx.log({**record, **step_parts, "terms": terms_logged, "time": round(elapsed, 3)})
        end_of_epoch = step % per_epoch == 0 or step == total
        if end_of_epoch:
            record = dict(epoch=epoch + 1, step=step, device=ctx.device.type)  # a resumed run may change device
            record.update(tally.summary(ctx.world_size, ctx.device))
            if ctx.val is not None:
                record["val_acc"] = evaluate("val")
            record["test_acc"] = evaluate("test")
            tally = EpochTally()
            history.append(record)
            ctx.log(dict(stage=stage, **record, time=round(elapsed, 3)))
            pace = (elapsed - session_start[1]) / max(step - session_start[0], 1)
            ctx.say(epoch_line(stage, record, math.ceil(total / per_epoch), total, elapsed, pace * (total - step)))
            if keep_best is not None and ctx.is_main and is_best(history):
                keep_best(record)
        stop_requested = stop_on_any_rank if ctx.world_size > 1 else ctx.stop.requested
        if end_of_epoch or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stop_requested:
            checkpoint(done=step == total)
        if stop_requested:
            bar.close()
            signum = ctx.stop.signum or signal.SIGTERM  # a rank that did not see the signal stops with the others
            raise Interrupted(
                f"stopped by {signal.Signals(signum).name} after {stage} step {step} of {total}; checkpoint written: "
                f"{ctx.last_checkpoint}. Continue with: python -m distill.run --resume --out {ctx.run_dir}",
                signum,
            )
    bar.close()
    if resume is None and total == 0:
        checkpoint(done=True)
    return dict(steps=step, time_s=elapsed, history=history)


@dataclass
class EpochTally:
    """Sums over the steps of the epoch in progress: the loss, the train accuracy of the trained model's logits on
    the (augmented) training batches, and the loss's logged parts. Saved in checkpoints, so that an epoch resumed
    mid-way reports the same figures."""

    steps: int = 0
    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    parts: dict[str, float] = field(default_factory=dict)

    def count(self, logits: Tensor, y: Tensor) -> None:
        self.correct += int((logits.detach().argmax(-1) == y).sum())
        self.seen += len(y)

    def add_step(self, loss: float, parts: dict[str, float]) -> None:
        self.steps += 1
        self.loss += loss
        for name, value in parts.items():
            self.parts[name] = self.parts.get(name, 0.0) + value

    def summary(self, world_size: int, device: torch.device) -> dict[str, float]:
        """train_loss and train_acc (over every rank's samples), and the mean of each part over the epoch's steps."""
        counts = torch.tensor([self.correct, self.seen], dtype=torch.float64, device=device)
        if world_size > 1:
            dist.all_reduce(counts)
        steps = max(self.steps, 1)
        means = {name: value / steps for name, value in self.parts.items()}
        return dict(train_loss=self.loss / steps, train_acc=float(counts[0] / counts[1].clamp_min(1)), **means)


def epoch_stream(
    ctx: Context, order: Tensor, steps: range, seed_parts: tuple[int, ...], augment: SampleAugment
) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's micro-batches (x, y) of ``steps`` of the epoch whose sample order is ``order``, one after the other,
    on the device; per-sample augmentation seeded by ``seed_parts`` and the sample's index."""
    cfg = ctx.cfg
    index_batches = [
        index
        for step in steps
        for index in micro_batches(order, step, cfg.batch_size, ctx.rank, ctx.world_size, cfg.grad_accum)
    ]
    return batches(ctx.train, index_batches, ctx.device, cfg.workers, augment, seed_parts)


def make_sample_augment(cfg: Config, data: Dataset) -> SampleAugment:
    """The per-sample augmentations of ``--augment`` for ``data`` (a SetupError where they do not apply)."""
    events = data.time_steps is not None
    try:
        return SampleAugment(parse_augment(cfg.augment), cfg.dataset, data.sample_shape[-1], events)
    except ValueError as error:
        raise SetupError(f"--{error}") from error


def is_best(history: list[dict]) -> bool:
    """Whether the last epoch's validation accuracy beats every earlier epoch's (ties keep the earlier one)."""
    scores = [h["val_acc"] for h in history if "val_acc" in h]
    return "val_acc" in history[-1] and all(history[-1]["val_acc"] > score for score in scores[:-1])


def epoch_line(stage: str, record: dict, epochs: int, total: int, elapsed: float, eta: float) -> str:
    """One line a person reads: ``teacher epoch 2/15 step 56/420 | loss 0.412 | train 87.1 % | val .. | ...``."""
    splits = [name for name in ("train", "val", "test") if f"{name}_acc" in record]
    accuracies = [f"{name} {100 * record[f'{name}_acc']:.2f} %" for name in splits]
    return " | ".join(
        [
            f"{stage} epoch {record['epoch']}/{epochs} step {record['step']}/{total}",
            f"loss {record['train_loss']:.4f}",
            *accuracies,
            f"{elapsed:.1f} s",
            f"ETA {eta:.0f} s",
        ]
    )


# ----------------------------------------------------------------------------------------------- the run


def last_good(ctx: Context) -> str:
    """Where a run stopped on non-finite values can resume from."""
    if not ctx.last_checkpoint:
        return "No checkpoint was written yet; try a lower --lr, --grad-clip or --amp off."
    return (
        f"The last checkpoint, which is finite, is {ctx.last_checkpoint}: resume from it with a lower --lr "
        f"(python -m distill.run --resume --out {ctx.run_dir} --lr ...), or try --grad-clip or --amp off."
    )


def _truncate_metrics(ctx: Context, stage: str, step: int) -> None:
    """On resume, drop the metric lines written after the checkpoint (they will be written again)."""
    path = ctx.run_dir / "metrics.jsonl"
    if not ctx.is_main or not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        later = STAGES.index(record.get("stage", stage)) > STAGES.index(stage)
        # a gradient-norm probe is logged before its step: the one at the checkpoint's step runs again too
        first = 0 if "term_grad_norm" in record else 1
        if not later and not (record.get("stage") == stage and record.get("step", 0) >= step + first):
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))


def _peak_memory_mb(device: torch.device) -> float:
    """GPU: the peak of allocated tensors. CPU: the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_resident_bytes() / 2**20


def load_teacher(path: str | Path, teacher: nn.Module, flag: str = "--teacher") -> LoadedWeights:
    """Loads the weights in `path` into `teacher`: a SpikeKD teacher checkpoint, or a state_dict file in SpikeKD's or
    torchvision's ResNet layout (`models.weights`), read with torch.load(weights_only=True). `flag` "--teacher" (the
    teacher is used as it is) needs its head to fit the data set; "--teacher-weights" (it is fine-tuned) leaves a
    fresh head where the class counts differ."""
    try:
        stored = read_weights_file(path)
        spikekd_checkpoint = isinstance(stored, Mapping) and str(stored.get("format", "")).startswith("spikekd-")
        if spikekd_checkpoint:
            stored = load_checkpoint(path)  # SpikeKD's own: its format and checksum verified
        stage = stored.get("stage") if spikekd_checkpoint else "teacher"
        if stage != "teacher":
            raise ValueError(f"holds a {stage!r} stage, not a teacher")
        loaded = load_weights(teacher, stored)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        raise CheckpointError(f"{flag} {path}: {error}") from error
    if loaded.head_replaced and flag == "--teacher":
        raise CheckpointError(
            f"--teacher {path}: its head has {loaded.source_classes} classes, the data set "
            f"{teacher.head.fc.out_features}; pass it as --teacher-weights to fine-tune it with a new head"
        )
    return loaded


def loaded_summary(loaded: LoadedWeights) -> str:
    head = f"head of {loaded.source_classes} classes replaced" if loaded.head_replaced else "head kept"
    return f"{loaded.layout} layout, {head}"


def resumed_config(cfg: Config) -> tuple[Config, dict]:
    """The checkpoint to resume from, and the run's saved options. They win over the given ones, except the options
    in ``RUN_CONTROL`` and ``CHANGEABLE_ON_RESUME`` (``python -m distill.run --resume`` starts from the saved options,
    so ``--resume --out DIR`` is enough to continue a run exactly). A changed lr or thread count is said out loud."""
    path = cfg.run_dir / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"--resume: no checkpoint {path}; run without --resume to start this run")
    checkpoint = load_checkpoint(path)
    saved = {k: v for k, v in checkpoint["config"].items() if k not in RUN_CONTROL and k in cfg.to_dict()}
    if not saved.get("threads") and "threads" in checkpoint:
        saved["threads"] = checkpoint["threads"]  # the count --threads 0 picked when the run started
    if not cfg.threads and "threads" in saved:  # --threads 0: the threads it ran with, the same rounding and weights
        cfg = dataclasses.replace(cfg, threads=saved["threads"])
    changed = {k: v for k, v in saved.items() if k in CHANGEABLE_ON_RESUME and getattr(cfg, k) != v}
    ignored = sorted(k for k, v in saved.items() if k not in CHANGEABLE_ON_RESUME and getattr(cfg, k) != v)
    if int(os.environ.get("RANK", "0")) == 0:
        if ignored:
            print(
                f"--resume: continuing with the options saved in {path}; ignoring the given {ignored}", file=sys.stderr
            )
        for name, old in changed.items():
            new = getattr(cfg, name)
            print(
                f"--resume: {name} {new} instead of the run's {old} ({CHANGEABLE_ON_RESUME[name]}): the result will "
                "differ from a run that never stopped",
                file=sys.stderr,
            )
    kept = {k: v for k, v in saved.items() if k not in CHANGEABLE_ON_RESUME}
    return Config.from_dict({**cfg.to_dict(), **kept}), checkpoint


def evaluator(ctx: Context, model: nn.Module) -> Callable[[str], float]:
    """``evaluate(split)``: the accuracy of ``model`` on "val" (held out of the training samples) or "test", each
    rank on its share."""
    shards = {"test": (ctx.test, eval_shard(len(ctx.test), ctx.rank, ctx.world_size))}
    if ctx.val is not None:
        shards["val"] = (ctx.val, eval_shard(len(ctx.val), ctx.rank, ctx.world_size))

    def evaluate(split: str) -> float:
        data, index = shards[split]
        return accuracy(model, data, ctx.device, ctx.cfg.eval_batch_size, index, ctx.autocast, ctx.cfg.workers)

    return evaluate


def student_file(ctx: Context, student: nn.Module, summary: dict) -> dict:
    """What ``student.pt`` and ``student_best.pt`` hold: the SNN's weights, the arguments of ``create_model`` that
    rebuild it and its input normalisation (what ``models.load_student`` reads), the options and a summary."""
    return dict(
        stage="student",
        model=student.state_dict(),
        model_args=model_args(ctx.cfg, "snn", ctx.train),
        input=dict(mean=list(ctx.train.mean), std=list(ctx.train.std)),
        config=ctx.cfg.to_dict(),
        summary=summary,
    )


def best_epoch(history: list[dict]) -> dict:
    """The record of the epoch with the best validation accuracy (the first of equals), or {} without validation."""
    scored = [h for h in history if "val_acc" in h]
    return max(scored, key=lambda h: h["val_acc"]) if scored else {}


def train(cfg: Config) -> dict:
    """Runs the whole job described by ``cfg``; returns the summary also written to ``results.json``.

    Every check (options, run folder, data, architecture, teacher checkpoint) comes before the run folder changes;
    then it is claimed and locked for the rest of the run."""
    check_run_folder(cfg.run_dir, cfg.resume, cfg.overwrite)
    resume = None
    if cfg.resume:
        cfg, resume = resumed_config(cfg)
    ctx = setup(cfg)
    torch.manual_seed(cfg.seed)
    teacher = build_model(cfg, "ann", ctx.train).to(ctx.device)
    if cfg.teacher:
        load_teacher(cfg.teacher, teacher)
    elif cfg.teacher_weights and not (resume is not None and resume["stage"] == "student"):
        loaded = load_teacher(cfg.teacher_weights, teacher, "--teacher-weights")
        if loaded.head_replaced and cfg.teacher_epochs == 0:
            raise SetupError(
                f"--teacher-weights {cfg.teacher_weights}: its head of {loaded.source_classes} classes was "
                f"replaced by a new one for {ctx.train.num_classes}, which --teacher-epochs 0 would leave "
                "untrained; give the teacher at least one epoch"
            )
        if ctx.is_main:
            print(f"teacher: starts from {cfg.teacher_weights} ({loaded_summary(loaded)})", file=sys.stderr)
    with claim_run_folder(ctx), ctx.stop:
        return _train(ctx, resume, teacher)


@contextmanager
def claim_run_folder(ctx: Context) -> Iterator[None]:
    """On rank 0: makes the run folder SpikeKD's, holds its lock, and clears what a fresh run replaces (never the
    teacher file it loads); on resume, removes only the temporary files of a killed write. Under --log tensorboard,
    opens the TensorBoard writer in the claimed folder and closes it when the run ends."""
    cfg = ctx.cfg
    if not ctx.is_main:
        ctx.barrier()
        yield
        return
    claim(ctx.run_dir)
    with RunLock(ctx.run_dir):
        check_run_folder(ctx.run_dir, cfg.resume, cfg.overwrite, lock_held=True)  # another run may have ended here
        if cfg.resume:
            removed = remove_temporary_files(ctx.run_dir)
        else:
            loaded = cfg.teacher or cfg.teacher_weights
            removed = clear_results(ctx.run_dir, keep=Path(loaded) if loaded else None)
        if removed:
            print(f"{ctx.run_dir}: removed {', '.join(removed)} (of an earlier run)", file=sys.stderr)
        if cfg.log == "tensorboard":
            ctx.scalars = tensorboard_writer(ctx.run_dir)
        ctx.barrier()
        try:
            yield
        finally:
            if ctx.scalars is not None:
                ctx.scalars.close()
                ctx.scalars = None


def _train(ctx: Context, resume: dict | None, teacher: nn.Module) -> dict:
    cfg, run_dir, device = ctx.cfg, ctx.run_dir, ctx.device
    if resume is not None:
        _truncate_metrics(ctx, resume["stage"], resume["step"])
    if ctx.is_main:
        (run_dir / "config.toml").write_text(cfg.to_toml())

    teacher_eval = evaluator(ctx, teacher)
    teacher_summary: dict = {}  # --teacher and --teacher-weights were loaded by train(), before the folder changed
    if not cfg.teacher and resume is not None and resume["stage"] == "student":
        load_teacher(run_dir / "teacher.pt", teacher)
        teacher_summary = load_checkpoint(run_dir / "teacher.pt").get("summary", {})
    elif not cfg.teacher:
        teacher_resume = resume if resume is not None and resume["stage"] == "teacher" else None
        params = list(teacher.parameters())
        teacher_summary = fit(
            ctx, "teacher", teacher, params, teacher_loss, cfg.teacher_epochs, teacher_eval, teacher_resume
        )
        if ctx.is_main:
            final = dict(stage="teacher", model=teacher.state_dict(), config=cfg.to_dict(), summary=teacher_summary)
            save_checkpoint(run_dir / "teacher.pt", final)
        ctx.barrier()
        resume = None
    teacher_acc = teacher_eval("test")

    student = build_model(cfg, "snn", ctx.train).to(device)
    if cfg.init == "teacher":
        student.load_state_dict(teacher.state_dict())
    sample, _ = ctx.train.batch(epoch_order(len(ctx.train), 0, mix_seed(cfg.seed, 3))[:STATISTICS_SAMPLES], device)
    module, params = student_module(cfg, student, teacher, sample)
    module.to(device)
    student_eval = evaluator(ctx, student)
    student_resume = resume if resume is not None and resume["stage"] == "student" else None
    balance = "student" if cfg.method == "blockwise" and cfg.branch_weights != "equal" else None

    def keep_best(record: dict) -> None:
        save_checkpoint(run_dir / "student_best.pt", student_file(ctx, student, dict(best=record)))

    student_summary = fit(
        ctx,
        "student",
        module,
        params,
        student_loss(cfg, teacher),
        cfg.epochs,
        student_eval,
        student_resume,
        keep_best,
        probe_params=list(student.parameters()),
        balance_reference=balance,
        balance_cap=math.inf if cfg.branch_weights == "match" else 1.0,
    )
    if ctx.is_main:
        save_checkpoint(run_dir / "student.pt", student_file(ctx, student, student_summary))
    student_acc = student_eval("test")

    results = dict(teacher_acc=teacher_acc, student_acc=student_acc, run_dir=str(run_dir))
    if ctx.is_main:
        index = torch.arange(min(len(ctx.test), PROFILE_SAMPLES))
        workers = cfg.workers
        ann = profile(teacher, ctx.test, device, index, workers=workers)
        snn = profile(student, ctx.test, device, index, workers=workers)
        results.update(
            firing_rate=snn.mean_firing_rate,
            firing_rates=snn.firing_rates,
            ann_macs=ann.macs,
            snn_macs=snn.macs,
            snn_sops=snn.sops,
            ann_energy_uj=ann.energy_uj,
            snn_energy_uj=snn.energy_uj,
            teacher_time_s=teacher_summary.get("time_s", 0.0),
            student_time_s=student_summary["time_s"],
            teacher_history=teacher_summary.get("history", []),
            student_history=student_summary["history"],
            student_best=best_epoch(student_summary["history"]),
            threads=torch.get_num_threads(),
            peak_memory_mb=_peak_memory_mb(device),
            device=str(device),
            world_size=ctx.world_size,
            config=cfg.to_dict(),
        )
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        from distill.report import write_report

        write_report(run_dir / "report.md", results)
    ctx.barrier()
    return results
