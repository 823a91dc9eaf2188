"""A run one can watch and trust: a line per epoch, the threads it picks, student_best.pt on a validation split,
train accuracy and the block-wise branches' losses in metrics.jsonl."""

import json
import re

import pytest
import torch

import distill.trainer
from distill.datasets import Dataset, DatasetError
from distill.evaluate import main as evaluate
from distill.run import main
from distill.trainer import default_threads, is_best

QUICK = ["--train-subset", "256", "--test-subset", "64", "--batch-size", "32", "--threads", "1", "--progress", "off"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_one_line_per_epoch_off_a_terminal(tmp_path, capsys):
    main([*QUICK, "--method", "kd", "--teacher-epochs", "1", "--epochs", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " epoch " in line]
    assert [line.split(" step")[0] for line in lines] == ["teacher epoch 1/1", "student epoch 1/2", "student epoch 2/2"]
    pattern = (
        r"step \d+/\d+ \| loss \d+\.\d{4} \| train [\d.]+ % \| val [\d.]+ % \| test [\d.]+ % \| [\d.]+ s \| ETA \d+ s"
    )
    assert all(re.search(pattern, line) for line in lines), lines


def test_student_best_is_chosen_on_validation_not_test(tmp_path):
    results = main([*QUICK, "--method", "direct", "--teacher-epochs", "1", "--epochs", "3", "--out", str(tmp_path)])
    history = [r for r in metrics(tmp_path) if r["stage"] == "student" and "val_acc" in r]
    assert len(history) == 3 and all("train_acc" in r and 0 <= r["train_acc"] <= 1 for r in history)
    best = max(history, key=lambda r: r["val_acc"])  # the first of equals
    saved = torch.load(tmp_path / "student_best.pt", weights_only=True)
    assert saved["summary"]["best"]["epoch"] == best["epoch"] == results["student_best"]["epoch"]
    assert "best student (val)" in (tmp_path / "report.md").read_text()
    last = torch.load(tmp_path / "student.pt", weights_only=True)["model"]
    same = torch.equal(saved["model"]["head.fc.weight"], last["head.fc.weight"])
    assert same == (best["epoch"] == 3)
    assert evaluate([str(tmp_path / "student_best.pt")]).accuracy == pytest.approx(best["test_acc"], abs=1e-9)


def test_validation_is_held_out_of_the_training_samples():
    data = Dataset("toy", labels=torch.arange(200) % 3, num_classes=3, images=torch.arange(200).view(200, 1, 1, 1))
    train, val = data.split(0.1, 0)
    assert (len(train), len(val)) == (180, 20)
    assert sorted(train.images.flatten().tolist() + val.images.flatten().tolist()) == list(range(200))
    assert torch.equal(val.labels, val.images.flatten() % 3)
    assert data.split(0.0, 0) == (data, None)
    with pytest.raises(DatasetError, match="holds out all"):
        data.select(torch.arange(1)).split(0.9, 0)
    with pytest.raises(SystemExit, match=r"--val-fraction must be a number in \[0, 1\), got 1.0"):
        main(["--val-fraction", "1.0"])


def test_no_validation_no_best_file(tmp_path):
    main([*QUICK, "--val-fraction", "0", "--max-steps", "2", "--out", str(tmp_path)])
    assert not (tmp_path / "student_best.pt").exists() and (tmp_path / "student.pt").exists()
    assert all("val_acc" not in r for r in metrics(tmp_path))


def test_blockwise_logs_each_branch_loss(tmp_path):
    main([*QUICK, "--method", "blockwise", "--max-steps", "3", "--log-every", "1", "--out", str(tmp_path)])
    steps = [r for r in metrics(tmp_path) if r["stage"] == "student" and "loss" in r]
    assert steps and all({"loss_student", "loss_hybrid1", "loss_hybrid2"} <= set(r) for r in steps)
    for r in steps:
        assert r["loss"] == pytest.approx(r["loss_student"] + r["loss_hybrid1"] + r["loss_hybrid2"], rel=1e-5)
    epoch = [r for r in metrics(tmp_path) if r["stage"] == "student" and "train_acc" in r]
    assert epoch and "loss_hybrid1" in epoch[-1]


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(distill.trainer.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(distill.trainer.os, "getloadavg", lambda: (0.3, 0.0, 0.0), raising=False)
    assert default_threads(1) == 16 and default_threads(2) == 8
    monkeypatch.setattr(distill.trainer.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(distill.trainer.os, "getloadavg", lambda: (1.7, 0.0, 0.0), raising=False)
    assert default_threads(1) == 1
    monkeypatch.setattr(distill.trainer.os, "getloadavg", lambda: (5.0, 0.0, 0.0), raising=False)
    assert default_threads(1) == 1


def test_resume_keeps_the_threads_the_run_chose(tmp_path):
    args = [a for a in QUICK if a not in ("--threads", "1")]
    first = main([*args, "--threads", "2", "--max-steps", "2", "--out", str(tmp_path)])
    assert first["threads"] == 2
    torch.set_num_threads(1)
    again = main(["--resume", "--out", str(tmp_path)])
    assert again["threads"] == 2 and again["student_acc"] == first["student_acc"]


def test_is_best_keeps_the_first_of_equals():
    assert is_best([{"val_acc": 0.5}])
    assert not is_best([{"val_acc": 0.5}, {"val_acc": 0.5}])
    assert is_best([{"val_acc": 0.5}, {"val_acc": 0.4}, {"val_acc": 0.6}])
    assert not is_best([{"test_acc": 0.5}])


def test_tensorboard_scalars(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    args = [*QUICK, "--method", "blockwise", "--max-steps", "3", "--log-every", "1", "--log", "tensorboard"]
    main([*args, "--out", str(tmp_path)])
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"teacher/loss", "teacher/test_acc", "student/loss_hybrid1", "student/train_acc", "student/val_acc"} <= tags
    assert [e.step for e in events.Scalars("student/loss")] == [1, 2, 3]
