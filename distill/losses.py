"""Distillation losses: functions take the student's tensors first, then the teacher's; modules wrap them.

Logits are ``[B, K]`` (an SNN's logits are the mean over time of its per-step logits). Every KL term is
``KL(p_teacher || p_student)`` averaged over the batch (``reduction="batchmean"``) and scaled by ``tau**2`` so
that its gradient keeps the size of the cross-entropy's when the temperature changes (Hinton et al. 2015).
Teacher tensors are detached here: a loss never trains the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BlockwiseLoss",
    "CKDLoss",
    "FeatureAlignmentLoss",
    "KDLoss",
    "NLDLoss",
    "SAMDLoss",
    "blockwise_loss",
    "blockwise_terms",
    "class_activation_map",
    "cross_entropy",
    "feature_alignment_loss",
    "kd_loss",
    "nld_loss",
    "samd_loss",
    "spike_activation_map",
]


def _check_tau(tau: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")


def _soft_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """``tau^2 * mean_b KL(softmax(t_b / tau) || softmax(s_b / tau))`` over the last dimension."""
    _check_tau(tau)
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
    return kl.mean() * tau**2


def cross_entropy(student_logits: Tensor, target: Tensor) -> Tensor:
    """``CE(z, y) = mean_b [-log softmax(z_b)[y_b]]``. ``student_logits`` ``[B, K]``, ``target`` ``[B]`` int64."""
    return F.cross_entropy(student_logits.float(), target)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 4.0) -> Tensor:
    """Hinton knowledge distillation: ``tau^2 * KL(p_T || p_S)`` with ``p = softmax(z / tau)``.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015 (arXiv 1503.02531).
    Both logits ``[B, K]``; returns a scalar.
    """
    return _soft_kl(student_logits, teacher_logits, tau)


def feature_alignment_loss(student_feature: Tensor, teacher_feature: Tensor, align: nn.Module | None = None) -> Tensor:
    """Feature alignment: ``mean((phi(r_S) - f_T)^2)``, the MSE between the student's rate feature after the
    alignment module ``phi`` (identity when ``align`` is None) and the teacher's feature, both ``[B, C, H, W]``.

    As in the alignment term of Yang et al., CVPR 2025 (arXiv 2503.16572) and FitNets (Romero et al., 2015).
    """
    projected = student_feature if align is None else align(student_feature)
    if projected.shape != teacher_feature.shape:
        raise ValueError(
            f"feature_alignment_loss: student feature {tuple(projected.shape)} (after align) does not match "
            f"teacher feature {tuple(teacher_feature.shape)}"
        )
    return F.mse_loss(projected.float(), teacher_feature.detach().float())


def blockwise_terms(
    outputs: Sequence[Tensor] | Mapping[str, Tensor],
    target: Tensor,
    teacher_logits: Tensor,
    alpha: float = 1.0,
    tau: float = 4.0,
) -> dict[str, Tensor]:
    """The per-branch terms of ``blockwise_loss``: ``{o: CE(z_o, y) + alpha * tau^2 * KL(p_A || p_o)}``, keyed by the
    mapping's keys (``"student"``, ``"hybrid1"``, ...) or, for a sequence, by ``"branch0"``, ``"branch1"``, ..."""
    if isinstance(outputs, Mapping):
        branches = dict(outputs)
    else:
        branches = {f"branch{i}": z for i, z in enumerate(outputs)}
    if not branches:
        raise ValueError("blockwise_loss: outputs is empty; give at least the student's logits")
    return {o: cross_entropy(z, target) + alpha * _soft_kl(z, teacher_logits, tau) for o, z in branches.items()}


def blockwise_loss(
    outputs: Sequence[Tensor] | Mapping[str, Tensor],
    target: Tensor,
    teacher_logits: Tensor,
    alpha: float = 1.0,
    tau: float = 4.0,
    weights: Mapping[str, float] | None = None,
) -> Tensor:
    """Block-wise hybrid loss of ANN-guided distillation through hybrid block-wise replacement:

        L = sum_{o in {S, M_1, ..., M_{K-1}}} w_o [ CE(z_o, y) + alpha * tau^2 * KL(p_A || p_o) ]

    where ``z_S`` are the pure SNN's logits, ``z_{M_k}`` those of the hybrid that runs SNN stages 1..k, the
    alignment phi_k and the ANN's frozen stages k+1..K, and ``p_A = softmax(z_A / tau)`` is the ANN's.
    Yang et al., "Efficient ANN-Guided Distillation: Aligning Rate-based Features of Spiking Neural Networks
    through Hybrid Block-wise Replacement", CVPR 2025 (arXiv 2503.16572).

    ``outputs``: the logits ``[B, K]`` of every branch (a mapping such as ``HybridNet``'s output without its
    ``"teacher"`` entry, or a sequence); ``target`` ``[B]``; ``teacher_logits`` ``[B, K]``; ``weights``: ``w_o`` by
    branch name (``blockwise_terms``' keys; a missing name, or None, weighs 1).
    """
    terms = blockwise_terms(outputs, target, teacher_logits, alpha, tau)
    weights = weights or {}
    return sum(weights.get(o, 1.0) * term for o, term in terms.items())


def class_activation_map(feature: Tensor, fc_weight: Tensor, classes: Tensor) -> Tensor:
    """Class activation map (Zhou et al., CVPR 2016): ``CAM_b(h, w) = sum_c W[y_b, c] * F_b(c, h, w)``.

    ``feature`` ``[B, C, H, W]`` (the teacher's last-stage feature), ``fc_weight`` ``[K, C]`` (its head's
    classifier), ``classes`` ``[B]`` (the class to explain, e.g. the teacher's prediction). Returns ``[B, H, W]``.
    """
    weights = fc_weight[classes]  # [B, C]
    return torch.einsum("bc,bchw->bhw", weights.float(), feature.float())


def spike_activation_map(spike_rate: Tensor, time_steps: int = 1) -> Tensor:
    """Spike activation map: the spike count per position, ``SAM_b(h, w) = sum_t sum_c S_t,b(c, h, w)``.

    ``spike_rate`` ``[B, C, H, W]`` is the mean over time of the spikes, so the count is ``T * sum_c rate``;
    ``time_steps`` is ``T``. A ``[T, B, C, H, W]`` spike tensor is also accepted (then ``time_steps`` is unused).
    Returns ``[B, H, W]``.
    """
    if spike_rate.dim() == 5:
        return spike_rate.float().sum(dim=(0, 2))
    return spike_rate.float().sum(dim=1) * time_steps


SAMD_NORMS = ("zscore", "minmax", "none")
NLD_FORMS = ("additive", "mixture")


def samd_loss(student_map: Tensor, teacher_map: Tensor, tau: float = 1.0, norm: str = "zscore") -> Tensor:
    """Saliency-scaled activation map distillation (SAMD), with ``norm="zscore"``:

        L = tau^2 * mean_b KL( softmax_p(CAM_b / tau) || softmax_p(SAM_b / tau) )

    where the softmax runs over the ``H * W`` positions p, ``CAM`` is the teacher ANN's class activation map
    and ``SAM`` the student SNN's spike activation map (see ``class_activation_map``, ``spike_activation_map``),
    each first scaled to zero mean and unit standard deviation over its positions, ``(M - mean_p M) /
    (std_p M + 1e-6)``, so that the loss compares where the saliency lies, not the scale of spike counts against
    that of ANN activations (which would make both softmaxes one-hot). ``norm="minmax"`` is the CKDSNN code's form
    (``compute_cam``, ``getForwardCAM`` in ``plt_train_kd_ckd_snn.py``): ``relu(CAM)``, each map min-max scaled to
    [0, 1] over the whole batch, the same softmaxes, and the KL without the ``tau^2`` factor; on [0, 1] maps at
    ``tau = 2`` both softmaxes are close to uniform, a much weaker constraint than the z-scored one.
    ``norm="none"`` takes the maps as they are. When their sizes differ the student's map is average-pooled to the
    teacher's.
    Liu et al., "A Closer Look at Knowledge Distillation in Spiking Neural Network Training", AAAI 2026
    (arXiv 2511.06902). Both maps ``[B, H, W]``; returns a scalar.
    """
    if norm not in SAMD_NORMS:
        raise ValueError(f"samd_loss: norm must be one of {list(SAMD_NORMS)}, got {norm!r}")
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        student_map = F.adaptive_avg_pool2d(student_map.unsqueeze(1), teacher_map.shape[-2:]).squeeze(1)
    student_map, teacher_map = student_map.flatten(1).float(), teacher_map.flatten(1).float().detach()
    if norm == "zscore":
        return _soft_kl(_standardize(student_map), _standardize(teacher_map), tau)
    if norm == "none":
        return _soft_kl(student_map, teacher_map, tau)
    return _soft_kl(_batch_min_max(student_map), _batch_min_max(teacher_map.relu()), tau) / tau**2


def _batch_min_max(x: Tensor) -> Tensor:
    """``(x - min x) / (max x - min x + 1e-8)`` over the whole tensor."""
    return (x - x.min()) / (x.max() - x.min() + 1e-8)


def _standardize(x: Tensor) -> Tensor:
    """Zero mean, unit (population) standard deviation along the last dimension."""
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, correction=0) + 1e-6)


def nld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: float = 4.0,
    noise_scale: float = 0.1,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    form: str = "additive",
) -> Tensor:
    """Noise-smoothed logits distillation (NLD): KD against the student's distribution smoothed by Gaussian noise whose
    size follows the student's own logit statistics. ``form="additive"``:

        z~_S = z_S + noise_scale * std(z_S) * eps,   eps ~ N(0, I),   std over the K classes of each sample
        L    = tau^2 * KL( softmax(z_T / tau) || softmax(z~_S / tau) )

    with ``std(z_S)`` detached (the noise is a smoothing, not a path for gradients); the default ``noise_scale = 0.1``
    is the paper's lambda (whose noise, ``lambda * eps``, is not scaled by the logits' spread). ``form="mixture"`` is
    the CKDSNN code's (``smooth_noise_softmax``, ``soft_loss_smooth`` in ``utils/utils.py``): the student's
    distribution is the mixture ``(1 - noise_scale) softmax(z_S / tau) + noise_scale softmax((mean(z_S) + var(z_S) eps)
    / tau)``, mean and (unbiased) variance over the classes, not detached; its ``noise_weight: 0.9`` is
    ``noise_scale = 0.1`` here.
    Liu et al., AAAI 2026 (arXiv 2511.06902). ``noise`` ``[B, K]`` fixes ``eps`` (tests); otherwise it is drawn from
    ``generator``.
    """
    if form not in NLD_FORMS:
        raise ValueError(f"nld_loss: form must be one of {list(NLD_FORMS)}, got {form!r}")
    if noise is None:
        noise = torch.randn(student_logits.shape, generator=generator)  # a CPU generator, whatever the device
    noise = noise.to(student_logits.device, torch.float32)
    z = student_logits.float()
    if form == "additive":
        smoothed = z + noise_scale * z.detach().std(dim=-1, keepdim=True) * noise
        return _soft_kl(smoothed, teacher_logits, tau)
    _check_tau(tau)
    noisy = z.mean(dim=-1, keepdim=True) + noise * z.var(dim=-1, keepdim=True)
    mixture = (1 - noise_scale) * F.softmax(z / tau, dim=-1) + noise_scale * F.softmax(noisy / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    kl = F.kl_div(mixture.clamp_min(1e-12).log(), log_p_t, reduction="none", log_target=True).sum(-1)
    return kl.mean() * tau**2


class KDLoss(nn.Module):
    """``CE(z_S, y) + alpha * kd_loss(z_S, z_T, tau)``."""

    def __init__(self, alpha: float = 1.0, tau: float = 4.0):
        super().__init__()
        _check_tau(tau)
        self.alpha, self.tau = alpha, tau

    def terms(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The loss's weighted terms by name: ``{"ce", "kd"}``."""
        return dict(
            ce=cross_entropy(student_logits, target), kd=self.alpha * kd_loss(student_logits, teacher_logits, self.tau)
        )

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        return sum(self.terms(student_logits, teacher_logits, target).values())


class FeatureAlignmentLoss(nn.Module):
    """``feature_alignment_loss`` with its alignment module ``phi`` (1x1 conv + BN by default) as a submodule."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.align = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, 1, bias=False), nn.BatchNorm2d(teacher_channels)
        )

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return feature_alignment_loss(student_feature, teacher_feature, self.align)


class BlockwiseLoss(nn.Module):
    """``blockwise_loss`` on the dict of a ``models.HybridNet``: every key but ``"teacher"`` is a branch, and
    ``"teacher"`` gives ``p_A``."""

    def __init__(self, alpha: float = 1.0, tau: float = 4.0):
        super().__init__()
        _check_tau(tau)
        self.alpha, self.tau = alpha, tau

    def terms(self, outputs: Mapping[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """The per-branch terms (``blockwise_terms``): ``{"student", "hybrid1", ...}``."""
        branches = {k: v for k, v in outputs.items() if k != "teacher"}
        return blockwise_terms(branches, target, outputs["teacher"], self.alpha, self.tau)

    def forward(self, outputs: Mapping[str, Tensor], target: Tensor) -> Tensor:
        return sum(self.terms(outputs, target).values())


class SAMDLoss(nn.Module):
    """``samd_loss`` from the raw tensors: the student's last rate feature ``[B, C_s, H, W]``, the teacher's last
    feature ``[B, C_t, H', W']``, the teacher's classifier weight ``[K, C_t]`` and logits ``[B, K]`` (its
    prediction picks the class of the CAM) and the number of time steps ``T``."""

    def __init__(self, tau: float = 1.0, norm: str = "zscore"):
        super().__init__()
        _check_tau(tau)
        self.tau, self.norm = tau, norm

    def forward(
        self,
        student_feature: Tensor,
        teacher_feature: Tensor,
        fc_weight: Tensor,
        teacher_logits: Tensor,
        time_steps: int,
    ) -> Tensor:
        cam = class_activation_map(teacher_feature.detach(), fc_weight.detach(), teacher_logits.argmax(-1))
        sam = spike_activation_map(student_feature, time_steps)
        return samd_loss(sam, cam, self.tau, self.norm)


class NLDLoss(nn.Module):
    """``nld_loss`` as a module."""

    def __init__(self, tau: float = 4.0, noise_scale: float = 0.1, form: str = "additive"):
        super().__init__()
        _check_tau(tau)
        self.tau, self.noise_scale, self.form = tau, noise_scale, form

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, generator: torch.Generator | None = None):
        return nld_loss(student_logits, teacher_logits, self.tau, self.noise_scale, generator=generator, form=self.form)


class CKDLoss(nn.Module):
    """The ``ckd`` method (Liu et al., AAAI 2026): ``CE + alpha * NLD + beta * SAMD``."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        tau: float = 4.0,
        map_tau: float = 1.0,
        noise_scale: float = 0.1,
        samd_norm: str = "zscore",
        nld_form: str = "additive",
    ):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.nld = NLDLoss(tau, noise_scale, nld_form)
        self.samd = SAMDLoss(map_tau, samd_norm)

    def terms(
        self,
        student_logits: Tensor,
        student_feature: Tensor,
        teacher_logits: Tensor,
        teacher_feature: Tensor,
        fc_weight: Tensor,
        target: Tensor,
        time_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The loss's weighted terms by name: ``{"ce", "nld", "samd"}``."""
        return dict(
            ce=cross_entropy(student_logits, target),
            nld=self.alpha * self.nld(student_logits, teacher_logits, generator),
            samd=self.beta * self.samd(student_feature, teacher_feature, fc_weight, teacher_logits, time_steps),
        )

    def forward(self, *args, **kwargs) -> Tensor:
        """``terms``' arguments; their sum."""
        return sum(self.terms(*args, **kwargs).values())
