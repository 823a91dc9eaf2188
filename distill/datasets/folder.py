"""ImageNet-style ImageFolder data: ``root/{train,val}/<class>/<image>``, read lazily with Pillow (extra ``image``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.datasets.base import Dataset, DatasetError, corrupt, missing

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
        try:
            return self._read(i)
        except (OSError, ValueError, SyntaxError) as error:  # not an image, truncated, unreadable
            why = f"sample {i} is not a readable image: {error}"
            raise corrupt("imagenet", self.paths[i], why, "Remove or replace the file.") from error

    def _read(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self._resize_and_crop(image.convert("RGB"))

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


def split_classes(name: str, root: Path, folder: Path, how: str, skip: tuple[str, ...] = ()) -> list[str]:
    """The classes of every split: the sorted sub-folders of ``root/train`` where it exists, else those of
    ``folder``, so that a class has one index in train and val whatever each split holds (a split without a class's
    folder has no samples of it, and the labels after it do not shift). A class folder of ``folder`` that training
    lacks is a DatasetError naming it: its samples would have no label. Folder names in ``skip`` are not classes."""
    train_folder = root / "train"
    reference = train_folder if train_folder.is_dir() else folder
    classes = sorted(d.name for d in reference.iterdir() if d.is_dir() and d.name not in skip)
    if folder != reference:
        here = {d.name for d in folder.iterdir() if d.is_dir() and d.name not in skip}
        unknown = sorted(here - set(classes))
        if unknown:
            raise DatasetError(
                f"{name}: {folder} has classes that {reference} lacks: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}; every class needs training samples. {how}"
            )
    return classes


def load_image_folder(split: str, root: Path | None = None, image_size: int = 224) -> Dataset:
    """``root/train`` or ``root/val`` (``root/test`` also accepted); the classes are the sorted sub-folders of
    ``root/train``, one index per class for both splits. A class folder without images, a class of the test split
    that training does not have, or (when read) a non-image or truncated file is a DatasetError naming it."""
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
    classes = split_classes("imagenet", root, folder, _HOW)
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
