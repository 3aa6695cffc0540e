"""The run's TensorBoard HParams record: its real hyperparameters next to its real results.

Lightning records hyperparameters when `fit` starts, before any result exists; with
`default_hp_metric: false` that writes no HParams entry at all (with it, a meaningless
`hp_metric = -1`). So the entry is written once, when the run has ended and been tested:
flattened hyperparameters (`model/norm/name`, `optimizer/lr`, `data/batch_size`, `seed`, ...)
plus the run's status, and its metrics under `hparams/` (their own scalar tags, so the curves
of `val/acc_best` and `test/acc` keep exactly the points the run logged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger

# results.json keys shown as HParams metrics.
METRIC_KEYS = (
    "val_acc_best",
    "val_acc_final",
    "test_acc",
    "train_acc_final",
    "train_loss_final",
    "epochs_completed",
)


def hparams_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    metrics = {f"hparams/{key}": float(results[key]) for key in METRIC_KEYS if _has(results, key)}
    if _has(results, "train_acc_final") and _has(results, "val_acc_final"):
        # Final-epoch train minus validation accuracy: how much the run overfits.
        gap = results["train_acc_final"] - results["val_acc_final"]
        metrics["hparams/train_val_gap"] = float(gap)
    return metrics


def record_hparams(
    loggers: Iterable[Logger], hparams: Mapping[str, Any], results: Mapping[str, Any], step: int
) -> None:
    """Write the HParams entry to every TensorBoard logger of the run."""
    params = {**hparams, "status": results.get("status", "unknown")}
    metrics = hparams_metrics(results)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics, step=step)
            # The Trainer already finalized (closed) the logger after `test`; finalize again so
            # the new entry is flushed and the file closed.
            logger.finalize("success")


def _has(results: Mapping[str, Any], key: str) -> bool:
    return isinstance(results.get(key), int | float)
