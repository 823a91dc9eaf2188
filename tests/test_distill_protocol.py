"""The papers' protocol and a balanced block-wise method: students start from scratch unless ``--init teacher``
(the ``convert`` baseline); phi_k starts from the teacher's feature statistics; the hybrids' losses are weighted so
that none of their gradients swamps the student's own; per-term losses and gradient norms reach metrics.jsonl."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from distill.checkpoint import load_checkpoint
from distill.config import METHODS, Config, parse_config
from distill.run import main
from distill.trainer import balanced_weights
from models import HybridNet, create_model

QUICK = ["--threads", "1", "--progress", "off", "--test-subset", "64"]


def metrics(run_dir, stage="student"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["stage"] == stage]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A tiny_resnet teacher trained on the embedded digits (about 95 %): trained tails are what unbalance the
    hybrids' gradients."""
    out = tmp_path_factory.mktemp("teacher")
    main([*QUICK, "--teacher-epochs", "4", "--epochs", "0", "--out", str(out)])
    return out / "teacher.pt"


# ----------------------------------------------------------------------------------------------- --init


def test_students_start_from_scratch_by_default_for_every_method():
    for method in METHODS:
        cfg = parse_config(["--method", method])
        assert cfg.init == "scratch" and cfg.label == method
    assert parse_config(["--init", "teacher"]).label == "blockwise+convert"
    assert parse_config(["--init", "teacher", "--method", "direct"]).label == "convert"
    with pytest.raises(SystemExit):
        parse_config(["--init", "converted"])


def test_configs_saved_before_init_still_load():
    assert Config.from_dict({"init_from_teacher": True}).init == "teacher"
    assert Config.from_dict({"init_from_teacher": False}).init == "scratch"


@pytest.mark.parametrize("init", ["scratch", "teacher"])
def test_init_picks_the_students_starting_weights(tmp_path, digits_teacher, init):
    out = tmp_path / init
    args = [*QUICK, "--teacher", str(digits_teacher), "--method", "direct", "--epochs", "0", "--init", init]
    main([*args, "--out", str(out)])
    teacher = load_checkpoint(digits_teacher)["model"]
    student = load_checkpoint(out / "student.pt")["model"]
    same = all(torch.equal(teacher[k], student[k]) for k in student if k.endswith("weight"))
    assert same == (init == "teacher")
    assert ("convert" in (out / "report.md").read_text()) == (init == "teacher")


# ----------------------------------------------------------------------------------------------- phi's start


def test_phi_starts_as_identity_with_the_teachers_feature_statistics(seed):
    student = create_model("tiny_resnet", kind="snn", T=2, in_channels=1, num_classes=4)
    teacher = create_model("tiny_resnet", kind="ann", in_channels=1, num_classes=4)
    hybrid = HybridNet(student, teacher).train()
    x = torch.rand(16, 1, 12, 12)
    hybrid.match_teacher_statistics(x)
    _, teacher_features = teacher(x, mode="eval", return_features=True)
    _, student_features = student(x, mode="rate", return_features=True)
    for k in hybrid.splits:
        conv, _ = hybrid.align[str(k)]
        torch.testing.assert_close(conv.weight[:, :, 0, 0], torch.eye(conv.out_channels))
        aligned = hybrid.align[str(k)](student_features[k - 1])
        var, mean = torch.var_mean(teacher_features[k - 1], dim=(0, 2, 3), correction=0)
        student_var, _ = torch.var_mean(student_features[k - 1], dim=(0, 2, 3), correction=0)
        alive = student_var > 1e-3  # a channel that never fires has no spread to rescale
        torch.testing.assert_close(aligned.mean(dim=(0, 2, 3)), mean, atol=1e-4, rtol=1e-4)
        got_std = aligned.var(dim=(0, 2, 3), correction=0).sqrt()
        torch.testing.assert_close(got_std[alive], var.sqrt()[alive], atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------------- balance


def first_step_norms(run_dir) -> dict[str, float]:
    """Each branch's gradient norm on the student's parameters at the first step, times the branch's weight."""
    record = next(r for r in metrics(run_dir) if "term_grad_norm" in r and r["step"] == 0)
    weights = record["term_weight"]
    return {k: v * weights.get(k, 1.0) for k, v in record["term_grad_norm"].items()}


def test_branch_gradients_at_the_first_step_are_within_10x_with_the_defaults(tmp_path, digits_teacher):
    common = [*QUICK, "--teacher", str(digits_teacher), "--method", "blockwise", "--epochs", "1", "--max-steps", "1"]
    main([*common, "--out", str(tmp_path / "default")])
    norms = first_step_norms(tmp_path / "default")
    assert sorted(norms) == ["hybrid1", "hybrid2", "student"]
    assert max(norms.values()) <= 10 * min(norms.values()), norms
    # What the defaults fix: a random phi and equal weights put > 10x the student's gradient on the student.
    main([*common, "--align-init", "random", "--branch-weights", "equal", "--out", str(tmp_path / "unbalanced")])
    norms = first_step_norms(tmp_path / "unbalanced")
    assert max(norms.values()) > 10 * norms["student"], norms


def test_matched_branch_weights_give_every_branch_the_students_gradient_norm(tmp_path, digits_teacher):
    args = [*QUICK, "--teacher", str(digits_teacher), "--method", "blockwise", "--epochs", "1", "--max-steps", "1"]
    main([*args, "--branch-weights", "match", "--out", str(tmp_path / "match")])
    norms = first_step_norms(tmp_path / "match")
    for name in ("hybrid1", "hybrid2"):
        assert norms[name] == pytest.approx(norms["student"], rel=1e-6), norms


def test_blockwise_trains_without_gradient_clipping(tmp_path, digits_teacher):
    out = tmp_path / "noclip"
    args = [*QUICK, "--teacher", str(digits_teacher), "--method", "blockwise", "--grad-clip", "0", "--epochs", "3"]
    results = main([*args, "--batch-size", "32", "--log-every", "4", "--out", str(out)])
    lines = [r for r in metrics(out) if "loss" in r]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert max(r["loss"] for r in lines) < 2 * lines[0]["loss"]
    # 64 test images: over seeds 0-4 block-wise reached 75-92 % at this budget, direct 39-69 %; at 2 epochs block-wise
    # was 58-80 %, too close to the bar for a CPU that rounds differently
    assert results["student_acc"] > 0.6
    # per-branch losses on every metrics line; per-branch gradient norms and weights every --balance-every steps
    assert set(lines[0]["terms"]) == {"student", "hybrid1", "hybrid2"}
    probes = [r for r in metrics(out) if "term_grad_norm" in r]
    assert [r["step"] for r in probes] == [0, 50, 100]  # 3 epochs of 40 steps, --balance-every 50
    assert set(probes[0]["term_weight"]) == {"student", "hybrid1", "hybrid2"}


def test_balanced_weights():
    norms = {"student": 2.0, "hybrid1": 20.0, "hybrid2": 1.0}
    assert balanced_weights(norms, "student") == {"student": 1.0, "hybrid1": 0.1, "hybrid2": 1.0}
    assert balanced_weights({"student": 0.0, "hybrid1": 5.0}, "student") == {"student": 1.0, "hybrid1": 1.0}
    matched = balanced_weights(norms, "student", cap=math.inf)
    assert matched == {"student": 1.0, "hybrid1": 0.1, "hybrid2": 2.0}


@pytest.mark.slow
def test_branch_weights_survive_a_kill_and_resume(tmp_path, digits_teacher):
    """The grad_norm branch weights are in the checkpoint: a run killed mid-epoch and resumed ends with the same
    weights as one that never stopped, and logs each gradient-norm probe once (the probe at the checkpoint's own
    step, logged before the kill, is dropped and measured again)."""
    from tests.test_trainer import ROOT, SELF_KILL, run_cli

    args = [*QUICK, "--teacher", str(digits_teacher), "--train-subset", "284", "--batch-size", "32", "--epochs", "2"]
    args += ["--log-every", "1", "--checkpoint-every", "3", "--balance-every", "3"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    reference = run_cli([*args, "--out", str(whole)], stdout=subprocess.DEVNULL)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    victim = subprocess.run([sys.executable, "-c", SELF_KILL, *args, "--out", str(broken)], cwd=ROOT, env=env)
    assert victim.returncode == -signal.SIGKILL
    saved = load_checkpoint(broken / "checkpoint.pt")
    assert saved["step"] == 6 and set(saved["term_weights"]) == {"student", "hybrid1", "hybrid2"}
    resumed = run_cli(
        ["--out", str(broken), "--resume", "--progress", "off", "--threads", "1"], stdout=subprocess.DEVNULL
    )
    assert resumed.wait(timeout=300) == 0 and reference.wait(timeout=300) == 0
    a, b = load_checkpoint(whole / "student.pt")["model"], load_checkpoint(broken / "student.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    probes = {run: [r for r in metrics(run) if "term_weight" in r] for run in (whole, broken)}
    assert [r["step"] for r in probes[broken]] == [0, 3, 6, 9, 12, 15]
    assert [r["term_weight"] for r in probes[broken]] == [r["term_weight"] for r in probes[whole]]
    assert any(w < 1 for r in probes[whole] for w in r["term_weight"].values())  # the weights did something
