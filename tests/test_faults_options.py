"""Bad options and configs: each is a one-line error naming the option, the value and what is accepted, raised
before any work (no run folder, no teacher stage)."""

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import distill.trainer
from distill.config import ACCEPTED, Config, parse_config
from distill.datasets import load_dataset
from distill.run import main

QUICK = ["--train-subset", "64", "--test-subset", "32", "--batch-size", "32", "--threads", "1", "--progress", "off"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-steps", "-1"], "--max-steps must be an integer >= 0, got -1"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be an integer >= 0, got -1"),
        (["--train-subset", "-5"], "--train-subset must be an integer >= 0, got -5"),
        (["--grad-clip", "-1"], "--grad-clip must be a finite number >= 0, got -1.0"),
        (["--alpha", "-5"], "--alpha must be a finite number >= 0, got -5.0"),
        (["--alpha", "inf"], "--alpha must be a finite number >= 0, got inf"),
        (["--threads", "-1"], "--threads must be an integer >= 0, got -1"),
        (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--seed", "-1"], r"--seed must be an integer in \[0, 2\*\*63 - 1\], got -1"),
        (["--grad-accum", "3"], "--batch-size 32 must be a multiple of --grad-accum 3"),
        (["--neuron-tau", "0.5"], "--neuron-tau must be a finite number >= 1 .*got 0.5"),
        (["--v-threshold", "0"], "--v-threshold must be a finite number > 0, got 0.0"),
        (["--tau", "0"], "--tau must be a finite number > 0, got 0.0"),
        (["--momentum", "1"], r"--momentum must be a number in \[0, 1\), got 1.0"),
        (["--splits", "1,x"], "--splits must be distinct stage indices >= 1"),
        (["--splits", "1,1"], "--splits must be distinct stage indices >= 1"),
        (["--splits", "9"], r"--arch tiny_resnet: splits must be distinct ints in \[1, 2\] \(K=3 stages\), got \[9\]"),
        (["--resume", "--overwrite"], "--resume continues the run in --out and --overwrite replaces it"),
        (["--batch-size", "4096"], r"--batch-size 4096 is larger than the 58 training samples of digits \(after"),
        (["--train-subset", "5000"], "--train-subset 5000 is more than the 1438 samples"),
        (["--test-subset", "5000"], "--test-subset 5000 is more than the 359 samples"),
    ],
)
def test_bad_option_is_a_clear_error_before_any_work(tmp_path, args, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=message):
        main([*QUICK, *args, "--out", str(out)])
    assert not out.exists()  # nothing written, so no teacher stage either


FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@settings(max_examples=200, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(ACCEPTED)))
def test_every_numeric_option_refuses_negative_and_non_finite_values(data, name):
    if FIELD_TYPES[name] == "float":
        value = data.draw(st.one_of(non_finite, st.floats(max_value=-1e-300, allow_nan=False)))
    else:
        value = data.draw(st.integers(max_value=-1))
    with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} must be .*, got {re.escape(repr(value))}$"):
        Config(**{name: value})


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(sorted(ACCEPTED)))
def test_defaults_are_accepted(name):
    assert ACCEPTED[name][0](getattr(Config(), name))


def test_numpy_scalars_are_taken_as_python_numbers(tmp_path):
    cfg = Config(lr=np.float32(0.5), seed=np.int64(3), download=np.bool_(True), max_steps=np.uint8(2))
    assert (cfg.lr, cfg.seed, cfg.download, cfg.max_steps) == (0.5, 3, True, 2)
    assert type(cfg.lr) is float and type(cfg.seed) is int and type(cfg.download) is bool
    assert Config.from_dict({"lr": np.float64(0.25), "epochs": np.int32(4)}) == Config(lr=0.25, epochs=4)
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    assert parse_config(["--config", str(tmp_path / "c.toml")]) == cfg
    with pytest.raises(ValueError, match="--lr must be a finite number > 0, got -1.0"):
        Config(lr=np.float64(-1))


@pytest.mark.parametrize(
    "toml, message",
    [
        ("time_steps = 4\ntime-steps = 2\n", "sets time_steps twice"),
        ("lr = 0.1\nlr = 0.2\n", "cannot read"),  # TOML itself forbids it
        ("lr = -0.1\n", "--lr must be a finite number > 0"),
        ('lr = "fast"\n', "lr must be a float"),
        ("max_steps = true\n", "max_steps must be a int"),
    ],
)
def test_bad_config_files(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(SystemExit, match=message):
        parse_config(["--config", str(path)])


# ----------------------------------------------------------------------------------------------- memory


def test_options_that_cannot_fit_in_memory_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(distill.trainer, "available_memory_bytes", lambda device: 2**20)
    out = tmp_path / "run"
    message = (
        r"the student stage's training step at --time-steps 4 with micro-batches of 16 samples \(--batch-size 32 / "
        r"1 processes / --grad-accum 2\) needs about .* GiB .* but cpu has 0.0 GiB free; raise --grad-accum"
    )
    with pytest.raises(SystemExit, match=message):
        main([*QUICK, "--grad-accum", "2", "--out", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("method", ["blockwise", "kd"])
def test_the_memory_check_runs_every_stage_wholly_on_the_run_device(method):
    """Each module the memory check runs is on the run's device, block-wise's phi_k included (on CUDA, a phi_k left
    on the CPU failed the check before any training). The meta device stands in for a GPU."""
    data = load_dataset("digits", "train")
    cfg = Config(method=method, device="cpu")
    ctx = distill.trainer.Context(cfg, torch.device("meta"), 0, 1, data, data, Path("unused"))
    stages = distill.trainer.memory_check_stages(ctx)
    assert set(stages) == {"student", "teacher"}
    for stage, module in stages.items():
        devices = {t.device.type for t in [*module.parameters(), *module.buffers()]}
        assert devices == {"meta"}, (stage, devices)
    if method == "blockwise":
        assert len(stages["student"].align) > 0


@pytest.mark.parametrize("train_mode", ["bptt", "rate"])
def test_the_memory_estimate_grows_in_proportion_to_the_batch_and_time_steps(train_mode):
    """What a forward pass keeps for backward, the estimate's basis, is linear in the samples (so 2 samples predict
    a micro-batch); in BPTT it grows with T, in rate mode it does not."""
    data = load_dataset("digits", "train")

    def saved(samples, time_steps):
        cfg = Config(time_steps=time_steps, train_mode=train_mode, device="cpu")
        ctx = distill.trainer.Context(cfg, torch.device("cpu"), 0, 1, data, data, Path("unused"))
        torch.manual_seed(0)
        return distill.trainer.saved_for_backward_bytes(ctx, distill.trainer.build_model(cfg, "snn", data), samples)

    assert saved(32, 4) == pytest.approx(16 * saved(2, 4), rel=0.05)
    growth = saved(8, 16) / saved(8, 4)
    assert growth > 3 if train_mode == "bptt" else growth < 1.5
