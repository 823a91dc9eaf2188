"""Augmentation: random crop with zero padding and random horizontal flip, batched on the training device; and the
per-sample augmentations of the papers (AutoAugment, Cutout, RandomErasing, roll), run in the data workers."""

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


# ----------------------------------------------------------------------------------------------- per sample

AUGMENTS = ("standard", "autoaugment", "cutout", "erasing", "roll", "none")
AUGMENT_HELP = (
    "comma-separated augmentations: standard (random crop with padding and flip, as suits the data set, batched on "
    "the device), autoaugment (torchvision's AutoAugment, CIFAR-10 policy, ImageNet's for imagenet), cutout (a "
    "square of half the image side zeroed after normalisation, DeVries & Taylor 2017), erasing (torchvision's "
    "RandomErasing after normalisation), roll (event frames shifted by up to 1/8 of the side, wrapping); none. The "
    "papers': rate-BP/ESD autoaugment,cutout; CKDSNN autoaugment,erasing; DVS roll"
)
SAMPLE_AUGMENTS = ("autoaugment", "cutout", "erasing", "roll")  # per sample, in the data workers


def parse_augment(spec: str) -> tuple[str, ...]:
    """ "standard,cutout" -> ("standard", "cutout"); "none" or "" -> (); unknown names raise, naming the accepted."""
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    unknown = [name for name in names if name not in AUGMENTS]
    if unknown:
        raise ValueError(f"augment: unknown augmentation(s) {unknown} in {spec!r}; accepted: {list(AUGMENTS)}")
    if "none" in names and len(names) > 1:
        raise ValueError(f"augment: 'none' cannot be combined with others, got {spec!r}")
    return tuple(name for name in names if name != "none")


class Cutout:
    """Zeroes one ``size`` x ``size`` square (clipped at the border) at a uniformly random centre of x [..., H, W]."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, left = max(cy - self.size // 2, 0), max(cx - self.size // 2, 0)
        x = x.clone()
        x[..., top : cy + (self.size + 1) // 2, left : cx + (self.size + 1) // 2] = 0
        return x


class Roll:
    """Shifts x [..., H, W] (all frames alike) by a random offset in [-max_shift, max_shift] per axis, wrapping."""

    def __init__(self, max_shift: int):
        self.max_shift = max_shift

    def __call__(self, x: Tensor) -> Tensor:
        dy, dx = (int(v) for v in torch.randint(-self.max_shift, self.max_shift + 1, (2,)))
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


class SampleAugment:
    """The per-sample augmentations of ``names`` for a data set: ``before`` runs on the raw sample (uint8 images),
    ``after`` on the normalised one. Each call draws from torch's generator seeded with the sample's own seed (torch's
    global generator, as torchvision's transforms draw from it, forked so that the caller's is untouched)."""

    def __init__(self, names: tuple[str, ...], dataset: str, side: int, events: bool):
        self.names = tuple(name for name in names if name in SAMPLE_AUGMENTS)
        image_only = [name for name in self.names if name in ("autoaugment", "erasing", "cutout")]
        if events and "autoaugment" in image_only:
            raise ValueError(f"augment: autoaugment applies to images, not to the event frames of {dataset}")
        if "roll" in self.names and not events:
            raise ValueError(f"augment: roll applies to event frames (cifar10_dvs), not to the images of {dataset}")
        self.before, self.after = [], []
        if "autoaugment" in self.names:
            v2 = _torchvision_transforms("autoaugment")
            policy = v2.AutoAugmentPolicy.IMAGENET if dataset == "imagenet" else v2.AutoAugmentPolicy.CIFAR10
            self.before.append(v2.AutoAugment(policy))
        if "roll" in self.names:
            self.before.append(Roll(max(side // 8, 1)))
        if "cutout" in self.names:
            self.after.append(Cutout(max(side // 2, 1)))
        if "erasing" in self.names:
            self.after.append(_torchvision_transforms("erasing").RandomErasing(value=0))

    def __bool__(self) -> bool:
        return bool(self.names)

    def apply(self, transforms: list, x: Tensor, seed: int) -> Tensor:
        if not transforms:
            return x
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for transform in transforms:
                x = transform(x)
        return x


def _torchvision_transforms(name: str):
    try:
        from torchvision.transforms import v2
    except Exception as error:  # ImportError, or a torchvision whose compiled ops do not fit this torch
        raise ValueError(
            f"augment: {name} uses torchvision's transforms, which cannot be imported here ({error}); install the "
            "build for this torch: pip install 'spikekd[vision]'"
        ) from error
    return v2
