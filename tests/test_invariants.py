"""Invariants that a one-line slip would break without changing any shape: each test checks a value against an
independent computation (not the code under test), with inputs chosen so that the near misses differ: spikes that
change over time, tau != 1, a teacher whose classes disagree, a schedule long enough to be off by one, offsets that
differ per axis, std != 1, sizes where one more or one fewer shows."""

import json
import math
import random
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import distill.checkpoint
import distill.trainer
from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import Config, parse_config
from distill.datasets import load_dataset, random_crop_flip
from distill.datasets.base import Dataset
from distill.datasets.sampling import epoch_order, micro_batches
from distill.evaluate import E_AC_PJ, E_MAC_PJ, Profile, accuracy, model_input, profile
from distill.losses import BlockwiseLoss, SAMDLoss, blockwise_loss, kd_loss
from distill.run import main
from distill.trainer import train
from models import LIF, FiringRates, create_model
from tests.test_faults_stop import interrupt_at

QUICK = ["--train-subset", "256", "--test-subset", "64", "--batch-size", "32", "--threads", "1", "--progress", "off"]
QUICK += ["--val-fraction", "0"]  # train on all 256: 8 steps an epoch

# ----------------------------------------------------------------------------------------------- models


def late_spikes_input(T=4, B=2, N=3) -> torch.Tensor:
    """No input for the first half of the steps, a strong one after: with tau=2, th=1 the LIF is silent, then fires
    every step (H = 5, then 4/2 + 5, ...), so its firing rate is exactly 1/2 and differs in every half."""
    x = torch.zeros(T, B, N)
    x[T // 2 :] = 5.0
    return x


@pytest.mark.parametrize("mode", ["bptt", "rate", "eval"])
def test_firing_rates_count_every_time_step(mode):
    net = nn.Sequential(LIF())
    with FiringRates(net) as rates:
        out = net[0](late_spikes_input(), mode=mode)
    spikes = out.spikes if hasattr(out, "spikes") else out
    assert spikes.sum().item() == 12  # 2 of 4 steps x 2 x 3 neurons
    assert rates.rates() == {"0": 0.5}


def test_firing_rates_pool_every_call():
    net = nn.Sequential(LIF())
    with FiringRates(net) as rates:
        net(late_spikes_input())  # rate 1/2 over 24 neuron-steps
        net(torch.zeros(4, 1, 3))  # rate 0 over 12
    assert rates.rates() == {"0": pytest.approx(12 / 36)}


def test_a_hybrid_tail_runs_the_snn_for_all_of_its_time_steps():
    snn = create_model("tiny_resnet", "snn", num_classes=10, in_channels=1, T=5)
    steps = []
    first_input = lambda module, args: steps.append(getattr(args[0], "spikes", args[0]).shape[0])
    snn.stages[1].register_forward_pre_hook(first_input)
    feature = torch.rand(2, snn.stage_channels[0], 4, 4)
    for mode in ("bptt", "rate", "eval"):
        snn.forward_tail(feature, 1, mode=mode)
    assert steps == [5, 5, 5]


# ----------------------------------------------------------------------------------------------- losses


def reference_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Batch mean of KL(softmax(z_T / tau) || softmax(z_S / tau)), written out as sum p (log p - log q)."""
    p = torch.softmax(teacher_logits.double() / tau, -1)
    q = torch.softmax(student_logits.double() / tau, -1)
    return (p * (p.log() - q.log())).sum(-1).mean()


logits = st.lists(st.floats(-6, 6), min_size=6, max_size=6).map(lambda v: torch.tensor(v).view(2, 3))


@settings(max_examples=40, deadline=None)
@given(student=logits, hybrid=logits, teacher=logits, tau=st.floats(1.5, 8), alpha=st.floats(0.1, 3))
def test_blockwise_and_kd_losses_scale_the_kl_by_tau_squared(student, hybrid, teacher, tau, alpha):
    y = torch.tensor([0, 2])
    expected = sum(
        F.cross_entropy(z.double(), y) + alpha * tau**2 * reference_kl(teacher, z, tau) for z in (student, hybrid)
    )
    got = blockwise_loss({"student": student, "hybrid1": hybrid}, y, teacher, alpha=alpha, tau=tau)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    module = BlockwiseLoss(alpha, tau)({"student": student, "hybrid1": hybrid, "teacher": teacher}, y)
    assert module.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    kd = kd_loss(student, teacher, tau)
    assert kd.item() == pytest.approx(tau**2 * reference_kl(teacher, student, tau).item(), rel=1e-4, abs=1e-5)


def test_samd_explains_the_class_the_teacher_predicts():
    """Three classes whose CAMs peak at three different positions; the student's map matches the CAM of the
    predicted class only: the loss is ~0 for that class, and large for the others."""
    feature = torch.eye(3).view(1, 3, 1, 3)  # channel c is active at position c
    fc_weight = torch.eye(3) * 4  # class k reads channel k: CAM_k peaks at position k
    student_rate = torch.eye(3).view(1, 3, 1, 3) * torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)  # spikes at 2
    losses = []
    for predicted in range(3):
        teacher_logits = torch.full((1, 3), -1.0)
        teacher_logits[0, predicted] = 5.0
        losses.append(SAMDLoss(tau=1.0)(student_rate, feature, fc_weight, teacher_logits, time_steps=4).item())
    assert losses[2] == pytest.approx(0.0, abs=1e-6) and min(losses[0], losses[1]) > 0.5


# ----------------------------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_is_written_beside_then_renamed_over(tmp_path, monkeypatch):
    """While the new checkpoint is being written, the file at the path still holds the previous one; the new one is
    flushed to the disk before it replaces it."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(2)}})
    events = []
    real_save, real_fsync, real_replace = torch.save, distill.checkpoint.os.fsync, distill.checkpoint.os.replace

    def save(obj, f, *args, **kwargs):
        events.append(("save", getattr(f, "name", f), load_checkpoint(path)["step"]))
        return real_save(obj, f, *args, **kwargs)

    def fsync(fd):
        events.append(("fsync",))
        return real_fsync(fd)

    def replace(source, target):
        events.append(("replace", str(target)))
        return real_replace(source, target)

    monkeypatch.setattr(distill.checkpoint.torch, "save", save)
    monkeypatch.setattr(distill.checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(distill.checkpoint.os, "replace", replace)
    save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(2)}})
    (_, written, step_seen), *rest = events
    assert written != str(path) and step_seen == 1
    assert rest == [("fsync",), ("replace", str(path))]
    assert load_checkpoint(path)["step"] == 2


# ----------------------------------------------------------------------------------------------- the trainer


def record_draws(monkeypatch) -> list:
    """Every teacher-stage loss also draws from the torch, numpy and python generators, and records what it got
    (numpy's and python's seeded here: the trainer seeds only torch's, as nothing else it runs draws from them)."""
    draws = []
    np.random.seed(1)
    random.seed(1)
    real = distill.trainer.teacher_loss

    def loss(net, x, y, generator):
        draws.append((torch.rand(()).item(), float(np.random.rand()), random.random()))
        return real(net, x, y, generator)

    monkeypatch.setattr(distill.trainer, "teacher_loss", loss)
    return draws


def test_resume_restores_every_random_generator(tmp_path, monkeypatch):
    """A run stopped after step 3 and resumed draws, from step 4 on, what the run that never stopped drew."""
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "0", "--log-every", "1"]
    whole = record_draws(monkeypatch)
    main([*args, "--out", str(tmp_path / "whole")])
    monkeypatch.undo()
    before_stop = record_draws(monkeypatch)
    interrupt_at(monkeypatch, "teacher", 3, signal.SIGINT)
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "stopped")])
    monkeypatch.undo()
    after_resume = record_draws(monkeypatch)
    main(["--out", str(tmp_path / "stopped"), "--resume", "--progress", "off"])
    assert len(whole) == 8 and before_stop == whole[:3] and after_resume == whole[3:]


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    main([*QUICK, "--teacher-epochs", "1", "--epochs", "0", "--out", str(out)])
    return out / "teacher.pt"


@pytest.mark.parametrize("method", ["kd", "ckd"])
def test_the_teacher_stays_frozen_in_eval_mode_while_the_student_learns(
    tmp_path, monkeypatch, teacher_checkpoint, method
):
    """Its BatchNorm statistics must not move, and it must predict as in evaluation, at every student step."""
    seen = {}
    real = distill.trainer.student_loss

    def watching(cfg, teacher):
        seen["teacher"], seen["before"] = teacher, {k: v.clone() for k, v in teacher.state_dict().items()}
        loss_fn = real(cfg, teacher)

        def loss(*args):
            seen.setdefault("modes", []).append(teacher.training)
            return loss_fn(*args)

        return loss

    monkeypatch.setattr(distill.trainer, "student_loss", watching)
    main([*QUICK, "--teacher", str(teacher_checkpoint), "--method", method, "--max-steps", "2", "--out", str(tmp_path)])
    after = seen["teacher"].state_dict()
    assert seen["modes"] == [False, False]
    assert all(torch.equal(seen["before"][k], after[k]) for k in after)


def test_samd_compares_the_last_stage_features(tmp_path, monkeypatch, teacher_checkpoint):
    shapes = []
    real_terms = distill.trainer.CKDLoss.terms

    def terms(self, student_logits, student_feature, teacher_logits, teacher_feature, *args):
        shapes.append((tuple(student_feature.shape[1:]), tuple(teacher_feature.shape[1:])))
        return real_terms(self, student_logits, student_feature, teacher_logits, teacher_feature, *args)

    monkeypatch.setattr(distill.trainer.CKDLoss, "terms", terms)
    main([*QUICK, "--teacher", str(teacher_checkpoint), "--method", "ckd", "--max-steps", "1", "--out", str(tmp_path)])
    last_channels = load_checkpoint(teacher_checkpoint)["model"]["head.fc.weight"].shape[1]
    assert shapes and all(s[0] == t[0] == last_channels for s, t in shapes)


def test_grad_accum_must_divide_the_batch():
    order = torch.arange(100)
    with pytest.raises(ValueError, match="divisible"):
        micro_batches(order, 0, 10, 0, 1, 3)
    with pytest.raises(ValueError, match="multiple of --grad-accum 3"):
        Config(batch_size=10, grad_accum=3)


@settings(max_examples=30, deadline=None)
@given(accum=st.integers(1, 4), world=st.integers(1, 3), per=st.integers(1, 5), step=st.integers(0, 3))
def test_micro_batches_split_the_batch_into_equal_disjoint_parts(accum, world, per, step):
    batch = accum * world * per
    order = torch.randperm(batch * 4, generator=torch.Generator().manual_seed(0))
    parts = [p for rank in range(world) for p in micro_batches(order, step, batch, rank, world, accum)]
    assert [len(p) for p in parts] == [per] * (accum * world)
    assert torch.equal(torch.cat(parts).sort().values, order[step * batch : (step + 1) * batch].sort().values)


def applied_learning_rates(monkeypatch) -> list[float]:
    """The lr of each ``optimizer.step()`` call, read when it is applied."""
    applied = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        applied.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return applied


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_each_step_applies_the_scheduled_learning_rate(tmp_path, monkeypatch, schedule):
    """Step s (from 0) of a stage of n applies lr * (1 + cos(pi s / n)) / 2: the full lr first, never 0."""
    applied = applied_learning_rates(monkeypatch)
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "0", "--lr", "0.2", "--schedule", schedule]
    train(parse_config([*args, "--log-every", "1", "--out", str(tmp_path)]))
    n = 8
    factors = [(1 + math.cos(math.pi * s / n)) / 2 if schedule == "cosine" else 1.0 for s in range(n)]
    assert applied == pytest.approx([0.2 * f for f in factors], rel=1e-12)
    logged = [json_line["lr"] for json_line in metrics(tmp_path) if "loss" in json_line]
    assert logged == applied


def gradients_at_each_step(monkeypatch) -> list[float]:
    """The global norm of the gradient each ``optimizer.step()`` call applies."""
    norms = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return norms


def test_the_gradient_is_clipped_before_it_is_applied(tmp_path, monkeypatch):
    norms = gradients_at_each_step(monkeypatch)
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "0", "--grad-clip", "0.05", "--log-every", "1"]
    train(parse_config([*args, "--out", str(tmp_path)]))
    logged = [line["grad_norm"] for line in metrics(tmp_path) if "loss" in line]
    assert len(norms) == 8 and all(n <= 0.05 * (1 + 1e-5) for n in norms)
    assert all(n > 0.05 for n in logged)  # the log keeps the norm before clipping


def test_micro_batches_average_their_gradients(tmp_path, monkeypatch):
    """Two micro-batches of 16 give about the gradient of one batch of 32 (BatchNorm's statistics differ a little),
    not twice it."""
    norms = gradients_at_each_step(monkeypatch)
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "0", "--grad-clip", "0", "--max-steps", "1"]
    for accum in (1, 2):
        train(parse_config([*args, "--grad-accum", str(accum), "--out", str(tmp_path / str(accum))]))
    assert len(norms) == 2 and 0.8 < norms[1] / norms[0] < 1.25


def test_the_optimizer_decays_the_weights(tmp_path, monkeypatch):
    decays = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        decays.append({group["weight_decay"] for group in self.param_groups})
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "0", "--max-steps", "1", "--weight-decay", "0.003"]
    train(parse_config([*args, "--out", str(tmp_path)]))
    assert decays and all(0.003 in d for d in decays)


def test_every_epoch_is_evaluated(tmp_path):
    results = train(parse_config([*QUICK, "--teacher-epochs", "3", "--epochs", "2", "--out", str(tmp_path)]))
    assert [(h["epoch"], h["step"]) for h in results["teacher_history"]] == [(1, 8), (2, 16), (3, 24)]
    assert [(h["epoch"], h["step"]) for h in results["student_history"]] == [(1, 8), (2, 16)]
    # each epoch names the device it ran on, so that a run resumed on another device says so
    assert {h["device"] for h in results["teacher_history"] + results["student_history"]} == {"cpu"}


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_augmentation_differs_from_step_to_step(tmp_path, monkeypatch):
    """Each step's crops and flips come from a generator seeded by (seed, stage, step, micro-batch): no two
    micro-batches of a run share a seed."""
    seeds = []
    real = distill.trainer.random_crop_flip

    def crop(x, padding, flip, generator):
        seeds.append(generator.initial_seed())
        return real(x, padding, flip, generator)

    monkeypatch.setattr(distill.trainer, "random_crop_flip", crop)
    train(parse_config([*QUICK, "--teacher-epochs", "1", "--epochs", "1", "--grad-accum", "2", "--out", str(tmp_path)]))
    assert len(seeds) == 32 and len(set(seeds)) == 32


# ----------------------------------------------------------------------------------------------- data


def test_the_sample_order_is_a_permutation_that_depends_on_seed_and_epoch():
    orders = {(seed, epoch): epoch_order(50, epoch, seed) for seed in (0, 1) for epoch in (0, 1)}
    assert all(torch.equal(o.sort().values, torch.arange(50)) for o in orders.values())
    assert len({tuple(o.tolist()) for o in orders.values()}) == 4


def test_event_frames_reach_the_snn_time_first_and_the_ann_as_their_mean():
    x = torch.rand(2, 5, 2, 4, 4)  # [B, T, C, H, W]
    assert torch.equal(model_input(x, "snn"), x.transpose(0, 1))
    torch.testing.assert_close(model_input(x, "ann"), x.mean(1))
    static = torch.rand(2, 1, 4, 4)
    assert model_input(static, "snn") is static and model_input(static, "ann") is static


def test_crop_offsets_are_drawn_per_axis():
    """Every (row, column) offset of a padding-2 crop occurs, not only the diagonal ones."""
    side, padding = 8, 2
    image = (torch.arange(side * side, dtype=torch.float32) + 1).view(1, 1, side, side).repeat(400, 1, 1, 1)
    out = random_crop_flip(image, padding, False, torch.Generator().manual_seed(0))
    centre = out[:, 0, side // 2, side // 2].long() - 1  # the source pixel now at the centre
    offsets = {(int(v) // side - side // 2, int(v) % side - side // 2) for v in centre}
    assert offsets == {(dy, dx) for dy in range(-padding, padding + 1) for dx in range(-padding, padding + 1)}


def test_half_of_the_samples_are_mirrored():
    image = torch.arange(4.0).view(1, 1, 1, 4).repeat(4000, 1, 1, 1)
    out = random_crop_flip(image, 0, True, torch.Generator().manual_seed(0))
    mirrored = (out[:, 0, 0, 0] == 3).float().mean().item()
    assert torch.equal(out[:, 0, 0, 0] == 3, out[:, 0, 0, 3] == 0) and 0.46 < mirrored < 0.54


def test_batches_are_normalised_by_dividing_by_std():
    images = torch.tensor([[[[0, 51, 255]], [[255, 102, 0]]]], dtype=torch.uint8)  # [1, 2, 1, 3]
    data = Dataset("toy", torch.tensor([0]), 2, images=images, mean=(0.2, 0.4), std=(0.5, 0.25))
    x, _ = data.batch(torch.tensor([0]))
    expected = torch.tensor([[[[-0.4, 0.0, 1.6]], [[2.4, 0.0, -1.6]]]])
    torch.testing.assert_close(x, expected)


def test_normalised_digits_are_centred_and_scaled():
    train_set = load_dataset("digits", "train")
    x, _ = train_set.batch(torch.arange(len(train_set)))
    assert abs(x.mean().item()) < 0.15 and 0.8 < x.std().item() < 1.25


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 1500), seed=st.integers(0, 2**31))
def test_a_subset_has_exactly_the_size_asked(size, seed):
    full = load_dataset("digits", "test")
    part = full.subset(size, seed)
    assert len(part) == (size if 0 < size < len(full) else len(full))
    again = full.subset(size, seed)
    assert torch.equal(part.images, again.images) and torch.equal(part.labels, again.labels)


# ----------------------------------------------------------------------------------------------- evaluation


class LateSpikingNet(nn.Module):
    """The image repeated over T = 4 steps into a LIF (silent for the first two steps, then firing), then a linear
    layer of 5 outputs on the spikes: 5 synaptic operations per spike, all of them after the first step."""

    kind = "snn"

    def __init__(self):
        super().__init__()
        self.lif, self.fc = LIF(), nn.Linear(3, 5)

    def forward(self, x):
        current = torch.zeros(4, *x.shape)
        current[2:] = x
        spikes = self.lif(current.flatten(2), mode="eval")  # [T, B, 3]
        return self.fc(spikes.flatten(0, 1)).view(4, x.shape[0], 5).mean(0)


def test_synaptic_operations_count_every_time_step():
    images = torch.full((6, 3, 1, 1), 5.0)
    images[3:, 1:] = 0.0  # samples 3..5 drive one neuron of three
    data = Dataset("toy", torch.zeros(6, dtype=torch.int64), 5, images=images, scale=1.0)
    p = profile(LateSpikingNet(), data, torch.device("cpu"), torch.arange(6))
    spikes_per_sample = (3 * 2 * 3 + 3 * 2 * 1) / 6  # neurons x firing steps, averaged over the samples
    assert p.sops == pytest.approx(5 * spikes_per_sample) and p.firing_rates == {"lif": pytest.approx(4 / 12)}


class GroupedNet(nn.Module):
    """A depthwise conv (4 groups of 1 channel, 3x3, pad 1) on 4 channels of 5x5 and a linear 100 -> 2."""

    kind = "ann"

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.Linear(100, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_grouped_convolutions_count_the_macs_of_their_groups():
    data = Dataset("toy", torch.zeros(3, dtype=torch.int64), 2, images=torch.rand(3, 4, 5, 5) + 0.1, scale=1.0)
    p = profile(GroupedNet(), data, torch.device("cpu"), torch.arange(3))
    assert p.macs == 4 * 25 * 9 + 100 * 2  # each output reads 1 channel x 3 x 3, not 4


@pytest.mark.parametrize("start_training", [False, True])
def test_evaluation_leaves_the_model_in_the_mode_it_found(start_training):
    snn = create_model("tiny_resnet", "snn", num_classes=10, in_channels=1, T=2)
    snn.train(start_training)
    data = load_dataset("digits", "test")
    accuracy(snn, data, torch.device("cpu"), 64, torch.arange(64))
    assert snn.training == start_training and all(m.training == start_training for m in snn.modules())
    profile(snn, data, torch.device("cpu"), torch.arange(16))
    assert snn.training == start_training and all(m.training == start_training for m in snn.modules())


def test_energy_constants_are_horowitz_45nm():
    """A 32-bit float multiply-accumulate costs 4.6 pJ (3.7 + 0.9), an accumulate 0.9 pJ."""
    assert (E_MAC_PJ, E_AC_PJ) == (4.6, 0.9)
    assert Profile(accuracy=0.0, macs=1e6, sops=2e6).energy_uj == pytest.approx(4.6 + 1.8)
