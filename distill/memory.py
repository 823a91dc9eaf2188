"""The process's resident memory (Linux /proc/self/status), for reports and the benchmarks' CPU figures, and the
memory free for a run (``available_memory_bytes``), for the trainer's check of the options before it starts.

The peak is VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a large process (pytest)
would report its parent's size.
"""

from __future__ import annotations

import resource
import sys

import torch


def _status_bytes(field: str) -> int | None:
    """A size from /proc/self/status (Linux), in bytes; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            line = next((line for line in f if line.startswith(field + ":")), None)
    except OSError:
        return None
    return None if line is None else int(line.split()[1]) * 1024  # "VmHWM:  123456 kB"


def peak_resident_bytes() -> int:
    """This process's peak resident size (VmHWM; ru_maxrss where /proc is missing)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def resident_bytes() -> int:
    """This process's resident size now."""
    return _status_bytes("VmRSS") or peak_resident_bytes()


def reset_peak_resident() -> None:
    """Restart VmHWM from the current RSS (Linux: writing 5 to clear_refs), so a later peak is that of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory free for a run on ``device``: CUDA's free memory, or the system's MemAvailable (Linux) for the CPU;
    None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            line = next((line for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        return None
    return None if line is None else int(line.split()[1]) * 1024
