"""The trainer: a teacher stage (train the ANN, or load it), a student stage (distill the SNN), evaluation, report.

Each stage reads straight through: schedule, micro-batches (forward, backward), all-reduce (DDP), NaN check, clip,
step, log, checkpoint, evaluate. The sample order and every random draw (augmentation, NLD noise) are functions of
(seed, stage, step), and a checkpoint holds the step, the model, optimizer, scheduler and RNG states: a run resumed
from any checkpoint ends with the same weights, bit for bit, as one that never stopped (same device, same threads).

Run folder (``Config.run_dir``): ``checkpoint.pt`` (latest, of the stage in progress), ``teacher.pt`` and
``student.pt`` (final weights), ``metrics.jsonl`` (one JSON object a line), ``results.json``, ``report.md``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
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
from distill.datasets.sampling import epoch_order, eval_shard, micro_batches, mix_seed, steps_per_epoch
from distill.evaluate import accuracy, model_input, profile
from distill.losses import BlockwiseLoss, CKDLoss, KDLoss, cross_entropy
from distill.memory import available_memory_bytes, peak_resident_bytes
from distill.run_folder import RunLock, check_run_folder, claim, clear_results, remove_temporary_files
from distill.signals import Interrupted, StopSignals
from models import HybridNet, create_model

STAGES = ("teacher", "student")
PROFILE_SAMPLES = 512  # test samples used for firing rates and operation counts
STATISTICS_SAMPLES = 256  # training samples from which blockwise's phi_k take the teacher's feature statistics
RUN_CONTROL = ("resume", "overwrite", "out", "progress", "device", "log_every")  # may change when resuming
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
    stop: StopSignals = field(default_factory=StopSignals)  # SIGINT / SIGTERM received while training
    last_checkpoint: str = ""  # the last checkpoint written (all of them are finite), for the messages of a stop

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def autocast(self) -> bool:
        return self.cfg.amp == "bf16" or (self.cfg.amp == "auto" and self.device.type == "cuda")

    def log(self, record: dict) -> None:
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
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
    if train.time_steps is not None and train.time_steps != cfg.time_steps:
        raise DatasetError(
            f"time_steps={cfg.time_steps} but the {cfg.dataset} samples have {train.time_steps} frames; "
            f"pass --time-steps {train.time_steps}"
        )
    check_data_size(cfg, train, world_size)
    check_models(cfg, train)
    ctx = Context(cfg, device, rank, world_size, train, test, cfg.run_dir)
    check_memory(ctx)
    ctx.barrier()
    return ctx


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


def check_data_size(cfg: Config, train: Dataset, world_size: int) -> None:
    """The batch options against the training set (after ``--train-subset``) and the number of processes."""
    if cfg.batch_size > len(train):
        raise SetupError(
            f"--batch-size {cfg.batch_size} is larger than the {len(train)} training samples of {cfg.dataset}; "
            "pass a smaller --batch-size (or a larger --train-subset)"
        )
    if cfg.batch_size % (world_size * cfg.grad_accum):
        raise SetupError(
            f"--batch-size {cfg.batch_size} must be a multiple of the {world_size} processes x --grad-accum "
            f"{cfg.grad_accum}"
        )


def check_models(cfg: Config, data: Dataset) -> None:
    """Builds the ANN, the SNN and (blockwise) the hybrid of ``cfg`` and runs the ANN on one blank image of the data
    set's size, so that options the architecture cannot take (images too small for its downsampling, splits past its
    stages, an alignment that cannot map its channels) stop the run here, before any training."""
    height, width = data.sample_shape[-2:]
    net = build_model(cfg, "ann", data).eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, data.in_channels, height, width))
    except RuntimeError as error:
        raise SetupError(
            f"--arch {cfg.arch} cannot take the {height}x{width} images of {cfg.dataset} ({error}); use an "
            "architecture for small images (tiny_resnet, tiny_vgg) or, for imagenet and cifar10_dvs, a larger "
            "--image-size"
        ) from error
    try:
        student = build_model(cfg, "snn", data)
        if cfg.method == "blockwise":
            HybridNet(student, net, splits=cfg.split_list, align=cfg.align)
    except ValueError as error:
        raise SetupError(f"--arch {cfg.arch}: {error}") from error


def check_memory(ctx: Context) -> None:
    """Estimates each stage's training memory and refuses options that need more than the device has free, before
    any training: the model's weights, gradients and momentum, plus the tensors a forward pass keeps for backward,
    measured on 2 samples and scaled to the micro-batch (what they keep grows in proportion to it)."""
    cfg, device = ctx.cfg, ctx.device
    micro = cfg.batch_size // (ctx.world_size * cfg.grad_accum)
    available = available_memory_bytes(device)
    if available is None:
        return
    teacher = build_model(cfg, "ann", ctx.train).to(device)
    stages = {"student": build_model(cfg, "snn", ctx.train).to(device)}
    if cfg.method == "blockwise":
        stages["student"] = HybridNet(stages["student"], teacher, cfg.split_list, cfg.align)
    if not cfg.teacher:
        stages["teacher"] = build_model(cfg, "ann", ctx.train).to(device)
    for stage, module in stages.items():
        state = 3 * sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
        per_sample = saved_for_backward_bytes(ctx, module, samples=2) / 2
        needed = state + per_sample * micro
        if needed > available:
            gib = 2**30
            raise SetupError(
                f"the {stage} stage's training step at --time-steps {cfg.time_steps} with micro-batches of {micro} "
                f"samples (--batch-size {cfg.batch_size} / {ctx.world_size} processes / --grad-accum "
                f"{cfg.grad_accum}) needs about {needed / gib:.1f} GiB ({per_sample / 2**20:.1f} MiB a sample), but "
                f"{device} has {available / gib:.1f} GiB free; raise --grad-accum, or lower --batch-size or "
                "--time-steps"
            )


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


def build_model(cfg: Config, kind: str, data: Dataset) -> nn.Module:
    kwargs = {}
    if kind == "snn":
        kwargs = dict(tau=cfg.neuron_tau, v_threshold=cfg.v_threshold, surrogate=cfg.surrogate)
        kwargs.update(v_reset=0.0 if cfg.hard_reset else None, detach_reset=cfg.detach_reset)
    if cfg.dataset == "imagenet" and "resnet" in cfg.arch:
        kwargs["stem"] = "imagenet"
    return create_model(cfg.arch, kind, data.num_classes, data.in_channels, cfg.time_steps, **kwargs)


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


def teacher_loss(net: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
    """The teacher stage's loss: cross-entropy of the ANN, as its one term ``{"ce"}``."""
    return {"ce": cross_entropy(net(model_input(x, "ann")), y)}


def student_loss(cfg: Config, teacher: nn.Module) -> Callable:
    """The student stage's loss ``(net, x, y, generator) -> {term name: scalar}`` for ``cfg.method`` (the loss is the
    weighted sum of the terms); ``net`` is what ``student_module`` returns (possibly DDP-wrapped)."""
    mode = cfg.train_mode
    if cfg.method == "direct":
        return lambda net, x, y, g: {"ce": cross_entropy(net(model_input(x, "snn"), mode=mode), y)}
    if cfg.method == "blockwise":
        blockwise = BlockwiseLoss(cfg.alpha, cfg.tau)
        return lambda net, x, y, g: blockwise.terms(net(model_input(x, "snn"), mode=mode), y)
    if cfg.method == "kd":
        kd = KDLoss(cfg.alpha, cfg.tau)

        def loss(net, x, y, g):
            with torch.no_grad():
                teacher_logits = teacher(model_input(x, "ann"))
            return kd.terms(net(model_input(x, "snn"), mode=mode), teacher_logits, y)

        return loss
    ckd = CKDLoss(cfg.alpha, cfg.beta, cfg.tau, cfg.map_tau, cfg.noise_scale, cfg.samd_norm, cfg.nld_form)

    def loss(net, x, y, g):
        with torch.no_grad():
            teacher_logits, teacher_features = teacher(model_input(x, "ann"), return_features=True)
        logits, features = net(model_input(x, "snn"), mode=mode, return_features=True)
        fc = teacher.head.fc.weight
        return ckd.terms(logits, features[-1], teacher_logits, teacher_features[-1], fc, y, cfg.time_steps, g)

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


def balanced_weights(norms: dict[str, float], reference: str) -> dict[str, float]:
    """Each term's weight ``min(1, |grad reference| / |grad term|)``: no term's gradient exceeds the reference's. A
    reference with no gradient (a student that does not spike yet) leaves every weight at 1, so that the other terms
    can still move it."""
    reference_norm = norms[reference]
    if not reference_norm > 0:
        return dict.fromkeys(norms, 1.0)
    return {name: min(1.0, reference_norm / norm) if norm > 0 else 1.0 for name, norm in norms.items()}


# ----------------------------------------------------------------------------------------------- one stage


def fit(
    ctx: Context,
    stage: str,
    module: nn.Module,
    params: list[nn.Parameter],
    loss_fn: Callable,
    epochs: int,
    evaluate: Callable[[], float],
    resume: dict | None,
    probe_params: list[nn.Parameter] | None = None,
    balance_reference: str | None = None,
) -> dict:
    """Trains ``module`` for ``epochs`` (at most ``max_steps`` steps), checkpointing into the run folder.

    ``loss_fn`` gives named terms; the step minimises their weighted sum (weights 1, unless ``balance_reference``).
    Every ``balance_every`` steps (from step 0) each term's gradient norm on ``probe_params`` (default ``params``) is
    measured on the first micro-batch and logged; with ``balance_reference`` (a term's name) the weights are then
    reset to ``balanced_weights``. ``resume``: a checkpoint of this stage to continue from. Returns the summary.
    """
    cfg, stage_id = ctx.cfg, STAGES.index(stage)
    per_epoch = steps_per_epoch(len(ctx.train), cfg.batch_size)
    total = epochs * per_epoch if not cfg.max_steps else min(epochs * per_epoch, cfg.max_steps)
    optimizer, scheduler = make_optimizer(cfg, params, total)
    grad_divisor = cfg.time_steps if cfg.rate_grad_div_t and cfg.train_mode == "rate" and stage == "student" else 1
    step, elapsed, history, weights = 0, 0.0, [], {}
    probe_params = params if probe_params is None else probe_params
    if resume is not None:
        module.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_base_lr(optimizer, scheduler, cfg.lr)  # --resume may lower it
        set_rng_state(resume["rng"])
        step, elapsed, history = resume["step"], resume["elapsed"], resume["history"]
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
    order_epoch, order = -1, None
    module.train()
    started = time.perf_counter() - elapsed
    while step < total:
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(len(ctx.train), epoch, mix_seed(cfg.seed, stage_id))
        parts = micro_batches(order, in_epoch, cfg.batch_size, ctx.rank, ctx.world_size, cfg.grad_accum)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        term_sums: dict[str, Tensor] = {}
        probe = cfg.balance_every > 0 and step % cfg.balance_every == 0
        for i, index in enumerate(parts):
            micro = ctx.rank * cfg.grad_accum + i
            generator = torch.Generator().manual_seed(mix_seed(cfg.seed, stage_id, step, micro))
            x, y = ctx.train.batch(index, ctx.device)
            if cfg.augment:
                x = random_crop_flip(x, ctx.train.crop_padding, ctx.train.flip, generator)
            last = i == len(parts) - 1
            sync = nullcontext() if last or net is module else net.no_sync()
            with sync, torch.autocast(ctx.device.type, torch.bfloat16, enabled=ctx.autocast):
                terms = loss_fn(net, x, y, generator)
            if probe and i == 0:
                norms = term_grad_norms(terms, probe_params)
                if balance_reference is not None:
                    weights = balanced_weights(norms, balance_reference)
                record = dict(stage=stage, step=step, term_grad_norm=norms, term_weight=weights)
                ctx.log({**record, "time": round(time.perf_counter() - started, 3)})
            loss = sum(weights.get(name, 1.0) * term for name, term in terms.items())
            (loss / (len(parts) * grad_divisor)).backward()
            loss_sum += loss.detach().double()
            for name, term in terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + term.detach().double() / len(parts)
        stop_on_any_rank = False
        if ctx.world_size > 1:  # with the loss, whether a rank got a signal: all ranks stop at the same step
            stop_flag = torch.tensor(float(ctx.stop.requested), dtype=torch.float64, device=ctx.device)
            reduced = torch.stack([loss_sum, stop_flag])
            dist.all_reduce(reduced)
            loss_sum, stop_on_any_rank = reduced[0], bool(reduced[1] > 0)
        loss_value = float(loss_sum) / (len(parts) * ctx.world_size)
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
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        if step % cfg.log_every == 0 or step == total:
            record = dict(stage=stage, step=step, epoch=epoch + 1, loss=loss_value, lr=lr, grad_norm=grad_norm)
            terms_logged = {name: float(value) for name, value in term_sums.items()}
            ctx.log({**record, "terms": terms_logged, "time": round(elapsed, 3)})
        end_of_epoch = step % per_epoch == 0 or step == total
        if end_of_epoch:
            acc = evaluate()
            history.append(dict(epoch=epoch + 1, step=step, test_acc=acc))
            ctx.log(dict(stage=stage, step=step, epoch=epoch + 1, test_acc=acc, time=round(elapsed, 3)))
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
        if not later and not (record.get("stage") == stage and record.get("step", 0) > step):
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))


def _peak_memory_mb(device: torch.device) -> float:
    """GPU: the peak of allocated tensors. CPU: the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_resident_bytes() / 2**20


def load_teacher(path: str | Path, teacher: nn.Module) -> None:
    checkpoint = load_checkpoint(path)
    if checkpoint.get("stage") != "teacher":
        raise CheckpointError(f"--teacher {path}: holds a {checkpoint.get('stage')!r} stage, not a teacher")
    try:
        teacher.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        arch = checkpoint.get("config", {}).get("arch")
        raise CheckpointError(f"--teacher {path}: its weights ({arch}) do not fit this --arch: {error}") from error


def resumed_config(cfg: Config) -> tuple[Config, dict]:
    """The checkpoint to resume from, and the run's saved options. They win over the given ones, except the options
    in ``RUN_CONTROL`` and ``CHANGEABLE_ON_RESUME`` (``python -m distill.run --resume`` starts from the saved options,
    so ``--resume --out DIR`` is enough to continue a run exactly). A changed lr or thread count is said out loud."""
    path = cfg.run_dir / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"--resume: no checkpoint {path}; run without --resume to start this run")
    checkpoint = load_checkpoint(path)
    saved = {k: v for k, v in checkpoint["config"].items() if k not in RUN_CONTROL and k in cfg.to_dict()}
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
    with claim_run_folder(ctx), ctx.stop:
        return _train(ctx, resume, teacher)


@contextmanager
def claim_run_folder(ctx: Context) -> Iterator[None]:
    """On rank 0: makes the run folder SpikeKD's, holds its lock, and clears what a fresh run replaces (never the
    teacher checkpoint it loads); on resume, removes only the temporary files of a killed write."""
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
            removed = clear_results(ctx.run_dir, keep=Path(cfg.teacher) if cfg.teacher else None)
        if removed:
            print(f"{ctx.run_dir}: removed {', '.join(removed)} (of an earlier run)", file=sys.stderr)
        ctx.barrier()
        yield


def _train(ctx: Context, resume: dict | None, teacher: nn.Module) -> dict:
    cfg, run_dir, device = ctx.cfg, ctx.run_dir, ctx.device
    if resume is not None:
        _truncate_metrics(ctx, resume["stage"], resume["step"])
    if ctx.is_main:
        (run_dir / "config.toml").write_text(cfg.to_toml())
    eval_index = eval_shard(len(ctx.test), ctx.rank, ctx.world_size)

    teacher_eval = lambda: accuracy(teacher, ctx.test, device, cfg.eval_batch_size, eval_index, ctx.autocast)
    teacher_summary: dict = {}  # a --teacher checkpoint was loaded by train(), before the run folder changed
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
    teacher_acc = teacher_eval()

    student = build_model(cfg, "snn", ctx.train).to(device)
    if cfg.init == "teacher":
        student.load_state_dict(teacher.state_dict())
    sample, _ = ctx.train.batch(epoch_order(len(ctx.train), 0, mix_seed(cfg.seed, 3))[:STATISTICS_SAMPLES], device)
    module, params = student_module(cfg, student, teacher, sample)
    module.to(device)
    student_eval = lambda: accuracy(student, ctx.test, device, cfg.eval_batch_size, eval_index, ctx.autocast)
    student_resume = resume if resume is not None and resume["stage"] == "student" else None
    balance = "student" if cfg.method == "blockwise" and cfg.branch_weights == "grad_norm" else None
    student_summary = fit(
        ctx,
        "student",
        module,
        params,
        student_loss(cfg, teacher),
        cfg.epochs,
        student_eval,
        student_resume,
        probe_params=list(student.parameters()),
        balance_reference=balance,
    )
    if ctx.is_main:
        final = dict(stage="student", model=student.state_dict(), config=cfg.to_dict(), summary=student_summary)
        save_checkpoint(run_dir / "student.pt", final)
    student_acc = student_eval()

    results = dict(teacher_acc=teacher_acc, student_acc=student_acc, run_dir=str(run_dir))
    if ctx.is_main:
        index = torch.arange(min(len(ctx.test), PROFILE_SAMPLES))
        ann, snn = profile(teacher, ctx.test, device, index), profile(student, ctx.test, device, index)
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
