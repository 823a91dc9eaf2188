"""``python -m distill.run``: the default job end to end, and every method x training mode for a few steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill.run import main

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--train-subset", "128", "--test-subset", "32", "--batch-size", "32", "--progress", "off"]


@pytest.mark.slow
def test_default_command_gives_the_readme_figures(tmp_path):
    """The literal default command, from an empty folder, within the spread the README states (chance: 10 %)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "distill.run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("teacher accuracy", "student accuracy", "firing rate", "time", "peak memory"):
        assert row in done.stdout
    run_dir = tmp_path / "runs" / "digits-blockwise-rate"
    results = json.loads((run_dir / "results.json").read_text())
    # within 3 sd of the README's means over seeds 0-4 at 1 and 2 threads (teacher 98.3 +- 0.4 %, student 96.5 +- 0.7 %)
    assert abs(results["teacher_acc"] - 0.983) <= 3 * 0.0044 and abs(results["student_acc"] - 0.965) <= 3 * 0.0069
    assert 0 < results["firing_rate"] < 1 and results["snn_energy_uj"] < results["ann_energy_uj"]
    made = ("report.md", "metrics.jsonl", "student.pt", "student_best.pt", "teacher.pt", "checkpoint.pt", "config.toml")
    for name in made:
        assert (run_dir / name).is_file()
    assert "student accuracy" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("train", ["bptt", "rate"])
@pytest.mark.parametrize("method", ["direct", "kd", "ckd", "blockwise"])
def test_every_method_and_mode_trains(tmp_path, method, train, capsys):
    args = [*QUICK, "--method", method, "--train", train, "--max-steps", "2", "--teacher-epochs", "1"]
    results = main([*args, "--out", str(tmp_path)])
    assert 0 <= results["student_acc"] <= 1 and results["student_time_s"] > 0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if x["stage"] == "student" and "loss" in x]
    assert losses and all(loss == loss and loss < 1e3 for loss in losses)
    assert "student accuracy" in capsys.readouterr().out


def test_missing_data_set_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=f"looked in {tmp_path}"):
        main(["--dataset", "fashion_mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")])


def test_teacher_from_a_checkpoint(tmp_path):
    first = main([*QUICK, "--max-steps", "2", "--epochs", "0", "--out", str(tmp_path / "a")])
    second = main([*QUICK, "--max-steps", "2", "--teacher", str(tmp_path / "a" / "teacher.pt"), "--out",
                   str(tmp_path / "b")])  # fmt: skip
    assert second["teacher_acc"] == pytest.approx(first["teacher_acc"])
    assert second["teacher_time_s"] == 0.0


def test_event_frames_end_to_end(tmp_path):
    """CIFAR10-DVS layout (frames [T, 2, H, W] per sample): the SNN sees the frames, the ANN their mean."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(20):
            frames = rng.poisson(2.0 if cls == "a" else 0.5, (4, 2, 16, 16)).astype(np.uint8)
            np.savez_compressed(tmp_path / "data" / cls / f"{i}.npz", frames=frames)
    args = ["--dataset", "cifar10_dvs", "--data-dir", str(tmp_path / "data"), "--image-size", "16", "--arch",
            "tiny_vgg", "--batch-size", "12", "--max-steps", "2", "--progress", "off"]  # fmt: skip
    with pytest.raises(SystemExit, match="--time-steps 4"):
        main([*args, "--time-steps", "3", "--out", str(tmp_path / "bad")])
    results = main(
        [*args, "--time-steps", "4", "--method", "ckd", "--augment", "standard,roll", "--out", str(tmp_path / "run")]
    )
    assert results["firing_rates"] and 0 <= results["student_acc"] <= 1
