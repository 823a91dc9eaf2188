"""The trainer's contract: configuration and CLI, atomic checkpoints, NaN handling, exact resume after SIGKILL,
and DDP (2 gloo processes) agreeing with one process."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distill.trainer
from distill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from distill.config import Config, build_parser, parse_config
from distill.run import main
from distill.trainer import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parent.parent
# small and quick: 284 training digits, 28 of them held out for validation = 8 steps of 32 per epoch
QUICK = ["--train-subset", "284", "--test-subset", "64", "--batch-size", "32", "--threads", "1", "--progress", "off"]


def run_cli(args, cwd=None, env=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "distill.run", *args], cwd=cwd or ROOT, env=env, **kwargs)


def params(path):
    """The parameters (not the buffers) of a final checkpoint, by name."""
    state = load_checkpoint(path)["model"]
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


# ----------------------------------------------------------------------------------------------- config


def test_every_option_has_a_documented_flag():
    text = build_parser().format_help()
    for flag in ("--method", "--train", "--teacher", "--resume", "--config", "--time-steps", "--grad-clip"):
        assert flag in text
    assert text.count("(default:") >= len(Config.__dataclass_fields__)


def test_config_from_toml_and_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('method = "kd"\ntime-steps = 2\nepochs = 7\n')
    cfg = parse_config(["--config", str(path), "--epochs", "3", "--train", "bptt", "--augment", "none"])
    assert (cfg.method, cfg.time_steps, cfg.epochs, cfg.train_mode, cfg.augment) == ("kd", 2, 3, "bptt", "none")
    assert parse_config([]) == Config()
    round_trip = tmp_path / "round.toml"
    round_trip.write_text(cfg.to_toml())
    assert parse_config(["--config", str(round_trip)]) == cfg


@pytest.mark.parametrize(
    "toml, message",
    [
        ('methd = "kd"', "unknown option"),
        ('method = "mse"', "method must be one of"),
        ("epochs = 1.5", "must be a"),
        ('arch = "resnet99"', "arch must be one of .*'resnet18'"),
        ('device = "gpu"', "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ],
)
def test_config_errors(tmp_path, toml, message, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(SystemExit, match=message):
        parse_config(["--config", str(path)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--device cuda:1: CUDA is not available here .*use --device cpu"):
        main([*QUICK, "--device", "cuda:1", "--out", str(tmp_path)])


def test_images_too_small_for_the_architecture_is_a_clear_error(tmp_path):
    """vgg11 halves the side five times: the 8x8 digits vanish; the run says so before it trains."""
    with pytest.raises(SystemExit, match="--arch vgg11 cannot take the 8x8 images of digits .*tiny_resnet, tiny_vgg"):
        main([*QUICK, "--arch", "vgg11", "--out", str(tmp_path)])
    assert not (tmp_path / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_atomic(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 3, "model": {"w": torch.arange(4.0)}})
    save_checkpoint(path, {"step": 4, "model": {"w": torch.ones(4)}})
    checkpoint = load_checkpoint(path)
    assert checkpoint["step"] == 4 and torch.equal(checkpoint["model"]["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 3, "model": {"w": torch.randn(1000)}})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    torch.save({"w": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a SpikeKD checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="run without --resume"):
        train(parse_config([*QUICK, "--out", str(tmp_path), "--resume"]))


def test_resume_from_truncated_checkpoint_says_so(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04")
    proc = run_cli([*QUICK, "--out", str(tmp_path), "--resume"], stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "truncated or corrupt" in err and str(tmp_path) in err


# ----------------------------------------------------------------------------------------------- NaN


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = distill.trainer.cross_entropy

    def poisoned(logits, target):
        calls["n"] += 1
        loss = real(logits, target)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(distill.trainer, "cross_entropy", poisoned)
    cfg = parse_config([*QUICK, "--out", str(tmp_path), "--checkpoint-every", "2", "--teacher-epochs", "1"])
    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at step 6 .*The last checkpoint, which is finite, is .*step 4"
    ):
        train(cfg)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["stage"] == "teacher" and checkpoint["step"] == 4
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


# ----------------------------------------------------------------------------------------------- resume


def signal_after_student_step(signal_name: str, step: int, rank: int | None = None) -> str:
    """A script that runs distill.run on its arguments and sends itself `signal_name` right after logging the student's
    step `step`, at the same point however fast the machine is. Under torchrun every rank logs the step: `rank` (the
    RANK variable) limits the signal to one."""
    ranks = "True" if rank is None else f"os.environ.get('RANK', '0') == '{rank}'"
    return f"""
import os, signal, sys
import distill.trainer
log = distill.trainer.Context.log
def log_then_signal(self, record):
    log(self, record)
    if record.get("stage") == "student" and record.get("step") == {step} and "loss" in record and {ranks}:
        os.kill(os.getpid(), signal.{signal_name})
distill.trainer.Context.log = log_then_signal
from distill.run import main
main(sys.argv[1:])
"""


# SIGKILL (no clean-up, no atexit) right after student step 7: mid-epoch (8 steps an epoch), after the checkpoint of
# step 6.
SELF_KILL = signal_after_student_step("SIGKILL", 7)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path):
    args = [*QUICK, "--teacher-epochs", "1", "--epochs", "2", "--log-every", "1", "--checkpoint-every", "3"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    reference = run_cli([*args, "--out", str(whole)], stdout=subprocess.DEVNULL)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    victim = subprocess.run([sys.executable, "-c", SELF_KILL, *args, "--out", str(broken)], cwd=ROOT, env=env)
    assert victim.returncode == -signal.SIGKILL
    checkpoint = load_checkpoint(broken / "checkpoint.pt")
    assert (checkpoint["stage"], checkpoint["step"]) == ("student", 6)
    assert not (broken / "student.pt").exists()
    metrics = broken / "metrics.jsonl"
    # the saved options win: "--resume --out DIR" is enough
    control = ["--progress", "off", "--threads", "1", "--log-every", "1"]
    resumed = run_cli(["--out", str(broken), "--resume", *control], stdout=subprocess.DEVNULL)
    assert resumed.wait(timeout=300) == 0 and reference.wait(timeout=300) == 0
    a, b = load_checkpoint(whole / "student.pt")["model"], load_checkpoint(broken / "student.pt")["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the resumed run's metrics have every step once
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r["step"] for r in records if r["stage"] == "student" and "loss" in r]
    assert steps == list(range(1, 17))


# ----------------------------------------------------------------------------------------------- DDP


def torchrun(args, nproc=2):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([*cmd, "-m", "distill.run", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_ddp_two_processes_agree_with_one(tmp_path):
    base = [*QUICK, "--max-steps", "3", "--lr", "0.05"]
    # teacher stage: 2 ranks x 1 micro-batch vs 1 process x 2 micro-batches
    single = run_cli([*base, "--epochs", "0", "--grad-accum", "2", "--out", str(tmp_path / "t1")])
    ddp = torchrun([*base, "--epochs", "0", "--out", str(tmp_path / "t2")])
    assert single.wait(timeout=300) == 0 and ddp.returncode == 0, ddp.stderr[-3000:]
    t1, t2 = params(tmp_path / "t1" / "teacher.pt"), params(tmp_path / "t2" / "teacher.pt")
    for name in t1:
        torch.testing.assert_close(t1[name], t2[name], rtol=1e-4, atol=1e-5, msg=name)
    # student stage (blockwise, rate), from the same teacher
    teacher = str(tmp_path / "t1" / "teacher.pt")
    student = [*base, "--teacher", teacher, "--method", "blockwise", "--train", "rate"]
    single = run_cli([*student, "--grad-accum", "2", "--out", str(tmp_path / "s1")])
    ddp = torchrun([*student, "--out", str(tmp_path / "s2")])
    assert single.wait(timeout=300) == 0 and ddp.returncode == 0, ddp.stderr[-3000:]
    s1, s2 = params(tmp_path / "s1" / "student.pt"), params(tmp_path / "s2" / "student.pt")
    changed = [name for name in s1 if not torch.equal(s1[name], load_checkpoint(teacher)["model"][name])]
    assert changed  # the student did train
    for name in s1:
        torch.testing.assert_close(s1[name], s2[name], rtol=1e-4, atol=1e-5, msg=name)
