"""Numbers read from a run's results.json the same way everywhere: by the sweep report
(normlab.report) and by the run's own TensorBoard HParams record (normlab.training.hparams).
A module of its own so that neither layer imports the other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def result_number(results: Mapping[str, Any], key: str) -> float | None:
    """A number recorded in results.json; None when absent, null or not a number."""
    value = results.get(key)
    return float(value) if isinstance(value, int | float) else None


def train_val_gap(results: Mapping[str, Any]) -> float | None:
    """The final epoch's training accuracy minus its validation accuracy (how much the run
    overfits), from results.json; None when either is missing. The training accuracy is the
    eval-mode one (`train_acc_eval_final`: dropout off, a fixed sample of the training images)
    when the run measured it, else the epoch's running train-mode accuracy. The sweep report's
    column and the run's TensorBoard HParams metric both come from here."""
    train = result_number(results, "train_acc_eval_final")
    if train is None:
        train = result_number(results, "train_acc_final")
    val = result_number(results, "val_acc_final")
    return None if train is None or val is None else train - val
