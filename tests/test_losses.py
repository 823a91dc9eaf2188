"""Every loss against values worked out by hand on tiny tensors.

The numbers used throughout: softmax([ln 3, 0]) = [3/4, 1/4] and softmax([0, 0]) = [1/2, 1/2], so
KL([3/4, 1/4] || [1/2, 1/2]) = 3/4 ln(3/2) + 1/4 ln(1/2) = 3/4 ln 3 - ln 2.
"""

import math

import pytest
import torch
from torch import nn

from distill.losses import (
    BlockwiseLoss,
    CKDLoss,
    FeatureAlignmentLoss,
    KDLoss,
    NLDLoss,
    SAMDLoss,
    blockwise_loss,
    class_activation_map,
    cross_entropy,
    feature_alignment_loss,
    kd_loss,
    nld_loss,
    samd_loss,
    spike_activation_map,
)

LN3 = math.log(3.0)
KL_34_12 = 0.75 * LN3 - math.log(2.0)  # KL([3/4, 1/4] || [1/2, 1/2])


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_cross_entropy():
    # softmax([0, ln 3]) = [1/4, 3/4]; CE for class 1 = -ln(3/4)
    assert cross_entropy(t([0.0, LN3]), torch.tensor([1])).item() == pytest.approx(math.log(4 / 3), abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_loss_value_and_gradient(tau):
    student = t([0.0, 0.0]).requires_grad_()
    teacher = t([tau * LN3, 0.0])  # softmax(teacher / tau) = [3/4, 1/4]
    loss = kd_loss(student, teacher, tau)
    assert loss.item() == pytest.approx(tau**2 * KL_34_12, abs=1e-6)
    loss.backward()
    # d/dz_s tau^2 KL = tau (p_s - p_t)
    torch.testing.assert_close(student.grad, tau * t([0.5 - 0.75, 0.5 - 0.25]))


def test_kd_loss_batch_mean_and_teacher_not_trained():
    student = t([0.0, 0.0], [0.0, 0.0])
    teacher = t([LN3, 0.0], [0.0, 0.0]).requires_grad_()
    loss = kd_loss(student, teacher, 1.0)
    assert loss.item() == pytest.approx(KL_34_12 / 2, abs=1e-6)
    assert not loss.requires_grad


def test_kd_loss_rejects_bad_tau():
    with pytest.raises(ValueError, match="tau must be > 0"):
        kd_loss(t([0.0]), t([0.0]), 0.0)


def test_kd_module_adds_cross_entropy():
    student, teacher, y = t([0.0, 0.0]), t([LN3, 0.0]), torch.tensor([0])
    assert KDLoss(alpha=2.0, tau=1.0)(student, teacher, y).item() == pytest.approx(math.log(2) + 2 * KL_34_12, abs=1e-6)


def test_feature_alignment_loss():
    student = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    teacher = torch.zeros(1, 2, 1, 1)
    assert feature_alignment_loss(student, teacher).item() == pytest.approx(2.5)  # (1 + 4) / 2
    double = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        double.weight.copy_(2 * torch.eye(2).view(2, 2, 1, 1))
    assert feature_alignment_loss(student, teacher, double).item() == pytest.approx(10.0)  # (4 + 16) / 2
    with pytest.raises(ValueError, match="does not match"):
        feature_alignment_loss(student, torch.zeros(1, 3, 1, 1))


def test_feature_alignment_module_shapes():
    loss = FeatureAlignmentLoss(3, 5)(torch.rand(2, 3, 4, 4), torch.rand(2, 5, 4, 4))
    loss.backward()
    assert loss.item() > 0


def test_blockwise_loss():
    # S = [0, 0]: CE = ln 2, KL = 3/4 ln 3 - ln 2.  M_1 = [ln 3, 0]: CE = ln(4/3), KL = 0.
    outputs = {"student": t([0.0, 0.0]), "hybrid1": t([LN3, 0.0])}
    y, teacher = torch.tensor([0]), t([LN3, 0.0])
    expected = math.log(2) + KL_34_12 + math.log(4 / 3)
    assert blockwise_loss(outputs, y, teacher, alpha=1.0, tau=1.0).item() == pytest.approx(expected, abs=1e-6)
    assert blockwise_loss(list(outputs.values()), y, teacher, alpha=0.0, tau=1.0).item() == pytest.approx(
        math.log(2) + math.log(4 / 3), abs=1e-6
    )
    # the module takes HybridNet's dict and uses its "teacher" entry as p_A
    module = BlockwiseLoss(alpha=1.0, tau=1.0)
    assert module({**outputs, "teacher": teacher}, y).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="empty"):
        blockwise_loss({}, y, teacher)


def test_class_and_spike_activation_maps():
    feature = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # [1, 2, 1, 2]
    fc_weight = t([1.0, 2.0], [3.0, 4.0])
    torch.testing.assert_close(class_activation_map(feature, fc_weight, torch.tensor([1])), t([[3.0, 4.0]]))
    rate = torch.tensor([[[[0.5, 0.0]], [[0.25, 0.25]]]])
    torch.testing.assert_close(spike_activation_map(rate, time_steps=4), t([[3.0, 1.0]]))
    spikes = torch.stack([torch.ones(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)])  # [T=2, 1, 2, 1, 2]
    torch.testing.assert_close(spike_activation_map(spikes), t([[2.0, 2.0]]))


def test_samd_loss_raw_maps():
    student_map, teacher_map = torch.zeros(1, 1, 2), torch.tensor([[[LN3, 0.0]]])
    assert samd_loss(student_map, teacher_map, 1.0, norm="none").item() == pytest.approx(KL_34_12, abs=1e-6)
    # a 2x4 student map is average-pooled to the teacher's 1x2 grid
    big = torch.zeros(1, 2, 4)
    assert samd_loss(big, teacher_map, 1.0, norm="none").item() == pytest.approx(KL_34_12, abs=1e-6)


def test_samd_loss_standardized_maps():
    # [1, 3] and [0, 40] both standardise to [-1, 1]: same saliency, whatever the scale -> 0
    assert samd_loss(t([[1.0, 3.0]]), t([[0.0, 40.0]]), tau=1.0).item() == pytest.approx(0.0, abs=1e-6)
    # [0, 2] -> [-1, 1] against [1, 1] -> [0, 0]: softmax([-1, 1]) = [1, e^2] / (1 + e^2) against [1/2, 1/2]
    q = math.exp(2) / (1 + math.exp(2))
    expected = (1 - q) * math.log((1 - q) / 0.5) + q * math.log(q / 0.5)
    assert samd_loss(t([[1.0, 1.0]]), t([[0.0, 2.0]]), tau=1.0).item() == pytest.approx(expected, abs=1e-5)


def test_samd_module():
    # the teacher predicts class 1 -> CAM = [3, 4]; the student's rate gives SAM = [3, 1]
    feature_t = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    fc_weight = t([1.0, 2.0], [3.0, 4.0])
    rate = torch.tensor([[[[0.5, 0.0]], [[0.25, 0.25]]]])
    loss = SAMDLoss(tau=1.0)(rate, feature_t, fc_weight, t([0.0, 1.0]), time_steps=4)
    p_t = torch.softmax(t([-1.0, 1.0]), -1)  # CAM [3, 4] standardised
    p_s = torch.softmax(t([1.0, -1.0]), -1)  # SAM [3, 1] standardised
    assert loss.item() == pytest.approx((p_t * (p_t / p_s).log()).sum().item(), abs=1e-5)


def test_nld_loss_with_fixed_noise():
    # z_S = [1, -1]: std (unbiased) = sqrt 2; eps = [-1, 1] / sqrt 2 -> smoothed logits [0, 0]
    student = t([1.0, -1.0]).requires_grad_()
    noise = t([-1.0, 1.0]) / math.sqrt(2)
    loss = nld_loss(student, t([LN3, 0.0]), tau=1.0, noise_scale=1.0, noise=noise)
    assert loss.item() == pytest.approx(KL_34_12, abs=1e-6)
    loss.backward()
    # the noise's scale is detached: the gradient is that of KD at the smoothed logits
    torch.testing.assert_close(student.grad, t([0.5 - 0.75, 0.5 - 0.25]))
    # no noise -> plain KD
    assert nld_loss(student, t([LN3, 0.0]), tau=1.0, noise_scale=0.0).item() == pytest.approx(
        kd_loss(student, t([LN3, 0.0]), 1.0).item(), abs=1e-6
    )


def test_nld_module_is_deterministic_for_a_generator():
    z_s, z_t = torch.randn(4, 10), torch.randn(4, 10)
    a = NLDLoss()(z_s, z_t, torch.Generator().manual_seed(3))
    b = NLDLoss()(z_s, z_t, torch.Generator().manual_seed(3))
    assert a.item() == b.item()


def test_ckd_loss_is_the_sum_of_its_parts():
    z_s, z_t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 2])
    f_s, f_t, w = torch.rand(2, 4, 2, 2), torch.rand(2, 5, 2, 2), torch.randn(3, 5)
    total = CKDLoss(alpha=0.5, beta=2.0, tau=2.0, map_tau=1.0)(
        z_s, f_s, z_t, f_t, w, y, time_steps=4, generator=torch.Generator().manual_seed(1)
    )
    parts = (
        cross_entropy(z_s, y)
        + 0.5 * NLDLoss(2.0)(z_s, z_t, torch.Generator().manual_seed(1))
        + 2.0 * SAMDLoss(1.0)(f_s, f_t, w, z_t, 4)
    )
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)


def test_samd_min_max_form_is_ckdsnn_s():
    # relu(CAM) and a batch-global min-max: a teacher map [-5, 2] becomes [0, 1], a student map [1, 3] too -> 0
    assert samd_loss(t([[1.0, 3.0]]), t([[-5.0, 2.0]]), tau=2.0, norm="minmax").item() == pytest.approx(0, abs=1e-6)
    # [0, 1] against [1, 0] at tau 2, no tau^2: KL(softmax([1, 0] / 2) || softmax([0, 1] / 2))
    p = torch.softmax(t([0.5, 0.0]), -1)
    expected = (p * (p / p.flip(-1)).log()).sum().item()
    assert samd_loss(t([[0.0, 1.0]]), t([[1.0, 0.0]]), tau=2.0, norm="minmax").item() == pytest.approx(
        expected, abs=1e-6
    )
    with pytest.raises(ValueError, match="norm must be one of"):
        samd_loss(t([[0.0, 1.0]]), t([[1.0, 0.0]]), norm="max")


def test_nld_mixture_form_is_ckdsnn_s():
    student, teacher = t([1.0, -1.0]), t([LN3, 0.0])
    # no noise weight: plain KD
    assert nld_loss(student, teacher, tau=2.0, noise_scale=0.0, form="mixture").item() == pytest.approx(
        kd_loss(student, teacher, 2.0).item(), abs=1e-6
    )
    # mean 0, variance 2: noise [1, -1] gives noisy logits [2, -2]
    noise = t([1.0, -1.0])
    q = 0.9 * torch.softmax(student / 2, -1) + 0.1 * torch.softmax(t([2.0, -2.0]) / 2, -1)
    p = torch.softmax(teacher / 2, -1)
    expected = 4 * (p * (p / q).log()).sum().item()
    got = nld_loss(student, teacher, tau=2.0, noise_scale=0.1, noise=noise, form="mixture")
    assert got.item() == pytest.approx(expected, abs=1e-6)
