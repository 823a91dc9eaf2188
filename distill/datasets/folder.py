"""ImageNet-style ImageFolder data: ``root/{train,val}/<class>/<image>``, read lazily with Pillow (extra ``image``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.datasets.base import Dataset, DatasetError, missing

IMAGENET_DIR = Path.home() / ".cache" / "spikekd" / "imagenet"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")  # any letter case
_HOW = (
    "Arrange the images as DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (ImageNet: the ILSVRC2012 archives "
    "from https://image-net.org, with the validation images sorted into class folders) and pass --data-dir DIR."
)


class _ImageLoader:
    """Sample i: the image resized so its short side is ``size * 8 / 7`` then centre-cropped to ``size``, uint8 CHW."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __call__(self, i: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with Image.open(path) as image:
                return self._resize_and_crop(image.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise DatasetError(f"imagenet: cannot read the image {path} ({error}); delete or replace it") from error

    def _resize_and_crop(self, image) -> torch.Tensor:
        from PIL import Image

        short = round(self.size * 8 / 7)
        w, h = image.size
        scale = short / min(w, h)
        image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def is_image(path: Path) -> bool:
    """An image file by its extension, in any letter case (``.jpg``, ``.JPG``, ``.Jpeg`` ...)."""
    return path.is_file() and path.suffix.lower() in EXTENSIONS


def class_names(root: Path, folder: Path) -> list[str]:
    """The classes of every split: the sorted sub-folders of ``root/train`` where it exists (so that a class has one
    index in train and val, whatever each split holds), else those of ``folder``."""
    reference = root / "train" if (root / "train").is_dir() else folder
    return sorted(d.name for d in reference.iterdir() if d.is_dir())


def load_image_folder(split: str, root: Path | None = None, image_size: int = 224) -> Dataset:
    """``root/train`` or ``root/val`` (``root/test`` also accepted); the classes are the sorted sub-folders of
    ``root/train``, one index per class for both splits. A class folder without images, a class of the test split
    that training does not have, or (when read) an unreadable image is a DatasetError naming it."""
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
    classes = class_names(root, folder)
    here = sorted(d.name for d in folder.iterdir() if d.is_dir())
    unknown = sorted(set(here) - set(classes))
    if unknown:
        raise DatasetError(
            f"imagenet: {folder} has classes that {root / 'train'} lacks: {unknown}; every class needs training images"
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue  # a class this split has no folder for: no samples
        files = sorted(p for p in (folder / name).iterdir() if is_image(p))
        if not files:
            raise DatasetError(
                f"imagenet: the class folder {folder / name} has no images (extensions {', '.join(EXTENSIONS)}, "
                "any case); add some or remove the folder"
            )
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
