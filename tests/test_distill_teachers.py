"""Teachers a user brings: another architecture than the student's, weights from a state_dict file, fine-tuning."""

import json

import pytest
import torch

from distill.run import main
from models import create_model

QUICK = ["--train-subset", "64", "--test-subset", "32", "--batch-size", "32", "--progress", "off", "--max-steps", "2"]


@pytest.mark.parametrize("method", ["kd", "ckd"])
def test_distill_from_a_teacher_of_another_architecture(tmp_path, method):
    args = [*QUICK, "--method", method, "--teacher-arch", "tiny_vgg", "--init", "scratch", "--out", str(tmp_path)]
    results = main(args)
    teacher = torch.load(tmp_path / "teacher.pt", weights_only=True)["model"]
    assert any(name.startswith("stages.0.conv1") for name in teacher)  # tiny_vgg's layout, not tiny_resnet's
    assert 0 <= results["student_acc"] <= 1
    assert "tiny_vgg -> tiny_resnet" in (tmp_path / "report.md").read_text()


def test_blockwise_needs_matching_stages_and_names_both(tmp_path):
    args = [*QUICK, "--method", "blockwise", "--teacher-arch", "tiny_vgg", "--init", "scratch"]
    message = (
        r"--teacher-arch tiny_vgg has 3 stages of sizes \[\(4, 4\), \(2, 2\), \(1, 1\)\], --arch tiny_resnet has 3 "
        r"of sizes \[\(8, 8\), \(4, 4\), \(2, 2\)\]"
    )
    with pytest.raises(SystemExit, match=message):
        main([*args, "--out", str(tmp_path)])


def test_student_cannot_start_from_a_teacher_of_another_architecture(tmp_path):
    with pytest.raises(SystemExit, match="--teacher-arch is tiny_vgg and --arch is tiny_resnet; pass --init scratch"):
        main([*QUICK, "--method", "kd", "--init", "teacher", "--teacher-arch", "tiny_vgg", "--out", str(tmp_path)])


def test_teacher_from_a_plain_state_dict(tmp_path):
    torch.manual_seed(0)
    teacher = create_model("tiny_resnet", num_classes=10, in_channels=1)
    torch.save(teacher.state_dict(), tmp_path / "teacher_state.pt")
    out = tmp_path / "run"
    results = main([*QUICK, "--method", "kd", "--teacher", str(tmp_path / "teacher_state.pt"), "--out", str(out)])
    assert results["teacher_time_s"] == 0.0
    loaded = torch.load(out / "checkpoint.pt", weights_only=False)
    assert loaded["stage"] == "student"


def test_teacher_weights_with_another_head_are_fine_tuned(tmp_path, capsys):
    """A 1000-class state_dict: --teacher (as it is) refuses it, --teacher-weights fine-tunes it with a new head."""
    torch.manual_seed(0)
    source = create_model("tiny_resnet", num_classes=1000, in_channels=1)
    torch.save(source.state_dict(), tmp_path / "imagenet_head.pt")
    with pytest.raises(SystemExit, match="its head has 1000 classes, the data set 10; pass it as --teacher-weights"):
        main([*QUICK, "--teacher", str(tmp_path / "imagenet_head.pt"), "--out", str(tmp_path / "as_is")])
    args = [*QUICK, "--method", "kd", "--teacher-weights", str(tmp_path / "imagenet_head.pt")]
    with pytest.raises(SystemExit, match="which --teacher-epochs 0 would leave untrained"):
        main([*args, "--teacher-epochs", "0", "--out", str(tmp_path / "untrained")])
    args += ["--teacher-epochs", "1"]
    main([*args, "--out", str(tmp_path / "tuned")])
    assert "head of 1000 classes replaced" in capsys.readouterr().err
    teacher = torch.load(tmp_path / "tuned" / "teacher.pt", weights_only=True)["model"]
    assert not torch.equal(teacher["stem.conv.weight"], source.stem.conv.weight)  # fine-tuned ...
    assert torch.allclose(teacher["stem.conv.weight"], source.stem.conv.weight, atol=0.1)  # ... from the file's
    assert teacher["head.fc.weight"].shape == (10, 32)
    with pytest.raises(SystemExit, match="exclude each other"):
        main([*args, "--teacher", str(tmp_path / "imagenet_head.pt"), "--out", str(tmp_path / "both")])


def test_student_checkpoint_is_not_a_teacher(tmp_path):
    main([*QUICK, "--method", "direct", "--teacher-epochs", "0", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="holds a 'student' stage, not a teacher"):
        main([*QUICK, "--teacher", str(tmp_path / "a" / "student.pt"), "--out", str(tmp_path / "b")])
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any(line["stage"] == "student" for line in lines)


def test_blockwise_with_a_larger_teacher_of_the_same_stages(tmp_path):
    """resnet20 (16/32/64 channels) teaches tiny_resnet (8/16/32): the alignment modules map the channels."""
    args = [*QUICK, "--method", "blockwise", "--teacher-arch", "resnet20", "--init", "scratch", "--log-every", "1"]
    main([*args, "--out", str(tmp_path)])
    hybrid = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert hybrid["align.1.0.weight"].shape == (16, 8, 1, 1) and hybrid["align.2.0.weight"].shape == (32, 16, 1, 1)
