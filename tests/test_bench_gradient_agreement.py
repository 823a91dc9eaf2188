"""``python -m bench.gradient_agreement``: rate-mode and BPTT weight gradients compared, stage by stage."""

import pytest
import torch

from bench.gradient_agreement import agreement, group_of, main
from models import create_model


def _row(lines: list[str], name: str, T: int) -> list[str]:
    line = next(line for line in lines if line.startswith(f"| {name} | {T} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_at_one_time_step_rate_mode_is_bptt_and_at_four_it_is_not(tmp_path):
    out = tmp_path / "agreement.md"
    lines = main(["--arch", "tiny_resnet", "--time-steps", "1,4", "--seeds", "0,1", "--batch-size", "16",
                  "--out", str(out)])  # fmt: skip
    header = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert header == ["network", "T", "tau", "stem cos", "stage1 cos", "stage2 cos", "stage3 cos", "head cos",
                      "all cos", "all norm ratio"]  # fmt: skip
    assert _row(lines, "fresh tiny_resnet", 1)[3:] == ["1.00 +- 0.00"] * 7
    at_four = _row(lines, "fresh tiny_resnet", 4)
    assert at_four[7] == "1.00 +- 0.00"  # the head sees the same rate feature in both modes
    assert float(at_four[3].split()[0]) < 0.99  # the stem's gradient is rate-BP's approximation of BPTT's
    assert out.read_text().splitlines() == lines
    command = f"--arch tiny_resnet --time-steps 1,4 --seeds 0,1 --batch-size 16 --out {out}"
    assert lines[1] == f"Command: `python -m bench.gradient_agreement {command}`"
    with pytest.raises(SystemExit, match="--out must be a new file"):
        main(["--arch", "tiny_resnet", "--time-steps", "1", "--seeds", "0", "--out", str(out)])


def test_a_trained_student_is_probed_with_its_own_time_steps(tmp_path):
    net = create_model("tiny_resnet", kind="snn", T=2, tau=2.0, num_classes=10, in_channels=1)
    path = tmp_path / "run" / "student.pt"
    path.parent.mkdir()
    torch.save(dict(model=net.state_dict(), model_args=dict(name="tiny_resnet", kind="snn", num_classes=10,
                    in_channels=1, T=2, tau=2.0), input=dict(mean=[0.5], std=[0.25])), path)  # fmt: skip
    lines = main(["--student", str(path.parent), "--seeds", "0", "--batch-size", "8"])  # a run folder, or its file
    assert (
        _row(lines, "run", 2)[2] == "2"
        and main(["--student", str(path), "--seeds", "0", "--batch-size", "8"])[4:] == lines[4:]
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--time-steps", "0"], "--time-steps must be comma-separated integers >= 1, got '0'"),
        (["--neuron-tau", "0.5"], "--neuron-tau must be comma-separated numbers >= 1, got '0.5'"),
        (["--seeds", "a"], "--seeds must be comma-separated integers >= 0, got 'a'"),
        (["--batch-size", "1"], "--batch-size must be an integer >= 2"),
        (["--student", "missing.pt"], "not found: missing.pt"),
        (["--student", "missing.pt", "--time-steps", "4"], "drop --time-steps"),
    ],
)
def test_bad_arguments_are_named(argv, message):
    with pytest.raises(SystemExit, match=message):
        main(argv)


def test_groups_and_agreement_of_identical_and_opposite_gradients():
    names = ("stem.conv.weight", "stages.0.1.conv1.weight", "stages.2.0.bn.bias", "head.fc.bias")
    assert [group_of(n) for n in names] == ["stem", "stage1", "stage3", "head"]
    grads = {"stem.w": torch.tensor([1.0, 2.0]), "head.w": torch.tensor([3.0])}
    same = agreement(grads, grads)
    assert same["all"] == pytest.approx((1.0, 1.0)) and set(same) == {"stem", "head", "all"}
    opposite = agreement(grads, {k: -2 * v for k, v in grads.items()})
    assert opposite["stem"] == pytest.approx((-1.0, 2.0))
