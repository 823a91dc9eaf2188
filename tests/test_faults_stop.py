"""Stops: only finite state is saved and the NaN stop names a checkpoint that is finite; SIGINT / SIGTERM write a
checkpoint at the current step and end with one line; --resume continues exactly, or with a changed --lr / --threads
that it announces; temporary files of a killed write are removed on the next start."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import distill.trainer
from distill.checkpoint import load_checkpoint, non_finite_tensors
from distill.config import parse_config
from distill.run import main
from distill.trainer import NonFiniteLossError, train
from tests.test_trainer import signal_after_student_step

ROOT = Path(__file__).resolve().parent.parent
# 256 training digits = 8 steps of 32 per epoch
QUICK = ["--train-subset", "256", "--test-subset", "64", "--batch-size", "32", "--threads", "1", "--progress", "off"]
QUICK += ["--val-fraction", "0"]  # train on all 256: 8 steps an epoch


class NanGradient(torch.autograd.Function):
    """The identity whose gradient is NaN: a finite loss whose backward poisons every parameter."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison_gradients_from_call(monkeypatch, first_bad_call: int) -> None:
    calls = {"n": 0}
    real = distill.trainer.cross_entropy

    def poisoned(logits, target):
        calls["n"] += 1
        loss = real(logits, target)
        return NanGradient.apply(loss) if calls["n"] >= first_bad_call else loss

    monkeypatch.setattr(distill.trainer, "cross_entropy", poisoned)


def assert_finite_checkpoint(path: Path, stage: str, step: int) -> None:
    checkpoint = load_checkpoint(path)
    assert (checkpoint["stage"], checkpoint["step"]) == (stage, step)
    assert non_finite_tensors(checkpoint) == []


# ----------------------------------------------------------------------------------------------- non-finite state


def test_a_nan_gradient_stops_before_it_is_applied(tmp_path, monkeypatch):
    poison_gradients_from_call(monkeypatch, 6)
    cfg = parse_config([*QUICK, "--out", str(tmp_path), "--checkpoint-every", "2", "--teacher-epochs", "1"])
    message = r"gradient's norm is nan at step 6 .*stopped before applying it\. The last checkpoint, which is finite, "
    with pytest.raises(NonFiniteLossError, match=message + r"is .*checkpoint\.pt \(teacher stage, step 4\)"):
        train(cfg)
    assert_finite_checkpoint(tmp_path / "checkpoint.pt", "teacher", 4)


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    """Without clipping the NaN gradient is applied: the checkpoint of that step is refused, the one before kept."""
    poison_gradients_from_call(monkeypatch, 6)
    args = [*QUICK, "--out", str(tmp_path), "--checkpoint-every", "1", "--teacher-epochs", "1", "--grad-clip", "0"]
    message = r"teacher stage, step 6: not writing .*hold NaN .*which is finite, is .*\(teacher stage, step 5\)"
    with pytest.raises(NonFiniteLossError, match=message):
        train(parse_config(args))
    assert_finite_checkpoint(tmp_path / "checkpoint.pt", "teacher", 5)


def test_a_diverging_run_names_a_finite_checkpoint_and_resumes_from_it_with_a_lower_lr(tmp_path, capsys):
    """--lr 1e6 --checkpoint-every 1: whatever step it diverges at, the checkpoint it names is finite, and
    --resume --lr continues from it, saying so."""
    args = [*QUICK, "--out", str(tmp_path), "--teacher-epochs", "2", "--checkpoint-every", "1", "--lr", "1e6"]
    with pytest.raises(SystemExit, match="NaN|nan|inf") as stop:
        main(args)
    if "No checkpoint was written yet" in str(stop.value):
        assert not (tmp_path / "checkpoint.pt").exists()
        return
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert f"step {checkpoint['step']})" in str(stop.value) and non_finite_tensors(checkpoint) == []
    capsys.readouterr()
    try:
        main([*QUICK, "--out", str(tmp_path), "--resume", "--lr", "1e-9", "--epochs", "1", "--max-steps", "2"])
    except SystemExit:
        pass  # weights blown up to 1e6 may stay non-finite even at a tiny lr; the announcement is what matters here
    assert "--resume: lr 1e-09 instead of the run's 1000000.0" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- --resume with changes


def logged(run: Path, stage: str) -> dict[int, dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x for x in lines if x["stage"] == stage and "loss" in x}


def test_metrics_written_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    """A killed run logged steps past its last checkpoint; resuming from it drops them (and a line cut by the kill),
    so that every step appears once."""
    lines = [{"stage": "teacher", "step": s, "loss": 1.0} for s in range(1, 9)]
    lines += [{"stage": "teacher", "step": 8, "test_acc": 0.5}]
    lines += [{"stage": "student", "step": s, "loss": 1.0} for s in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"stage": "stu')
    ctx = types.SimpleNamespace(run_dir=tmp_path, is_main=True)
    distill.trainer._truncate_metrics(ctx, "student", 4)
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == lines[:13]
    distill.trainer._truncate_metrics(ctx, "teacher", 5)
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == lines[:5]


def test_resume_with_a_lower_lr_says_so_and_uses_it(tmp_path, monkeypatch, capsys):
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "1", "--log-every", "1"]
    main([*args, "--out", str(tmp_path / "whole")])
    stopped = tmp_path / "stopped"
    interrupt_at(monkeypatch, "student", 3, signal.SIGINT)
    with pytest.raises(SystemExit):
        main([*args, "--out", str(stopped)])
    monkeypatch.undo()
    capsys.readouterr()
    stray = stopped / ".checkpoint.pt.k1ll3d.tmp"  # as a write killed half-way leaves it
    stray.write_bytes(b"half a checkpoint")
    main(["--out", str(stopped), "--resume", "--lr", "0.01", "--threads", "2", "--progress", "off"])
    err = capsys.readouterr().err
    assert not stray.exists() and "removed .checkpoint.pt.k1ll3d.tmp" in err
    assert "--resume: lr 0.01 instead of the run's 0.1 (the learning rate of the remaining steps)" in err
    assert "--resume: threads 2 instead of the run's 1 (CPU reductions may round differently)" in err
    whole, resumed = logged(tmp_path / "whole", "student"), logged(stopped, "student")
    lines = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["stage"] == "student" and "loss" in x] == list(range(1, 9))  # each once
    for step in range(1, 9):
        expected = whole[step]["lr"] / (10 if step > 3 else 1)
        assert resumed[step]["lr"] == pytest.approx(expected, rel=1e-12), step


# ----------------------------------------------------------------------------------------------- signals


def interrupt_at(monkeypatch, stage: str, step: int, signum: int) -> None:
    """Sends ``signum`` to this process right after the metrics line of ``stage`` step ``step``."""
    log = distill.trainer.Context.log

    def log_then_signal(self, record):
        log(self, record)
        if record.get("stage") == stage and record.get("step") == step and "loss" in record:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(distill.trainer.Context, "log", log_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_writes_a_checkpoint_at_the_current_step(tmp_path, monkeypatch, capsys, signum):
    interrupt_at(monkeypatch, "teacher", 5, signum)
    args = [*QUICK, "--out", str(tmp_path), "--teacher-epochs", "1", "--log-every", "1"]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    name = signal.Signals(signum).name
    assert err[-1].startswith(f"stopped by {name} after teacher step 5 of 8; checkpoint written: {tmp_path}")
    assert err[-1].endswith(f"Continue with: python -m distill.run --resume --out {tmp_path}")
    assert_finite_checkpoint(tmp_path / "checkpoint.pt", "teacher", 5)
    # handlers restored to what they were (a job started in the background has SIGINT ignored)
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch, capsys):
    """For a step that hangs: the second signal interrupts it; one line, exit 130, the lock released."""
    log = distill.trainer.Context.log

    def log_then_signal_twice(self, record):
        log(self, record)
        if record.get("stage") == "teacher" and record.get("step") == 3 and "loss" in record:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(distill.trainer.Context, "log", log_then_signal_twice)
    with pytest.raises(SystemExit) as stop:
        main([*QUICK, "--out", str(tmp_path), "--teacher-epochs", "1", "--log-every", "1", "--checkpoint-every", "2"])
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"interrupted; the run folder {tmp_path} keeps")
    assert not (tmp_path / ".spikekd.lock").exists()
    assert_finite_checkpoint(tmp_path / "checkpoint.pt", "teacher", 2)


def test_a_full_disk_while_logging_is_one_line_and_releases_the_folder(tmp_path, monkeypatch, capsys):
    def full(self, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.run_dir / "metrics.jsonl"))

    monkeypatch.setattr(distill.trainer.Context, "log", full)
    with pytest.raises(SystemExit, match=r"No space left on device: '.*metrics\.jsonl'"):
        main([*QUICK, "--out", str(tmp_path), "--teacher-epochs", "1"])
    assert not (tmp_path / ".spikekd.lock").exists()


# SIGINT right after student step 5 (mid-epoch, no checkpoint due).
SELF_INTERRUPT = signal_after_student_step("SIGINT", 5)


@pytest.mark.slow
def test_ctrl_c_then_resume_gives_the_same_weights(tmp_path):
    """SIGINT: exit 130 with one line and no traceback; the steps since the last checkpoint are kept; --resume ends
    bit-identical to a run that never stopped. A stray temporary file of a killed write is removed on resume."""
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "1", "--log-every", "1"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen([sys.executable, "-m", "distill.run", *args, "--out", str(whole)], env=env)
    victim = subprocess.run(
        [sys.executable, "-c", SELF_INTERRUPT, *args, "--out", str(stopped)], env=env, capture_output=True, text=True
    )
    assert victim.returncode == 130, victim.stderr[-3000:]
    said = [line for line in victim.stderr.strip().splitlines() if not re.match(r"(teacher|student) epoch ", line)]
    assert "Traceback" not in victim.stderr and len(said) == 1, victim.stderr  # besides the lines of each epoch
    assert_finite_checkpoint(stopped / "checkpoint.pt", "student", 5)
    stray = stopped / ".checkpoint.pt.k1ll3d.tmp"
    stray.write_bytes(b"half a checkpoint")
    resumed = subprocess.run(
        [sys.executable, "-m", "distill.run", "--resume", "--out", str(stopped), "--progress", "off", "--threads", "1"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0 and reference.wait(timeout=300) == 0, resumed.stderr[-3000:]
    assert not stray.exists() and "removed .checkpoint.pt.k1ll3d.tmp" in resumed.stderr
    a, b = load_checkpoint(whole / "student.pt")["model"], load_checkpoint(stopped / "student.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


# Runs distill.run and SIGKILLs itself inside the 6th checkpoint write (the student's step 6, with --checkpoint-every
# 3), after its bytes went to the temporary file and before the rename.
KILL_IN_WRITE = """
import os, signal, sys
import distill.checkpoint
calls = {"n": 0}
fsync = os.fsync
def fsync_then_die(fd):
    fsync(fd)
    calls["n"] += 1
    if calls["n"] == 6:
        os.kill(os.getpid(), signal.SIGKILL)
distill.checkpoint.os.fsync = fsync_then_die
from distill.run import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_kill_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "1", "--checkpoint-every", "3"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen([sys.executable, "-m", "distill.run", *args, "--out", str(whole)], env=env)
    victim = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, *args, "--out", str(killed)], env=env)
    assert victim.returncode == -signal.SIGKILL
    assert [p.name.startswith(".checkpoint.pt.") for p in killed.glob("*.tmp")] == [True]
    assert_finite_checkpoint(killed / "checkpoint.pt", "student", 3)
    resumed = subprocess.run([sys.executable, "-m", "distill.run", "--resume", "--out", str(killed)], env=env)
    assert resumed.returncode == 0 and reference.wait(timeout=300) == 0
    assert not list(killed.glob("*.tmp"))
    a, b = load_checkpoint(whole / "student.pt")["model"], load_checkpoint(killed / "student.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


# Under torchrun: rank 0 alone sends itself SIGTERM right after logging student step 3.
RANK0_TERMINATES = signal_after_student_step("SIGTERM", 3, rank=0)


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Two gloo processes; only rank 0 gets SIGTERM, after step 3: both stop after step 4, the first all-reduce that
    carries the signal (no rank left waiting in one), the checkpoint is of that step, and --resume under torchrun
    ends as the run that never stopped."""
    (tmp_path / "stop.py").write_text(RANK0_TERMINATES)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "1", "--log-every", "1"]
    whole = subprocess.run([*torchrun, "-m", "distill.run", *args, "--out", str(tmp_path / "whole")], env=env)
    stopped = subprocess.run(
        [*torchrun, str(tmp_path / "stop.py"), *args, "--out", str(tmp_path / "stopped")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0 and stopped.returncode != 0
    # each rank learns of the signal at the next step's all-reduce (step 4), rank 1 as well as rank 0
    steps = re.findall(r"stopped by SIGTERM after student step (\d+) of 8", stopped.stderr)
    assert steps == ["4", "4"], stopped.stderr[-3000:]
    assert_finite_checkpoint(tmp_path / "stopped" / "checkpoint.pt", "student", 4)
    resume = ["--resume", "--out", str(tmp_path / "stopped"), "--progress", "off"]
    assert subprocess.run([*torchrun, "-m", "distill.run", *resume], env=env).returncode == 0
    a = load_checkpoint(tmp_path / "whole" / "student.pt")["model"]
    b = load_checkpoint(tmp_path / "stopped" / "student.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
