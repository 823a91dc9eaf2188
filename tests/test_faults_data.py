"""Bad data files: each reader checks dtype, layout, value range and labels, and names the file and the index of
the bad sample, instead of training or scoring silently wrong."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.datasets import DatasetError, load_dataset
from distill.run import main
from tests.test_data import write_idx


def write_digits(folder, images, labels):
    folder.mkdir(exist_ok=True)
    np.savez(folder / "digits.npz", images=images, labels=labels)


def good_digits(n=20):
    rng = np.random.default_rng(0)
    return rng.integers(0, 17, (n, 8, 8)).astype(np.int64), np.arange(n) % 10


# ----------------------------------------------------------------------------------------------- digits and IDX


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y: (x.astype(np.float64) / 16, y), "images are float64, expected integer pixels 0..16"),
        (lambda x, y: (np.where(np.arange(len(x))[:, None, None] == 3, 255, x), y), "image 3 has pixels outside 0..16"),
        (lambda x, y: (x, np.where(np.arange(len(y)) == 7, 10, y)), "label 10 at index 7 is not a class 0..9"),
        (lambda x, y: (x, y.astype(np.float32)), "labels are torch.float32"),
        (lambda x, y: (x[:, :4], y), r"images \(20, 4, 8\)"),
    ],
)
def test_bad_digits(tmp_path, change, message):
    write_digits(tmp_path, *change(*good_digits()))
    with pytest.raises(DatasetError, match=f"digits: {tmp_path / 'digits.npz'} is corrupt .*{message}"):
        load_dataset("digits", "train", tmp_path)


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 255), min_size=1, max_size=30))
def test_idx_labels_load_only_when_every_label_is_a_class(tmp_path_factory, labels):
    folder = tmp_path_factory.mktemp("idx")
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((len(labels), 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.array(labels))
    bad = [i for i, label in enumerate(labels) if label > 9]
    if not bad:
        assert load_dataset("mnist", "test", folder).labels.tolist() == labels
        return
    message = f"t10k-labels-idx1-ubyte is corrupt \\(label {labels[bad[0]]} at index {bad[0]} is not a class 0..9"
    with pytest.raises(DatasetError, match=message):
        load_dataset("mnist", "test", folder)


def test_a_bad_test_label_stops_the_run_before_training(tmp_path):
    """The issue's case: an out-of-range test label scored 0 % after a whole run; now the run does not start."""
    images, labels = good_digits(1797)
    labels[-1] = 12
    write_digits(tmp_path / "data", images, labels)
    with pytest.raises(SystemExit, match="label 12 at index 1796 is not a class 0..9"):
        main(["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--progress", "off"])
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- image folders


@pytest.fixture
def image_module():
    return pytest.importorskip("PIL.Image")


def make_image_folder(root, image_module, train=("cat", "dog", "eel"), val=("cat", "dog", "eel")):
    for split, classes in (("train", train), ("val", val)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                image_module.new("RGB", (20, 20), (40 * i, 90, 10)).save(root / split / cls / f"{i}.png")


def test_a_val_split_missing_a_class_keeps_the_training_labels(tmp_path, image_module):
    """Without one class index for both splits the labels of 'eel' would shift to 'dog' in val: a silent wrong
    score. A class val lacks has no samples there; a class training lacks is refused, naming it."""
    make_image_folder(tmp_path, image_module, val=("cat", "eel"))
    val = load_dataset("imagenet", "test", tmp_path, image_size=16)
    assert val.classes == ["cat", "dog", "eel"] and val.labels.tolist() == [0, 0, 2, 2]
    assert len(load_dataset("imagenet", "train", tmp_path, image_size=16)) == 6
    (tmp_path / "val" / "fox").mkdir()
    with pytest.raises(DatasetError, match=r"val has classes that .*train lacks: \['fox'\]"):
        load_dataset("imagenet", "test", tmp_path, image_size=16)


@pytest.mark.parametrize(
    "content, why", [(b"not an image at all", "cannot identify image file"), (None, "truncated|broken|image file")]
)
def test_a_non_image_or_truncated_file_is_named_with_its_index(tmp_path, image_module, content, why):
    make_image_folder(tmp_path, image_module)
    bad = tmp_path / "val" / "dog" / "1.png"
    content = content if content is not None else bad.read_bytes()[:60]
    bad.write_bytes(content)
    data = load_dataset("imagenet", "test", tmp_path, image_size=16)
    data.batch(torch.arange(3))  # the good ones load
    with pytest.raises(DatasetError, match=f"{bad} is corrupt \\(sample 3 is not a readable image: .*({why})"):
        data.batch(torch.arange(6))


# ----------------------------------------------------------------------------------------------- event frames


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_event_frames_must_be_finite_counts(tmp_path, bad):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            frames = np.ones((2, 2, 4, 4), dtype=np.float32)
            if cls == "b" and i == 9:
                frames[1, 0, 2, 2] = bad
            np.savez(tmp_path / cls / f"{i}.npz", frames=frames)
    test = load_dataset("cifar10_dvs", "test", tmp_path, image_size=4)
    with pytest.raises(DatasetError, match=r"b/9.npz is corrupt \(sample 1: frames must be finite event counts >= 0"):
        test.batch(torch.arange(2))


def test_event_splits_keep_the_training_labels(tmp_path):
    for split, classes in (("train", ("a", "b")), ("test", ("b",))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            np.savez(tmp_path / split / cls / "0.npz", frames=np.ones((2, 2, 4, 4)))
    test = load_dataset("cifar10_dvs", "test", tmp_path, image_size=4)
    assert test.num_classes == 2 and test.labels.tolist() == [1]
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(DatasetError, match=r"test has classes that .*train lacks: \['c'\]"):
        load_dataset("cifar10_dvs", "test", tmp_path, image_size=4)
