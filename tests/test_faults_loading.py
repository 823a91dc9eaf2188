"""Loading never executes code and never accepts altered data: malicious pickles in checkpoints (--resume,
--teacher) and in CIFAR batches, bit flips in a checkpoint's tensors, non-finite state, a full disk."""

import errno
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import distill.checkpoint
from distill.checkpoint import (
    FORMAT,
    CheckpointError,
    NonFiniteCheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from distill.datasets import DatasetError, load_dataset
from distill.run import main
from distill.run_folder import MARKER

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--train-subset", "64", "--test-subset", "32", "--batch-size", "32", "--threads", "1", "--progress", "off",
         "--max-steps", "1", "--teacher-epochs", "1", "--epochs", "1"]  # fmt: skip


class CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: the file appears if a loader runs code from the pickle."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


# ----------------------------------------------------------------------------------------------- checkpoints


def write_malicious_checkpoint(path: Path, payload_target: Path) -> None:
    torch.save({"format": FORMAT, "stage": "teacher", "model": {"w": CreatesAFile(payload_target)}}, path)


def test_a_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    evil, target = tmp_path / "evil.pt", tmp_path / "pwned"
    write_malicious_checkpoint(evil, target)
    with pytest.raises(CheckpointError, match="would run code from the file; SpikeKD does not"):
        load_checkpoint(evil)
    assert not target.exists()


@pytest.mark.parametrize("where", ["--teacher", "--resume"])
def test_a_malicious_checkpoint_on_the_command_line_runs_nothing(tmp_path, where):
    target = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("")
    if where == "--teacher":
        write_malicious_checkpoint(tmp_path / "teacher.pt", target)
        args = ["--teacher", str(tmp_path / "teacher.pt"), "--out", str(run)]
    else:
        write_malicious_checkpoint(run / "checkpoint.pt", target)
        args = ["--resume", "--out", str(run)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "distill.run", *QUICK, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "would run code" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not target.exists()


def test_numpy_objects_in_a_checkpoint_are_refused(tmp_path):
    """What an older SpikeKD stored (numpy RNG state) needs code to rebuild: refused, with the reason."""
    torch.save({"format": "spikekd-checkpoint-1", "rng": {"numpy": np.random.get_state()}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="needs more than tensors and plain Python values"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save({"format": "spikekd-checkpoint-1", "model": {}}, tmp_path / "older.pt")
    with pytest.raises(CheckpointError, match="of an older SpikeKD"):
        load_checkpoint(tmp_path / "older.pt")


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


def flip_bit(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@settings(max_examples=25, deadline=None)
@given(index=st.integers(0, 4095), bit=st.integers(0, 7))
def test_a_bit_flip_in_a_tensor_is_caught_by_the_checksum(tmp_path_factory, index, bit):
    path = tmp_path_factory.mktemp("flip") / "c.pt"
    weights = torch.arange(1024, dtype=torch.float32) + 0.5
    save_checkpoint(path, {"step": 3, "model": {"w": weights}})
    start = path.read_bytes().find(weights.numpy().tobytes())
    assert start > 0
    flip_bit(path, start + index, bit)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(path)


def test_an_edited_value_is_caught_by_the_checksum(tmp_path):
    """The file rewritten by hand with another step (a valid zip, a valid pickle): the checksum says so."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 3, "model": {"w": torch.ones(4)}})
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"]["w"][0] = 2.0
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_state_is_never_written(tmp_path, bad):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}})
    before = path.read_bytes()
    state = {"step": 2, "model": {"w": torch.ones(3)}, "optimizer": {"state": {0: {"momentum": torch.tensor([bad])}}}}
    with pytest.raises(NonFiniteCheckpointError, match=r"1 tensors hold NaN or infinite values \(/'optimizer'"):
        save_checkpoint(path, state)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(distill.checkpoint.os, "fsync", full)
    with pytest.raises(CheckpointError, match="cannot write .*No space left on device.*previous file there.*intact"):
        save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(3)}})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_read_only_run_folder_is_a_clear_error(tmp_path, monkeypatch):
    """Writing into the run folder fails (as on a read-only disk): one line naming the folder, no traceback."""
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(SystemExit, match=f"--out {tmp_path / 'run'}: cannot create .*Read-only file system"):
        main([*QUICK, "--out", str(tmp_path / "run")])


# ----------------------------------------------------------------------------------------------- CIFAR batches


def write_cifar(root: Path, data, labels, name: str = "test_batch") -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(exist_ok=True)
    with open(base / name, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"testing batch 1 of 1"}, f, protocol=2)
    return base / name


def test_a_malicious_cifar_batch_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    write_cifar(tmp_path, CreatesAFile(target), [0])
    with pytest.raises(DatasetError, match=r"refers to io.open, which a CIFAR batch never holds"):
        load_dataset("cifar10", "test", tmp_path)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_any_pickle_protocol_load(tmp_path, protocol):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": images, b"labels": np.array([0, 9, 3, 3])}, f, protocol=protocol)
    data = load_dataset("cifar10", "test", tmp_path)
    assert torch.equal(data.images, torch.from_numpy(images).view(4, 3, 32, 32)) and data.labels.tolist() == [
        0,
        9,
        3,
        3,
    ]


rng = np.random.default_rng(0)


@pytest.mark.parametrize(
    "data, labels, message",
    [
        (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), [0, 1], r"images of shape \[2, 32, 32, 3\], expected"),
        (rng.random((2, 3072)), [0, 1], "images are float64, expected uint8"),
        (rng.integers(0, 256, (2, 3072)).astype(np.int16), [0, 1], "images are int16, expected uint8"),
        (rng.integers(0, 256, (2, 3072), dtype=np.uint8), [0, 10], "label 10 at index 1 is not a class 0..9"),
        (rng.integers(0, 256, (2, 3072), dtype=np.uint8), [-1, 1], "label -1 at index 0 is not a class 0..9"),
        (rng.integers(0, 256, (2, 3072), dtype=np.uint8), [0.0, 1.0], "labels are float64"),
        (rng.integers(0, 256, (2, 3072), dtype=np.uint8), [0], r"2 images but labels of shape \[1\]"),
    ],
)
def test_a_bad_cifar_batch_names_the_file_and_the_fault(tmp_path, data, labels, message):
    path = write_cifar(tmp_path, data, labels)
    with pytest.raises(DatasetError, match=f"cifar10: {path} is corrupt .*{message}"):
        load_dataset("cifar10", "test", tmp_path)
