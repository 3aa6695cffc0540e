"""The run's TensorBoard HParams record: its real hyperparameters next to its real results.

Lightning records hyperparameters when `fit` starts, before any result exists; with
`default_hp_metric: false` that writes no HParams entry at all (with it, a meaningless
`hp_metric = -1`). So the entry is written once, when the run has ended and been tested: the
values that define the run (the runner chooses them: `model/norm`, `optimizer/lr`, `seed`, ...)
plus its status, and its final figures as metrics.

The entry goes into a run of its own, `<run>/final`, beside the run's curves:
- HParams lists as metrics the scalar tags of the run that holds the entry (and its
  sub-runs), sorted by name, and displays the first five. In `final` there are only the final
  figures, so those are the metrics, whatever the curves and diagnostics are called.
- Each figure is named after the curve it ends (`val/acc_best`, `test/acc`, `train/loss`):
  in Scalars and Time Series it is one more point on that curve's chart, from the run
  `<run>/final`, and adds no chart group of its own. (Tags of their own, `acc/...`, sorted
  first there: TensorBoard opened on five charts of one point each, the curves collapsed.)

Only the session records are written, not the experiment record Lightning and torch add:
TensorBoard takes one run's experiment record (whichever it reads first) as the list of
columns for all runs, with none marked as differing, and then shows the first five by name.
Without one, TensorBoard builds the list from all the runs shown, puts the hyperparameters
whose values differ between them first, and displays those.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from normlab.results import result_number, train_val_gap
from normlab.training.trackers import is_tracker, record_final

log = logging.getLogger("normlab")

# The sub-run (folder inside the run's TensorBoard folder) that holds the HParams entry.
FINAL_RUN = "final"

# HParams metric tag -> results.json key, in the order TensorBoard lists them (by name): the
# five it displays are the test, final training and validation accuracies, the final training
# loss and the best validation accuracy; the epoch count and the gap can be ticked in.
METRICS = {
    "test/acc": "test_acc",
    "train/acc": "train_acc_final",
    "train/loss": "train_loss_final",
    "val/acc": "val_acc_final",
    "val/acc_best": "val_acc_best",
    "val/epochs_completed": "epochs_completed",
}
GAP_TAG = "val/train_val_gap"


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
    """Write the HParams entry, into `<log dir>/final`, for every TensorBoard logger of the
    run, and the same values and metrics to MLflow and W&B (normlab.training.trackers)."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    params = {key: _plain(value) for key, value in hparams.items()}
    params["status"] = str(results.get("status", "unknown"))
    metrics = hparams_metrics(results)
    for logger in loggers:
        if is_tracker(logger):
            record_final(logger, params, metrics, step)
            continue
        if not isinstance(logger, TensorBoardLogger):
            continue
        try:
            writer = SummaryWriter(os.path.join(logger.log_dir, FINAL_RUN))
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # The run itself is over and recorded: a full disk costs only this entry.
            log.error("TensorBoard's HParams entry not written: %s", err.strerror)
            continue
        try:
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, step)
            _experiment, session_start, session_end = hparams_summaries(params, metrics)
            # Private to torch's SummaryWriter, and no public way exists: add_hparams writes
            # into a new run folder of its own, not this run's final record.
            writer._get_file_writer().add_summary(session_start, step)
            writer._get_file_writer().add_summary(session_end, step)
        finally:
            writer.close()


def _plain(value: Any) -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else str(value)
