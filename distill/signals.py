"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop): the step in progress finishes, a
checkpoint is written at it, and the run ends with one line that says how to continue.

    with StopSignals() as stop:
        while ...:
            train_one_step()
            if stop.requested:
                save_checkpoint(...)
                raise Interrupted(...)

A second signal while the first is being honoured interrupts at once (``KeyboardInterrupt``), for a step that hangs.
"""

from __future__ import annotations

import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(RuntimeError):
    """The run stopped on a signal after writing a checkpoint; ``signum`` is the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Within the ``with`` block, SIGINT and SIGTERM set ``signum`` instead of stopping the process (only in the main
    thread, where Python delivers signals; elsewhere the block changes nothing)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
