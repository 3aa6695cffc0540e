"""A progress bar that only draws where someone is watching."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from normlab.training.metrics import Accuracy, Mean


class TerminalProgressBar(TQDMProgressBar):
    """tqdm bars in an interactive terminal; silent when output goes to a file or a pipe,
    where carriage-return redraws turn a log into thousands of partial lines. (With `rich`
    installed Lightning would otherwise pick its RichProgressBar, which writes nothing
    useful to a redirected log.) The per-epoch summary lines come from `MetricHistory`.

    The bar counts epochs as the summary lines do (`epoch 3/20`) and shows the epoch's running
    loss and accuracy and the time left for the whole run. The running figures are read from
    this process's metric sums (no synchronization with other processes) at most once every
    `READ_EVERY_S` seconds within an epoch, and when the epoch's training or validation ends:
    reading a number off a GPU waits for it, and that must not happen at every step.

    Args:
        refresh_rate: redraw every this many batches.
        force: draw bars even when stdout is not a terminal.
    """

    READ_EVERY_S = 2.0

    def __init__(self, refresh_rate: int = 10, force: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._fit_start = 0.0
        self._batches_done = 0  # in the current epoch
        self._in_batch = False
        self._read_at = 0.0
        self._shown: dict[str, str] = {}
        if not (force or sys.stdout.isatty()):
            self.disable()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._fit_start = self._read_at = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._batches_done = 0
        # The last epoch's final loss and accuracy are not this epoch's (tqdm would keep them
        # through its reset): they return with the first read of the new epoch's sums.
        self._shown = {k: v for k, v in self._shown.items() if k not in ("loss", "acc")}
        self.train_progress_bar.set_postfix(self._shown, refresh=False)
        self.train_progress_bar.set_description(epoch_label(trainer))

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._batches_done = batch_idx + 1
        self._in_batch = True
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._in_batch = False

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if self.is_disabled:
            return {}
        now = time.perf_counter()
        if not self._in_batch or now - self._read_at >= self.READ_EVERY_S:
            self._shown = self._read_metrics(trainer, pl_module)
            self._read_at = now
        metrics: dict[str, Any] = dict(self._shown)
        eta = self._run_eta(trainer)
        if eta is not None:
            metrics["run eta"] = format_duration(eta)
        return metrics

    def _read_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        metrics: dict[str, str] = {}
        loss = running_value(getattr(pl_module, "train_loss", None))
        acc = running_value(getattr(pl_module, "train_acc", None))
        if loss is not None:
            metrics["loss"] = f"{loss:.4f}"
        if acc is not None:
            metrics["acc"] = f"{acc:.4f}"
        best = trainer.callback_metrics.get("val/acc_best")
        if best is not None:
            metrics["val best"] = f"{float(best):.4f}"
        return metrics

    def _run_eta(self, trainer: L.Trainer) -> float | None:
        """Seconds left for the whole run, from the pace so far (validation included)."""
        per_epoch = self.total_train_batches
        max_epochs = trainer.max_epochs
        if not max_epochs or max_epochs < 0 or not per_epoch or math.isinf(per_epoch):
            return None
        done = trainer.current_epoch * per_epoch + self._batches_done
        total = max_epochs * per_epoch
        elapsed = time.perf_counter() - self._fit_start
        if done <= 0 or elapsed <= 0:
            return None
        return max(0.0, elapsed * (total - done) / done)


def epoch_label(trainer: L.Trainer) -> str:
    """`epoch 3/20`: counted from 1, as the per-epoch summary lines count."""
    total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
    return f"epoch {trainer.current_epoch + 1}{total}"


def running_value(metric: Any) -> float | None:
    """The epoch's value so far of a normlab `Mean` or `Accuracy` in this process (its local
    sums, no synchronization with other processes); None for anything else or before the
    epoch's first step."""
    return metric.local_value() if isinstance(metric, Mean | Accuracy) else None


def format_duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
