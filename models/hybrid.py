"""Hybrid block-wise replacement (Yang et al., CVPR 2025, Fig. 1): SNN prefixes followed by the frozen ANN's tails.

For each split k in 1..K-1, hybrid M_k is

    x -> SNN stem + stages 1..k -> rate feature r_k [B, C_k, H_k, W_k] -> phi_k (alignment, 1x1 conv + BN)
      -> teacher stages k+1..K and head -> logits [B, classes]

All branches share one traversal of the student. The teacher is frozen (eval mode, requires_grad False), but its
tail is differentiable, so each hybrid's loss reaches the student's stages 1..k through phi_k.

A random phi_k in front of a trained tail makes M_k start far worse than chance, with a gradient on the student's
first stages hundreds of times its own branch's. ``HybridNet.match_teacher_statistics`` starts each phi_k as the
identity where the channels match and with its BatchNorm's affine set to the teacher's per-channel mean and standard
deviation of f_k, so that what the tail receives has the statistics it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from models.network import Network

ALIGNS = ("conv_bn", "conv", "identity")
ALIGN_INITS = ("teacher_stats", "random")


def make_align(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """phi: [B, in_channels, H, W] -> [B, out_channels, H, W]."""
    if kind == "conv_bn":
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
    if kind == "conv":
        return nn.Conv2d(in_channels, out_channels, 1)
    if kind == "identity":
        if in_channels != out_channels:
            raise ValueError(f"align='identity' needs equal channels, got {in_channels} and {out_channels}")
        return nn.Identity()
    raise ValueError(f"align must be one of {list(ALIGNS)}, got {kind!r}")


class HybridNet(nn.Module):
    """The student SNN, its hybrids M_k for k in `splits` and the frozen ANN teacher, from one student traversal.

    splits None means every split 1..K-1. `align[str(k)]` maps the student's stage-k rate feature to the teacher's
    channels. The teacher is frozen in place.
    """

    def __init__(self, student: Network, teacher: Network, splits: Sequence[int] | None = None, align: str = "conv_bn"):
        super().__init__()
        if getattr(student, "kind", None) != "snn" or getattr(teacher, "kind", None) != "ann":
            raise ValueError(
                "HybridNet needs student kind='snn' and teacher kind='ann', got "
                f"{getattr(student, 'kind', type(student).__name__)!r} and "
                f"{getattr(teacher, 'kind', type(teacher).__name__)!r}"
            )
        if student.num_stages != teacher.num_stages or student.in_channels != teacher.in_channels:
            raise ValueError(
                "student and teacher must have the same number of stages and input channels, got "
                f"{student.num_stages} and {teacher.num_stages} stages, {student.in_channels} and "
                f"{teacher.in_channels} channels"
            )
        n = student.num_stages
        if splits is not None and not isinstance(splits, (list, tuple, range)):
            raise TypeError(f"splits must be None or a sequence of ints in [1, {n - 1}], got {splits!r}")
        splits = tuple(range(1, n)) if splits is None else tuple(splits)
        bad = [k for k in splits if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n - 1]
        if bad or len(set(splits)) != len(splits):
            raise ValueError(f"splits must be distinct ints in [1, {n - 1}] (K={n} stages), got {list(splits)}")
        self.student, self.teacher = student, teacher
        self.splits = tuple(sorted(splits))
        channels = [(student.stage_channels[k - 1], teacher.stage_channels[k - 1]) for k in self.splits]
        self.align = nn.ModuleDict({str(k): make_align(align, *c) for k, c in zip(self.splits, channels, strict=True)})
        teacher.requires_grad_(False)
        teacher.eval()

    def train(self, mode: bool = True) -> HybridNet:
        """Trains the student and the alignment modules; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def student_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters: the student's and the alignment modules', never the teacher's."""
        yield from self.student.parameters()
        yield from self.align.parameters()

    @torch.no_grad()
    def match_teacher_statistics(self, x: torch.Tensor) -> None:
        """Starts every phi_k from the teacher's features of the batch ``x`` (the student's input).

        The 1x1 conv becomes the identity where the student's and teacher's channels match (else it keeps its random
        init); a BatchNorm after it gets ``weight = std_c f_k`` and ``bias = mean_c f_k`` (over batch and positions), so
        that in training mode phi_k(r_k) has the teacher's per-channel mean and spread whatever the student's rates.
        """
        _, features = self.teacher(x if x.dim() == 4 else x.mean(0), mode="eval", return_features=True)
        for k in self.splits:
            align, feature = self.align[str(k)], features[k - 1].float()
            convs = [m for m in align.modules() if isinstance(m, nn.Conv2d)]
            norms = [m for m in align.modules() if isinstance(m, nn.BatchNorm2d)]
            for conv in convs:
                if conv.in_channels == conv.out_channels:
                    conv.weight.copy_(torch.eye(conv.out_channels).view_as(conv.weight))
                if conv.bias is not None:
                    conv.bias.zero_()
            for norm in norms:
                var, mean = torch.var_mean(feature, dim=(0, 2, 3), correction=0)
                norm.weight.copy_(var.add(norm.eps).sqrt())
                norm.bias.copy_(mean)

    def forward(self, x: torch.Tensor, mode: str | None = None) -> dict[str, torch.Tensor]:
        """x (the student's input) -> {"student", "hybrid{k}" for k in splits, "teacher"}: logits [B, classes].

        mode is the student's (None: "bptt" when training, else "eval"). The teacher sees x, or mean_t x for a
        sequence [T, B, C, H, W].
        """
        mode = self.student.resolve_mode(mode)
        logits, features = self.student(x, mode=mode, return_features=True)
        out = {"student": logits}
        tail_mode = "eval" if mode == "eval" else "bptt"  # the frozen teacher passes gradients to the student
        with torch.no_grad() if mode == "eval" else nullcontext():
            for k in self.splits:
                out[f"hybrid{k}"] = self.teacher.forward_tail(self.align[str(k)](features[k - 1]), k, mode=tail_mode)
        with torch.no_grad():
            out["teacher"] = self.teacher(x if x.dim() == 4 else x.mean(0))
        return out
