"""Who owns a run folder: SpikeKD writes only into a folder it created (or found empty), replaces a finished run only
when asked, and keeps a second run out of a folder in use.

- ``MARKER`` (``.spikekd-run``): written when SpikeKD takes a folder. A non-empty folder without it holds someone
  else's files, and SpikeKD refuses it whatever the options (but ``--resume`` from a SpikeKD checkpoint in it).
- ``RESULT_FILES``: what a run writes. A fresh run into a folder that holds any of them needs ``--overwrite``; they are
  deleted only after every check of the run has passed (``clear_results``, with ``--log tensorboard``'s event files),
  and never the teacher being loaded.
- ``LOCK`` (``.spikekd.lock``): the pid, host and start time of the process writing into the folder. A lock whose
  process is gone (killed) is stale and taken over; a live one stops the second run.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

MARKER = ".spikekd-run"
LOCK = ".spikekd.lock"
RESULT_FILES = (
    "checkpoint.pt",
    "metrics.jsonl",
    "teacher.pt",
    "student.pt",
    "student_best.pt",
    "results.json",
    "report.md",
    "config.toml",
)
TEMPORARY_PATTERN = ".*.pt.*.tmp"  # save_checkpoint's temporary files, left behind by a killed write
TENSORBOARD_PATTERN = "tensorboard/events.out.tfevents.*"  # --log tensorboard's event files


class RunFolderError(RuntimeError):
    """The run folder cannot be used: someone else's files, a finished run, another run in it, or no permission."""


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool, lock_held: bool = False) -> None:
    """Raises ``RunFolderError`` unless a run may write into ``run_dir``; reads only, changes nothing. ``lock_held``:
    this process holds the folder's lock (the check is repeated then, as the folder may have changed meanwhile)."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} is a file, not a folder; pass a new or empty folder")
    entries = [p.name for p in run_dir.iterdir()]
    if not entries:
        return
    if MARKER not in entries and not (resume and "checkpoint.pt" in entries):  # (a run of an older SpikeKD)
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunFolderError(
            f"--out {run_dir} holds files SpikeKD did not write ({shown}); SpikeKD writes only into a new or empty "
            "folder or one of its own run folders. Pass another --out."
        )
    if LOCK in entries and not lock_held:
        RunLock(run_dir).check_free()
    results = [name for name in RESULT_FILES if name in entries and name != "config.toml"]
    if results and not resume and not overwrite:
        raise RunFolderError(
            f"--out {run_dir} holds a run ({', '.join(results)}); pass --resume to continue it, --overwrite to "
            "replace it, or another --out"
        )


def claim(run_dir: Path) -> None:
    """Creates ``run_dir`` if needed and writes the marker that makes it a SpikeKD run folder."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = run_dir / MARKER
        if not marker.exists():
            marker.write_text("A SpikeKD run folder: `python -m distill.run` writes and replaces the files here.\n")
    except OSError as error:
        raise RunFolderError(f"--out {run_dir}: cannot create or write the run folder ({error})") from error


def clear_results(run_dir: Path, keep: Path | None = None) -> list[str]:
    """Deletes the previous run's results (and temporary files of killed writes) from a claimed ``run_dir``, except
    ``keep`` (the teacher checkpoint being loaded). Returns the names deleted."""
    keep = keep.resolve() if keep is not None else None
    paths = [run_dir / name for name in RESULT_FILES] + sorted(run_dir.glob(TEMPORARY_PATTERN))
    paths += sorted(run_dir.glob(TENSORBOARD_PATTERN))
    deleted = []
    for path in paths:
        if path.is_file() and path.resolve() != keep:
            path.unlink()
            deleted.append(path.relative_to(run_dir).as_posix())
    return deleted


def remove_temporary_files(run_dir: Path) -> list[str]:
    """Deletes the temporary files that a write killed half-way left in ``run_dir``."""
    removed = []
    for path in sorted(run_dir.glob(TEMPORARY_PATTERN)):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def _process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _lock_holder_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # a process on another machine: cannot tell, so assume it runs
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    started = holder.get("started")
    return started is None or _process_start_time(pid) in (None, started)


class RunLock:
    """``with RunLock(run_dir):`` holds the folder's lock file for this process; a stale lock is taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.held = False

    def __enter__(self) -> RunLock:
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start_time(os.getpid())})
        # written whole under another name, then linked: a lock file is never seen half-written
        staged = self.path.with_name(f"{LOCK}.{os.getpid()}")
        try:
            staged.write_text(me)
            for _ in range(2):
                try:
                    os.link(staged, self.path)
                except FileExistsError:
                    self.check_free()
                    self.path.unlink(missing_ok=True)  # stale: its process was killed
                    continue
                self.held = True
                return self
        except OSError as error:
            raise RunFolderError(f"--out {self.path.parent}: cannot write the lock file ({error})") from error
        finally:
            staged.unlink(missing_ok=True)
        raise RunFolderError(f"--out {self.path.parent}: another run took the lock file {self.path} at the same time")

    def check_free(self) -> None:
        """Raises ``RunFolderError`` if a live process holds the lock (a stale one does not count)."""
        holder = self._read_holder()
        if holder is not None and _lock_holder_alive(holder):
            raise RunFolderError(
                f"--out {self.path.parent} is in use by another run (pid {holder.get('pid')} on "
                f"{holder.get('host')}, lock file {self.path}); wait for it to end or pass another --out"
            )

    def _read_holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # unreadable: not a lock SpikeKD wrote
        return holder if isinstance(holder, dict) else None

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
