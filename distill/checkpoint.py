"""Checkpoints: written atomically (a temporary file in the same folder, fsync, then ``os.replace``), so a run
killed while saving leaves the previous checkpoint intact; read back with a clear error when a file is truncated or
not a checkpoint.

A checkpoint is a dict: ``format`` (``FORMAT``), ``model`` (state dict), ``optimizer``, ``scheduler``, ``rng``
(``rng_state()``: torch, CUDA, numpy and python generators), ``config`` (``Config.to_dict()``), ``stage``
("teacher" | "student"), ``step`` (optimizer steps taken in the stage; with the epoch length it fixes the position in
the deterministic sample order), ``metrics``.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "spikekd-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or not one of SpikeKD's."""


def rng_state() -> dict:
    """The state of every generator a run draws from."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Writes ``checkpoint`` to ``path`` atomically: readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **checkpoint}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Reads a checkpoint written by ``save_checkpoint``; raises ``CheckpointError`` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # weights_only=False: the RNG states hold numpy arrays and python tuples. Load only checkpoints you trust.
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        size = path.stat().st_size
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is truncated or corrupt and cannot be read ({error}). "
            "Delete it to start over, or restore it from a copy."
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a SpikeKD checkpoint (expected format {FORMAT!r})")
    return checkpoint
