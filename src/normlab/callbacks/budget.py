"""A time budget that keeps optional work (diagnostics) under a fraction of a run's time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class OverheadBudget:
    """Allows a piece of work only if the time spent on such work, plus what the same kind of
    work cost last time, stays within `fraction` of the time spent on everything else since
    `start()`. Work over budget is skipped, never slowed down, so the overhead stays bounded on
    any machine: on a tiny dataset, where an epoch lasts a fraction of a second, diagnostics
    thin out instead of lengthening the epoch. `fraction=None` allows everything.

    Usage: `if budget.allows(kind): budget.begin(kind)`, charge the work's time with
    `budget.timed()` or `budget.charge(seconds)`, then `budget.end(kind)`.
    """

    def __init__(
        self, fraction: float | None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if fraction is not None and fraction <= 0:
            raise ValueError(f"a time budget must be positive or None, got {fraction}")
        self.fraction = fraction
        self.clock = clock
        self.start()

    def start(self) -> None:
        self.spent = 0.0
        self.skipped = 0
        self.last_cost: dict[str, float] = {}
        self._spent_before: dict[str, float] = {}
        self._started = self.clock()

    def allows(self, kind: str) -> bool:
        if self.fraction is None:
            return True
        other = self.clock() - self._started - self.spent
        if self.spent + self.last_cost.get(kind, 0.0) <= self.fraction * other:
            return True
        self.skipped += 1
        return False

    def begin(self, kind: str) -> None:
        self._spent_before[kind] = self.spent

    def end(self, kind: str) -> None:
        """Remember what this piece of work cost, to judge the next one of its kind."""
        self.last_cost[kind] = self.spent - self._spent_before.pop(kind, self.spent)

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
