"""A progress bar that only draws where someone is watching."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import TQDMProgressBar


class TerminalProgressBar(TQDMProgressBar):
    """tqdm bars in an interactive terminal; silent when output goes to a file or a pipe,
    where carriage-return redraws turn a log into thousands of partial lines. (With `rich`
    installed Lightning would otherwise pick its RichProgressBar, which writes nothing
    useful to a redirected log.) The per-epoch summary lines come from `MetricHistory`.

    Args:
        refresh_rate: redraw every this many batches.
        force: draw bars even when stdout is not a terminal.
    """

    def __init__(self, refresh_rate: int = 10, force: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate)
        if not (force or sys.stdout.isatty()):
            self.disable()
