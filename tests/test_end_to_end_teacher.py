"""The whole user workflow from the command line: a torchvision ResNet-34 teacher from a weights file is fine-tuned
on an image folder and distilled by kd into a SpikeKD ResNet-18 student; the student is evaluated, loaded and
exported, and each gives the run's reported accuracy or logits."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.datasets import load_dataset
from models import export, load_student

ROOT = Path(__file__).resolve().parent.parent


def command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m ...` in a fresh process that imports SpikeKD from this checkout (and not torchvision)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchvision_teacher_to_spiking_student(torchvision, tmp_path, write_image_folder):
    classes = {"cat": 12, "dog": 12}
    write_image_folder(tmp_path / "images", {"train": classes, "val": {"cat": 6, "dog": 6}}, size=40, suffix=".png")
    torch.manual_seed(0)
    teacher = torchvision.models.resnet34()  # random weights, ImageNet's 1000 classes
    torch.save(teacher.state_dict(), tmp_path / "resnet34.pth")

    run_dir = tmp_path / "run"
    args = ["--dataset", "imagenet", "--data-dir", str(tmp_path / "images"), "--image-size", "32"]
    args += ["--method", "kd", "--train", "bptt", "--arch", "resnet18", "--teacher-arch", "resnet34"]
    args += ["--teacher-weights", str(tmp_path / "resnet34.pth"), "--init", "scratch", "--time-steps", "2"]
    args += ["--teacher-epochs", "1", "--epochs", "1", "--batch-size", "8", "--lr", "0.01", "--threads", "1"]
    done = command(["-m", "distill.run", *args, "--out", str(run_dir)], tmp_path)
    assert "head of 1000 classes replaced" in done.stderr
    assert "resnet34 -> resnet18" in done.stdout
    results = json.loads((run_dir / "results.json").read_text())

    # The teacher started from the file's weights and was fine-tuned: its stem moved away from them.
    tuned = torch.load(run_dir / "teacher.pt", weights_only=True)["model"]
    assert tuned["head.fc.weight"].shape == (2, 512)
    assert tuned["stages.3.2.conv2.weight"].shape == teacher.layer4[2].conv2.weight.shape
    assert not torch.equal(tuned["stem.conv.weight"], teacher.conv1.weight)
    assert torch.allclose(tuned["stem.conv.weight"], teacher.conv1.weight, atol=0.05)

    evaluated = command(["-m", "distill.evaluate", str(run_dir)], tmp_path).stdout
    printed = float(re.search(r"accuracy:\s+([\d.]+) %", evaluated)[1])
    assert printed == pytest.approx(100 * results["student_acc"], abs=0.005)

    student = load_student(run_dir)
    val = load_dataset("imagenet", "test", tmp_path / "images", image_size=32)
    images, labels = val.batch(torch.arange(len(val)), normalize=False)
    logits = student(images)
    assert int((logits.argmax(-1) == labels).sum()) / len(labels) == pytest.approx(results["student_acc"], abs=1e-9)

    program = export(student, images)
    torch.testing.assert_close(program.module()(images), logits, atol=0, rtol=0)
