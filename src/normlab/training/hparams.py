"""The run's TensorBoard HParams record: its real hyperparameters next to its real results.

Lightning records hyperparameters when `fit` starts, before any result exists; with
`default_hp_metric: false` that writes no HParams entry at all (with it, a meaningless
`hp_metric = -1`). So the entry is written once, when the run has ended and been tested: the
values that define the run (the runner chooses them: `model/norm`, `optimizer/lr`, `seed`, ...)
plus its status, and its final metrics (`acc/test`, `acc/val_best`, ... : their own scalar
tags, so the curves of `val/acc_best` and `test/acc` keep exactly the points the run logged).

Only the session records are written, not the experiment record Lightning and torch add:
TensorBoard takes one run's experiment record (whichever it reads first) as the list of
columns for all runs, with none marked as differing, and then shows the first five by name.
Without one, TensorBoard builds the list from all the runs shown, puts the hyperparameters
whose values differ between them first, and displays those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from normlab.results import result_number, train_val_gap
from normlab.trackers import is_tracker, record_final

# HParams metric tag -> results.json key. With no experiment record, TensorBoard lists the
# metrics of the runs' scalar tags in name order and displays the first five: `acc/` sorts
# before every other tag a run writes (`activation_std/...`, `grad_norm/...`, `train/...`), so
# the five accuracies are the columns a user sees.
METRICS = {
    "acc/test": "test_acc",
    "acc/train_final": "train_acc_final",
    "acc/val_best": "val_acc_best",
    "acc/val_final": "val_acc_final",
    "loss/train_final": "train_loss_final",
    "epochs_completed": "epochs_completed",
}
GAP_TAG = "acc/train_val_gap"


def hparams_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    metrics = {
        tag: value
        for tag, key in METRICS.items()
        if (value := result_number(results, key)) is not None
    }
    gap = train_val_gap(results)  # the report's column, computed the same way
    if gap is not None:
        metrics[GAP_TAG] = gap
    return metrics


@rank_zero_only
def record_hparams(
    loggers: Iterable[Logger], hparams: Mapping[str, Any], results: Mapping[str, Any], step: int
) -> None:
    """Write the HParams entry to every TensorBoard logger of the run, and the same values
    and metrics to MLflow and W&B (normlab.trackers)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    params = {key: _plain(value) for key, value in hparams.items()}
    params["status"] = str(results.get("status", "unknown"))
    metrics = hparams_metrics(results)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_metrics(metrics, step=step)
            _experiment, session_start, session_end = hparams_summaries(params, metrics)
            writer = logger.experiment._get_file_writer()
            writer.add_summary(session_start, step)
            writer.add_summary(session_end, step)
            # The Trainer already finalized (closed) the logger after `test`; finalize again so
            # the new entry is flushed and the file closed.
            logger.finalize("success")
        elif is_tracker(logger):
            record_final(logger, params, metrics, step)


def _plain(value: Any) -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else str(value)
