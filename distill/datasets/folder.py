"""ImageNet-style ImageFolder data: ``root/{train,val}/<class>/<image>``, read lazily with Pillow (extra ``image``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.datasets.base import Dataset, DatasetError, corrupt, missing

IMAGENET_DIR = Path.home() / ".cache" / "spikekd" / "imagenet"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG"}
_HOW = (
    "Arrange the images as DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (ImageNet: the ILSVRC2012 archives "
    "from https://image-net.org, with the validation images sorted into class folders) and pass --data-dir DIR."
)


class _ImageLoader:
    """Sample i: the image resized so its short side is ``size * 8 / 7`` then centre-cropped to ``size``, uint8 CHW."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __call__(self, i: int) -> torch.Tensor:
        try:
            return self._read(i)
        except (OSError, ValueError, SyntaxError) as error:  # not an image, truncated, unreadable
            why = f"sample {i} is not a readable image: {error}"
            raise corrupt("imagenet", self.paths[i], why, "Remove or replace the file.") from error

    def _read(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            image = image.convert("RGB")
            short = round(self.size * 8 / 7)
            w, h = image.size
            scale = short / min(w, h)
            image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
            w, h = image.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
            return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def check_same_classes(name: str, train_folder: Path, folder: Path, classes: list[str], how: str) -> None:
    """A split's class folders must be the training split's: a class missing from one shifts every label after it."""
    if folder == train_folder or not train_folder.is_dir():
        return
    train_classes = sorted(d.name for d in train_folder.iterdir() if d.is_dir())
    if classes != train_classes:
        missing_here = sorted(set(train_classes) - set(classes))
        extra_here = sorted(set(classes) - set(train_classes))
        raise DatasetError(
            f"{name}: the classes of {folder} differ from those of {train_folder} (missing: {missing_here[:5]}, "
            f"extra: {extra_here[:5]}), so the labels would not match between the splits. {how}"
        )


def load_image_folder(split: str, root: Path | None = None, image_size: int = 224) -> Dataset:
    """``root/train`` or ``root/val`` (``root/test`` also accepted); classes are the sorted sub-folder names."""
    try:
        import PIL  # noqa: F401
    except ImportError as error:
        raise DatasetError("imagenet: reading images needs Pillow: pip install 'spikekd[image]'") from error
    root = Path(root) if root is not None else IMAGENET_DIR
    names = ["train"] if split == "train" else ["val", "test"]
    folders = [root / n for n in names]
    folder = next((f for f in folders if f.is_dir()), None)
    if folder is None:
        raise missing("imagenet", folders, _HOW)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    check_same_classes("imagenet", root / "train", folder, classes, _HOW)
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix in EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise missing("imagenet", [folder / "<class>" / "*.jpg"], _HOW)
    return Dataset(
        name="imagenet",
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=len(classes),
        loader=_ImageLoader(paths, image_size),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        crop_padding=image_size // 8,
        flip=True,
        classes=classes,
    )
