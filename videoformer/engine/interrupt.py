"""Stopping a run cleanly: the first Ctrl-C (SIGINT) or SIGTERM lets the training loop finish its optimiser
step and write a resumable ``last.pt``; DataLoader workers ignore SIGINT so the batch in flight still loads."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class TrainingStopped(Exception):
    """Ctrl-C (SIGINT) or SIGTERM: the run finished its optimiser step, wrote a resumable ``last.pt`` and stopped."""


class StopRequest:
    """While active, the first SIGINT / SIGTERM only sets :attr:`requested` (the loop stops at the next optimiser
    step boundary, after writing ``last.pt``); a second one interrupts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a resumable checkpoint "
              "(press Ctrl-C again to stop at once, without writing)", file=sys.stderr)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave Ctrl-C to the main process, which stops at a step boundary
    (a worker killed by the terminal's SIGINT would fail the batch being loaded)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
