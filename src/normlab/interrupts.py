"""SIGTERM handled like Ctrl-C, so a stopped run can say so in its results.json.

Python's default SIGTERM handler ends the process on the spot: no `finally` block runs and a
run stopped by `kill`, a scheduler or a cluster's time limit would leave no trace of why.
Raised as KeyboardInterrupt instead, it takes Lightning's graceful-shutdown path (the same as
Ctrl-C) and `normlab.run.train` records the run as "interrupted".
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (joblib workers)
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
