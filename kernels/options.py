"""Checked neuron options and input checks shared by every op.

Options travel to the ops as plain scalars; this module turns user arguments into those scalars once, and
raises errors that name the argument, the value given and what is accepted.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch

# Surrogate name -> (id used by the kernels, default alpha).
SURROGATES: dict[str, tuple[int, float]] = {"sigmoid": (0, 4.0), "atan": (1, 2.0), "triangle": (2, 1.0)}
SURROGATE_NAMES: dict[int, str] = {sid: name for name, (sid, _) in SURROGATES.items()}
STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _is_number(value) -> bool:
    """A real number: Python's or numpy's int and float (bool excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class LIFOptions:
    """The neuron of docs/design.md: lam = 1 - 1/tau, threshold, reset (None = soft), surrogate of dS/dH."""

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = None
    decay_input: bool = False
    detach_reset: bool = True
    surrogate: str = "sigmoid"
    alpha: float | None = None

    def __post_init__(self):
        if not _is_number(self.tau) or not math.isfinite(self.tau) or self.tau < 1.0:
            raise ValueError(f"tau must be a finite number >= 1 (lam = 1 - 1/tau in [0, 1)), got {self.tau!r}")
        if not _is_number(self.v_threshold) or not (0 < self.v_threshold < math.inf):
            raise ValueError(f"v_threshold must be a finite positive number, got {self.v_threshold!r}")
        if self.v_reset is not None and (not _is_number(self.v_reset) or not math.isfinite(self.v_reset)):
            raise ValueError(f"v_reset must be None (soft reset) or a finite number (hard reset), got {self.v_reset!r}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {self.surrogate!r}")
        if self.alpha is not None and (not _is_number(self.alpha) or not (0 < self.alpha < math.inf)):
            raise ValueError(
                f"alpha must be None (the surrogate's default) or a finite positive number, got {self.alpha!r}"
            )

    @property
    def surrogate_id(self) -> int:
        return SURROGATES[self.surrogate][0]

    @property
    def surrogate_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else SURROGATES[self.surrogate][1]

    def op_args(self) -> tuple:
        """The scalars every neuron op takes, in schema order."""
        return (
            float(self.tau),
            float(self.v_threshold),
            None if self.v_reset is None else float(self.v_reset),
            bool(self.decay_input),
            bool(self.detach_reset),
            self.surrogate_id,
            self.surrogate_alpha,
        )


def neuron_args(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha) -> tuple:
    """`LIFOptions(...).op_args()`, checked once per distinct set of options (a layer calls it at every step)."""
    options = (tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
    if torch.compiler.is_compiling():  # traced once per graph; dynamo does not trace through lru_cache
        return LIFOptions(*options).op_args()
    try:
        return _cached_neuron_args(*options)
    except TypeError:  # an unhashable option: LIFOptions says what is wrong with it
        return LIFOptions(*options).op_args()


@functools.lru_cache(maxsize=256, typed=True)
def _cached_neuron_args(*options) -> tuple:
    return LIFOptions(*options).op_args()


def check_sequence(x: torch.Tensor, name: str = "x") -> None:
    """A time-first floating tensor [T, ...] with T >= 1 and at least one more dim."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must be time-first [T, B, ...] with at least 2 dims, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must have T = x.shape[0] >= 1 timesteps, got shape {tuple(x.shape)}")
    check_floating(x, name)


def check_floating(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in STORAGE_DTYPES:
        accepted = ", ".join(str(d).removeprefix("torch.") for d in STORAGE_DTYPES)
        raise TypeError(f"{name} must have a floating dtype ({accepted}), got {x.dtype}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len({d.type for d in devices.values()}) > 1 or len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {d}" for name, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")
