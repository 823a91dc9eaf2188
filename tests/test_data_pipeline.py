"""Folder data as a user has it (any extension case, classes missing from a split, broken files), batches through
DataLoader workers, and the papers' per-sample augmentations, the same with any number of workers."""

import pytest
import torch

from distill.datasets import Dataset, DatasetError, load_dataset
from distill.datasets.augment import Cutout, Roll, SampleAugment, parse_augment
from distill.datasets.pipeline import batches
from distill.run import main

CPU = torch.device("cpu")


def test_extensions_in_any_case(tmp_path, write_image_folder):
    write_image_folder(tmp_path, {"train": {"cat": 3}}, size=8, suffix=".JPG")
    write_image_folder(tmp_path, {"train": {"dog": 2}}, size=8, suffix=".jpeg")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    data = load_dataset("imagenet", "train", tmp_path, image_size=8)
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1]


def test_one_class_index_for_every_split(tmp_path, write_image_folder):
    write_image_folder(tmp_path, {"train": {"a": 1, "b": 1, "c": 1}, "val": {"a": 1, "c": 2}}, size=8)
    val = load_dataset("imagenet", "test", tmp_path, image_size=8)
    assert val.classes == ["a", "b", "c"] and val.num_classes == 3 and val.labels.tolist() == [0, 2, 2]
    write_image_folder(tmp_path, {"val": {"zebra": 1}}, size=8)
    with pytest.raises(DatasetError, match=r"has classes that .*train lacks: \['zebra'\]"):
        load_dataset("imagenet", "test", tmp_path, image_size=8)


def test_a_class_without_images_is_named(tmp_path, write_image_folder):
    write_image_folder(tmp_path, {"train": {"cat": 2}}, size=8)
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "readme.md").write_text("")
    with pytest.raises(DatasetError, match=r"the class folder .*train/dog has no images"):
        load_dataset("imagenet", "train", tmp_path, image_size=8)


def test_an_unreadable_image_is_named_from_a_worker(tmp_path, write_image_folder):
    write_image_folder(tmp_path, {"train": {"cat": 8, "dog": 8}, "val": {"cat": 2, "dog": 2}}, size=8)
    (tmp_path / "train" / "dog" / "3.png").write_bytes(b"not a png")
    args = ["--dataset", "imagenet", "--data-dir", str(tmp_path), "--image-size", "8", "--arch", "tiny_resnet"]
    args += ["--stem", "cifar", "--batch-size", "4", "--workers", "2", "--progress", "off"]
    with pytest.raises(SystemExit) as error:
        main([*args, "--out", str(tmp_path / "run")])
    message = str(error.value)
    assert "train/dog/3.png is corrupt" in message and "not a readable image" in message and "Traceback" not in message


def _digits_like(n=12, side=8):
    images = torch.arange(n * 3 * side * side, dtype=torch.int64).remainder(251).to(torch.uint8)
    return Dataset("cifar10", torch.arange(n) % 2, 2, images.view(n, 3, side, side), mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.parametrize("names", ["autoaugment,cutout", "autoaugment,erasing"])
def test_sample_augment_is_the_same_with_any_workers_and_from_any_step(torchvision, names):
    data = _digits_like()
    augment = SampleAugment(parse_augment(names), "cifar10", 8, events=False)
    index_batches = list(torch.arange(12).split(4))
    plain = [x for x, _ in batches(data, index_batches, CPU)]
    serial = [x for x, _ in batches(data, index_batches, CPU, 0, augment, (0, 1, 2))]
    parallel = [x for x, _ in batches(data, index_batches[1:], CPU, 2, augment, (0, 1, 2))]
    assert all(torch.equal(a, b) for a, b in zip(serial[1:], parallel, strict=True))  # a resumed epoch sees the same
    assert not all(torch.equal(a, b) for a, b in zip(serial, plain, strict=True))
    state = torch.get_rng_state()
    other_epoch = [x for x, _ in batches(data, index_batches, CPU, 2, augment, (0, 1, 3))]
    assert torch.equal(torch.get_rng_state(), state)  # loading leaves the global generator alone
    assert not all(torch.equal(a, b) for a, b in zip(serial, other_epoch, strict=True))


def test_cutout_zeroes_a_square_and_roll_wraps():
    torch.manual_seed(0)
    x = torch.ones(3, 16, 16)
    holes = [(Cutout(8)(x) == 0).all(0).sum().item() for _ in range(50)]
    assert max(holes) == 64 and min(holes) >= 16  # whole inside, or clipped at a corner to at least a quarter
    frames = torch.arange(2 * 2 * 8 * 8, dtype=torch.float32).view(2, 2, 8, 8)
    rolled = Roll(2)(frames)
    assert sorted(rolled.flatten().tolist()) == sorted(frames.flatten().tolist())
    shift = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    assert any(torch.equal(rolled, torch.roll(frames, s, dims=(-2, -1))) for s in shift)


def test_augment_option_errors():
    with pytest.raises(ValueError, match=r"unknown augmentation\(s\) \['mixup'\] .* accepted: \['standard'"):
        parse_augment("standard,mixup")
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        parse_augment("none,cutout")
    assert parse_augment("none") == () and parse_augment("standard, cutout") == ("standard", "cutout")
    with pytest.raises(ValueError, match="roll applies to event frames"):
        SampleAugment(("roll",), "cifar10", 32, events=False)
    with pytest.raises(ValueError, match="autoaugment applies to images, not to the event frames"):
        SampleAugment(("autoaugment",), "cifar10_dvs", 48, events=True)
    with pytest.raises(SystemExit, match=r"error: augment: unknown augmentation\(s\) \[.flip.\]"):
        main(["--augment", "flip"])


def test_training_with_per_sample_augmentation(tmp_path, torchvision):
    args = ["--augment", "standard,autoaugment,cutout", "--train-subset", "64", "--test-subset", "32", "--workers", "2"]
    results = main([*args, "--batch-size", "16", "--max-steps", "3", "--progress", "off", "--out", str(tmp_path)])
    assert 0 <= results["student_acc"] <= 1
