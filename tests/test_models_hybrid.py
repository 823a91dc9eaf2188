"""HybridNet: one student traversal feeds every branch; the teacher is frozen but passes gradients through."""

import pytest
import torch

from models import HybridNet, create_model


def make_hybrid(student_name="tiny_resnet", teacher_name="tiny_resnet", **kwargs) -> HybridNet:
    student = create_model(student_name, kind="snn", T=3, in_channels=1, num_classes=4)
    teacher = create_model(teacher_name, kind="ann", in_channels=1, num_classes=4)
    return HybridNet(student, teacher, **kwargs)


def test_outputs_and_alignment_modules(seed):
    hybrid = make_hybrid().train()
    out = hybrid(torch.rand(2, 1, 8, 8))
    assert list(out) == ["student", "hybrid1", "hybrid2", "teacher"]
    assert all(v.shape == (2, 4) and torch.isfinite(v).all() for v in out.values())
    assert sorted(hybrid.align) == ["1", "2"]
    assert list(make_hybrid(splits=(2,))(torch.rand(2, 1, 8, 8))) == ["student", "hybrid2", "teacher"]


@pytest.mark.parametrize("mode", ["bptt", "rate"])
def test_branch_equals_the_teacher_tail_by_hand(mode, seed):
    hybrid = make_hybrid().train()
    x = torch.rand(4, 1, 8, 8)
    out = hybrid(x, mode=mode)
    _, features = hybrid.student(x, mode=mode, return_features=True)
    teacher = hybrid.teacher
    for k in hybrid.splits:
        h = hybrid.align[str(k)](features[k - 1])
        for stage in teacher.stages[k:]:
            h = stage(h)
        torch.testing.assert_close(out[f"hybrid{k}"], teacher.head(h))
    torch.testing.assert_close(out["teacher"], teacher(x))


def test_teacher_gets_no_gradient_student_and_align_do(seed):
    hybrid = make_hybrid()
    hybrid.train()
    assert hybrid.student.training and not hybrid.teacher.training
    assert not any(m.training for m in hybrid.teacher.modules())
    out = hybrid(torch.rand(4, 1, 8, 8), mode="rate")
    assert not out["teacher"].requires_grad
    sum(out[f"hybrid{k}"].sum() for k in hybrid.splits).backward()
    assert all(p.grad is None for p in hybrid.teacher.parameters())
    assert all(not p.requires_grad for p in hybrid.teacher.parameters())
    # The hybrids alone reach the student's stem and stages 1..K-1 through the teacher's tail, and every phi_k.
    assert hybrid.student.stem.conv.weight.grad.abs().sum() > 0
    assert hybrid.student.stages[1][0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hybrid.align.parameters())
    trainable = {id(p) for p in hybrid.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in hybrid.student_parameters()}


def test_one_student_traversal(seed):
    hybrid = make_hybrid()
    calls = []
    hybrid.student.stem.conv.register_forward_hook(lambda *args: calls.append(1))
    hybrid(torch.rand(2, 1, 8, 8))
    assert len(calls) == 1


def test_channels_may_differ_between_student_and_teacher(seed):
    """A tiny_resnet student (8-16-32 channels) under a resnet20 teacher (16-32-64): phi maps the channels."""
    hybrid = make_hybrid("tiny_resnet", "resnet20").train()
    assert hybrid.align["1"][0].weight.shape == (16, 8, 1, 1)
    assert hybrid.align["2"][0].weight.shape == (32, 16, 1, 1)
    out = hybrid(torch.rand(2, 1, 8, 8), mode="bptt")
    assert all(v.shape == (2, 4) for v in out.values())


def test_eval_mode_builds_no_graph(seed):
    hybrid = make_hybrid().eval()
    out = hybrid(torch.rand(2, 1, 8, 8))
    assert not any(v.requires_grad for v in out.values())


def test_sequence_input_teacher_sees_the_mean_frame(seed):
    student = create_model("tiny_vgg", kind="snn", T=3, in_channels=2)
    teacher = create_model("tiny_vgg", kind="ann", in_channels=2)
    hybrid = HybridNet(student, teacher, splits=(1,))
    frames = (torch.rand(3, 2, 2, 16, 16) < 0.3).float()
    out = hybrid(frames, mode="rate")
    torch.testing.assert_close(out["teacher"], teacher(frames.mean(0)))


def test_student_starts_from_the_teacher(seed):
    hybrid = make_hybrid()
    hybrid.student.load_state_dict(hybrid.teacher.state_dict())
    for (name, p), q in zip(hybrid.student.named_parameters(), hybrid.teacher.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("splits", [(0,), (3,), (1, 1), (1.0,), (True,)])
def test_splits_out_of_range(splits):
    with pytest.raises(ValueError, match=r"splits must be distinct ints in \[1, 2\] \(K=3 stages\)"):
        make_hybrid(splits=splits)


def test_splits_not_a_sequence():
    with pytest.raises(TypeError, match=r"splits must be None or a sequence of ints in \[1, 2\], got 1"):
        make_hybrid(splits=1)


def test_mismatched_student_and_teacher():
    student = create_model("tiny_resnet", kind="snn")
    with pytest.raises(ValueError, match="student kind='snn' and teacher kind='ann'"):
        HybridNet(student, create_model("tiny_resnet", kind="snn"))
    with pytest.raises(ValueError, match="same number of stages"):
        HybridNet(student, create_model("resnet18", kind="ann"))
    with pytest.raises(ValueError, match="align must be one of"):
        HybridNet(student, create_model("tiny_resnet", kind="ann"), align="mlp")
    with pytest.raises(ValueError, match="align='identity' needs equal channels"):
        HybridNet(student, create_model("resnet20", kind="ann"), align="identity")
