"""What every arm of the time-to-accuracy race records after each epoch, and normlab's
callback that records it from inside `train.py`.

One JSON line per epoch: `epoch`, `val_acc` (correct / total on the validation split, the
race's measure), `test_acc` (the same on the test set, reported, never raced on), `time` (the
wall clock when the epoch's validation ended) and `test_s` (how long the test evaluation
took: it is not part of the race, so the race subtracts it). Kept light: `train.py` imports
this module to build the callback, and its start-up is part of normlab's time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from torch import nn


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable) -> float:
    """correct / total of `model`'s top-1 prediction, in eval mode (left so)."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        correct += (model(images).argmax(1) == labels).sum().item()
        total += labels.numel()
    return correct / total


def record_epoch(
    path: str | Path, epoch: int, val_acc: float, model: nn.Module, test_batches: Iterable
) -> None:
    """Stamp the epoch's end, then test the network (timed apart) and append the line."""
    ended = time.time()
    test_acc = accuracy(model, test_batches)
    line = {
        "epoch": epoch,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "time": ended,
        "test_s": time.time() - ended,
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


class RaceTrace(L.Callback):
    """normlab's arm: after each epoch's validation (Lightning's own loop on the validation
    split, `val/acc`), record the epoch and stop the run once `val/acc` reaches `target`."""

    def __init__(self, target: float, path: str) -> None:
        self.target, self.path = target, path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning validates at the end of the training epoch, before this hook.
        # torchmetrics' float32: 2900/5000 reads 0.57999998; rounded, it meets a 0.58 target
        # as the loop arms' exact correct / total does.
        val_acc = round(float(trainer.callback_metrics["val/acc"]), 6)
        test = trainer.datamodule.test_dataloader()
        record_epoch(self.path, trainer.current_epoch + 1, val_acc, pl_module, test)
        pl_module.train()
        if val_acc >= self.target:
            trainer.should_stop = True
