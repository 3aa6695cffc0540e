"""Per-epoch record of the logged metrics, with the epoch's wall time.

`results.json` and the sweep report read the history; it is part of the checkpoint, so a
resumed run keeps the epochs it finished before the interruption. One summary line is logged
per epoch (logger `normlab`, so it reaches the console and `train.log` alike; printed directly
where logging is not set up, e.g. in a notebook), readable in a terminal and a redirected log.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from tqdm import tqdm

log = logging.getLogger("normlab")


class MetricHistory(L.Callback):
    """Records `train/*`, `val/*` and `time/epoch_s` after every training epoch.

    Args:
        print_summary: print one line per epoch on the main process.
    """

    def __init__(self, print_summary: bool = True) -> None:
        self.print_summary = print_summary
        self.epochs: list[dict[str, float]] = []
        self._start = 0.0
        self._restoring_fit = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._start
        pl_module.log("time/epoch_s", elapsed)
        row: dict[str, float] = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train/", "val/")):
                row[key] = float(value.item() if isinstance(value, torch.Tensor) else value)
        row["time/epoch_s"] = elapsed
        self.epochs.append(row)
        if self.print_summary and trainer.is_global_zero:
            line = format_epoch(row, trainer.max_epochs)
            if logging.getLogger().hasHandlers():
                log.info(line)
            else:
                tqdm.write(line)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning restores callback state for `test(ckpt_path=...)` too (called just before
        # `load_state_dict`). Only a resumed fit may rewind the history: testing the best
        # checkpoint must not cut off the epochs trained after it.
        self._restoring_fit = trainer.state.fn == TrainerFn.FITTING

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._restoring_fit:
            self.epochs = list(state_dict.get("epochs", []))


def format_epoch(row: dict[str, float], max_epochs: int | None) -> str:
    def num(key: str) -> str:
        value = row.get(key)
        return "-" if value is None or math.isnan(value) else f"{value:.4f}"

    total = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    return (
        f"epoch {int(row['epoch']) + 1}{total}"
        f"  train loss {num('train/loss')} acc {num('train/acc')}"
        f"  val loss {num('val/loss')} acc {num('val/acc')} best {num('val/acc_best')}"
        f"  {row['time/epoch_s']:.1f}s"
    )
