"""A time budget that keeps optional work (diagnostics) under a fraction of a run's time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class OverheadBudget:
    """Allows work only while the time spent on it stays under `fraction` of the time spent on
    everything else since `start()`. Work over budget is skipped, never slowed down, so the
    overhead stays bounded on any machine: on a tiny dataset, where an epoch takes a fraction
    of a second, diagnostics thin out instead of doubling the epoch. The first request is
    always allowed. `fraction=None` allows everything.
    """

    def __init__(
        self, fraction: float | None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if fraction is not None and fraction <= 0:
            raise ValueError(f"a time budget must be positive or None, got {fraction}")
        self.fraction = fraction
        self.clock = clock
        self.spent = 0.0
        self.skipped = 0
        self._started = clock()

    def start(self) -> None:
        self._started = self.clock()
        self.spent = 0.0
        self.skipped = 0

    def allows(self) -> bool:
        if self.fraction is None:
            return True
        other = self.clock() - self._started - self.spent
        if self.spent <= self.fraction * other:
            return True
        self.skipped += 1
        return False

    def charge(self, seconds: float) -> None:
        self.spent += seconds

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Charge the time spent inside the block."""
        began = self.clock()
        try:
            yield
        finally:
            self.spent += self.clock() - began
