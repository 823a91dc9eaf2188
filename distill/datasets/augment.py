"""Batched augmentation on the training device: random crop with zero padding and random horizontal flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Each sample of ``x`` ``[B, ..., H, W]`` is zero-padded by ``padding``, cropped back to ``H x W`` at a random
    offset and, if ``flip``, mirrored left-right with probability 1/2. The leading dimensions after B (channels,
    time) share the sample's crop and flip. The random draws come from ``generator`` (on the CPU), so the result
    depends on its seed only, not on the device.
    """
    if padding == 0 and not flip:
        return x
    batch, (height, width) = x.shape[0], x.shape[-2:]
    offset_y = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    offset_x = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    mirror = torch.rand(batch, generator=generator) < 0.5 if flip else torch.zeros(batch, dtype=torch.bool)
    rows = offset_y[:, None] + torch.arange(height)  # [B, H]
    cols = offset_x[:, None] + torch.arange(width)  # [B, W]
    cols = torch.where(mirror[:, None], cols.flip(-1), cols)
    flat = x.reshape(batch, -1, height, width)
    padded = F.pad(flat, (padding, padding, padding, padding)) if padding else flat
    device = x.device
    index_b = torch.arange(batch, device=device)[:, None, None]
    out = padded[index_b, :, rows.to(device)[:, :, None], cols.to(device)[:, None, :]]  # [B, H, W, M]
    return out.permute(0, 3, 1, 2).contiguous().reshape(x.shape)  # channels-first again, as the layers expect
