"""Checkpoints: written atomically (a temporary file in the same folder, fsync, then ``os.replace``), so a run
killed while saving leaves the previous checkpoint intact; only when every tensor in them is finite; read back without
running code (``torch.load(weights_only=True)``: tensors and plain Python values only), with their checksum verified
and a clear error when a file is truncated, altered or not a checkpoint.

A checkpoint is a dict: ``format`` (``FORMAT``), ``checksum`` (sha256 of everything else, ``checksum()``), ``model``
(state dict), ``optimizer``, ``scheduler``, ``rng`` (``rng_state()``: torch, CUDA, numpy and python generators, as
tensors and plain values), ``config`` (``Config.to_dict()``), ``stage`` ("teacher" | "student"), ``step`` (optimizer
steps taken in the stage; with the epoch length it fixes the position in the deterministic sample order),
``metrics``.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

FORMAT = "spikekd-checkpoint-2"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, altered, unsafe to load, not one of SpikeKD's, or cannot be written."""


class NonFiniteCheckpointError(CheckpointError):
    """The state to save holds NaN or infinite values; nothing was written."""


def rng_state() -> dict:
    """The state of every generator a run draws from, as tensors and plain Python values."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    numpy_state = {**state["numpy"], "state": dict(state["numpy"]["state"])}
    numpy_state["state"]["key"] = numpy_state["state"]["key"].numpy().astype(np.uint32)
    torch.set_rng_state(state["torch"])
    np.random.set_state(numpy_state)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _leaves(value, path: str = "") -> Iterator[tuple[str, object]]:
    """(path, leaf) for every tensor and plain value in nested dicts, lists and tuples, in order."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}/{key!r}")
    elif isinstance(value, (list, tuple)):
        yield f"{path}:{type(value).__name__}{len(value)}", None
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}/{i}")
    else:
        yield path, value


def checksum(checkpoint: dict) -> str:
    """sha256 over every tensor's dtype, shape and bytes and every plain value's repr, with their paths in the dict."""
    digest = hashlib.sha256()
    for path, leaf in _leaves({k: v for k, v in checkpoint.items() if k != "checksum"}):
        if isinstance(leaf, torch.Tensor):
            data = leaf.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            digest.update(f"{path}={leaf.dtype}{tuple(leaf.shape)}".encode())
            digest.update(memoryview(data))
        else:
            digest.update(f"{path}={type(leaf).__name__}:{leaf!r}".encode())
    return digest.hexdigest()


def non_finite_tensors(state) -> list[str]:
    """The paths of the floating-point tensors (and floats) in ``state`` that hold NaN or an infinity."""
    bad = []
    for path, leaf in _leaves(state):
        if isinstance(leaf, torch.Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
            if not bool(torch.isfinite(leaf).all()):
                bad.append(path)
        elif isinstance(leaf, float) and not math.isfinite(leaf):
            bad.append(path)
    return bad


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Writes ``checkpoint`` to ``path`` atomically: readers see the old file or the new one, never a part.

    Raises ``NonFiniteCheckpointError`` (writing nothing) if a tensor holds NaN or an infinity, and ``CheckpointError``
    if the file cannot be written (a full or read-only disk); the previous file at ``path`` is intact either way."""
    path = Path(path)
    bad = non_finite_tensors(checkpoint)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteCheckpointError(f"not writing {path}: {len(bad)} tensors hold NaN or infinite values ({shown})")
    checkpoint = {"format": FORMAT, **checkpoint}
    checkpoint["checksum"] = checksum(checkpoint)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise CheckpointError(f"cannot write {path} ({error}); the previous file there, if any, is intact") from error
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Reads a checkpoint written by ``save_checkpoint`` without running code from it, and verifies its checksum;
    raises ``CheckpointError`` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise _corrupt(path, error) from error
        raise CheckpointError(
            f"{path} needs more than tensors and plain Python values to load, and loading it would run code from "
            f"the file; SpikeKD does not. It is not a SpikeKD checkpoint (or one of an older SpikeKD): do not load "
            f"it unless you trust it. ({str(error).splitlines()[-1] if str(error) else type(error).__name__})"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise _corrupt(path, error) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
        older = " (of an older SpikeKD: rerun to make a new one)" if str(found).startswith("spikekd-") else ""
        raise CheckpointError(f"{path} is not a SpikeKD checkpoint (expected format {FORMAT!r}){older}")
    if checkpoint.get("checksum") != checksum(checkpoint):
        raise CheckpointError(
            f"checkpoint {path}: its contents do not match the checksum written with them (changed after it was "
            "written: a bit flip on the disk or an edit). Restore it from a copy, or delete it to start over."
        )
    return checkpoint


def _corrupt(path: Path, error: BaseException) -> CheckpointError:
    size = path.stat().st_size
    return CheckpointError(
        f"checkpoint {path} ({size} bytes) is truncated or corrupt and cannot be read ({error}). "
        "Delete it to start over, or restore it from a copy."
    )
