"""Data sets: the embedded digits, IDX / CIFAR / ImageFolder / DVS readers on files made here, clear errors for
missing or corrupt data, batched augmentation and the deterministic shardable sample order."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from distill.datasets import DatasetError, load_dataset, random_crop_flip
from distill.datasets.sampling import epoch_order, eval_shard, micro_batches, steps_per_epoch


def write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_digits_is_embedded_and_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    x, y = train.batch(torch.arange(16))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert train.num_classes == 10 and train.in_channels == 1
    assert set(test.labels.tolist()) == set(range(10))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, gz)
    data = load_dataset("mnist", "test", tmp_path)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert data.labels.tolist() == labels.tolist()


def test_idx_missing_and_truncated(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion_mnist", "train", tmp_path)
    assert str(tmp_path) in str(info.value)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="corrupt.*bytes of data"):
        load_dataset("fashion_mnist", "train", tmp_path)


def test_cifar_pickles(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [1, 2, 3]}, f)
    data = load_dataset("cifar10", "test", tmp_path)
    assert data.images.shape == (3, 3, 32, 32) and data.labels.tolist() == [1, 2, 3]
    with pytest.raises(DatasetError, match="--download"):
        load_dataset("cifar10", "train", tmp_path)
    (base / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="corrupt"):
        load_dataset("cifar10", "test", tmp_path)


def test_image_folder(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    for cls in ("cat", "dog"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        image_module.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "val" / cls / "a.png")
    data = load_dataset("imagenet", "test", tmp_path, image_size=16)
    x, y = data.batch(torch.arange(2))
    assert x.shape == (2, 3, 16, 16) and y.tolist() == [0, 1] and data.classes == ["cat", "dog"]


def test_image_folder_missing(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(DatasetError, match="looked in"):
        load_dataset("imagenet", "train", tmp_path)


def test_dvs_frames(tmp_path):
    for cls in ("airplane", "cat"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            frames = np.full((3, 2, 8, 8), i, dtype=np.int16)
            np.savez_compressed(tmp_path / cls / f"{i}.npz", frames=frames)
    train, test = (
        load_dataset("cifar10_dvs", "train", tmp_path, image_size=4),
        load_dataset("cifar10_dvs", "test", tmp_path, image_size=4),
    )
    assert (len(train), len(test), train.time_steps) == (18, 2, 3)
    x, y = test.batch(torch.arange(2))
    assert x.shape == (2, 3, 2, 4, 4) and y.tolist() == [0, 1]
    assert x.max().item() == 1.0
    (tmp_path / "cat" / "9.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetError, match="corrupt"):
        test.batch(torch.arange(2))


def test_missing_dvs(tmp_path):
    with pytest.raises(DatasetError, match="frames"):
        load_dataset("cifar10_dvs", "train", tmp_path / "nowhere")


def test_unknown_names():
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("svhn", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("digits", "val")


def test_crop_flip_identity_and_shapes():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(x, 0, False, g), x)
    video = torch.rand(4, 3, 2, 6, 6)
    assert random_crop_flip(video, 2, True, g).shape == video.shape


def test_crop_is_a_shift_and_flip_a_mirror():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(256, 1, 1, 1)
    out = random_crop_flip(x, 1, True, torch.Generator().manual_seed(1))
    seen_mirror = False
    for sample in out[:, 0]:
        found = False
        for mirror in (False, True):
            ref = x[0, 0].flip(-1) if mirror else x[0, 0]
            padded = torch.nn.functional.pad(ref, (1, 1, 1, 1))
            for dy in range(3):
                for dx in range(3):
                    if torch.equal(padded[dy : dy + 4, dx : dx + 4], sample):
                        found, seen_mirror = True, seen_mirror or (mirror and dx == 1 and dy == 1)
        assert found
    assert seen_mirror


def test_crop_flip_depends_on_the_seed_only():
    x = torch.rand(8, 1, 8, 8)
    a = random_crop_flip(x, 2, True, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 2, True, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_sample_order_shards_partition_the_global_batch():
    order = epoch_order(100, epoch=3, seed=7)
    assert torch.equal(order, epoch_order(100, 3, 7)) and not torch.equal(order, epoch_order(100, 4, 7))
    single = torch.cat(micro_batches(order, 2, 8, rank=0, world_size=1, accum=4))
    shards = [torch.cat(micro_batches(order, 2, 8, rank=r, world_size=2, accum=2)) for r in range(2)]
    assert torch.equal(single, order[16:24]) and torch.equal(torch.cat(shards), single)
    with pytest.raises(ValueError, match="divisible"):
        micro_batches(order, 0, 6, 0, 4, 1)
    assert steps_per_epoch(100, 8) == 12
    assert sorted(torch.cat([eval_shard(7, r, 3) for r in range(3)]).tolist()) == list(range(7))
