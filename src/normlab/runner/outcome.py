"""A run's results.json: what it holds, and the one wrapper that writes it however the run ends.

`RunRecord` is entered once the run directory is claimed. Inside it the run is prepared,
fitted and tested; on the way out it records the status: "completed" (or "diverged", by the
DivergenceGuard), "failed" with the error, and `failure="config"` for a NormlabError (a
continued sweep keeps such a job: running it again would fail again), or "interrupted" for
Ctrl-C and SIGTERM. A full disk becomes one paragraph instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, Timer

from normlab.errors import DataError, NormlabError
from normlab.files import DiskFullError, disk_full, write_json
from normlab.runner.commands import command
from normlab.runner.console import in_multirun
from normlab.runner.rundir import RunPlan, history_from_last_checkpoint, release_folder
from normlab.runner.slurm import job_record as slurm_job_record
from normlab.runner.sweep import leave_the_worker_pool, report_interrupted_sweep
from normlab.training import MetricHistory

log = logging.getLogger("normlab")


class RunRecord:
    """Collects a run's results and writes results.json when the `with` block ends, with the
    status that ending means; `cleanup` is undone first, however the run ends."""

    def __init__(self, plan: RunPlan, name: str, output_dir: Path) -> None:
        self.plan, self.name, self.output_dir = plan, name, output_dir
        self.results: dict[str, Any] = {"status": "failed"}
        self.trainer: L.Trainer | None = None
        self.threads: int | None = None
        self.training = False  # whether fit() started: before, a resumed run's files stay
        self.cleanup = contextlib.ExitStack()
        self.data_failed = False  # stopped by its data, which is read before the first step
        self.started = time.perf_counter()

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        replacement = None
        try:
            if err is not None:
                replacement = self.failed(err)
        finally:
            self.finish()
        if replacement is not None:
            raise replacement from None

    def failed(self, err: BaseException) -> BaseException | None:
        """Record why the run stopped; returns the exception to raise instead, if any."""
        if isinstance(err, NormlabError):
            self.results.update(error=str(err), failure="config")
            self.data_failed = isinstance(err, DataError)
        elif isinstance(err, KeyboardInterrupt | SystemExit):
            # Ctrl-C or SIGTERM (see normlab.runner.cli), or Lightning exiting after either.
            self.results["status"] = "interrupted"
            continuation = command("train.py", resume=self.output_dir)
            log.warning("interrupted; continue with: %s", continuation)
            return KeyboardInterrupt()
        elif isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            failure = disk_full(self.output_dir, "the run stopped")
            self.results["error"] = str(failure)
            return failure
        elif isinstance(err, Exception):
            self.results["error"] = f"{type(err).__name__}: {err}"
        return None

    def finish(self) -> None:
        self.cleanup.close()
        results, trainer = self.results, self.trainer
        if trainer is not None and results["status"] in ("failed", "interrupted"):
            results.update(collect_results(trainer, {}, "", status=results["status"]))
        results["wall_s"] = round(time.perf_counter() - self.started, 3)
        results["overrides"] = self.plan.overrides
        results["name"] = self.name
        results["threads"] = self.threads
        results["tags"] = [str(t) for t in self.plan.config.get("tags") or []]
        results.update(slurm_job_record())  # which SLURM job produced it, under SLURM
        # Under DDP every rank runs this; rank 0 holds the reduced metrics. A resumed run that
        # failed before training keeps the results.json it had.
        if (trainer is None or trainer.is_global_zero) and (self.training or not self.plan.resumed):
            record_results(self.output_dir, results)
        # The next job of a sweep (or the next normlab.train call) runs in this process.
        release_folder(self.output_dir)
        if self.data_failed and not self.plan.resumed and not in_multirun():
            # A new single run that never trained: its folder would hold only bookkeeping.
            # (A sweep's job folder stays: the sweep's report lists the job as failed.)
            shutil.rmtree(self.output_dir, ignore_errors=True)
            log.info("nothing kept of the run: %s removed", self.output_dir)
        if in_multirun() and results["status"] == "interrupted":
            report_interrupted_sweep()
            leave_the_worker_pool()


def record_results(output_dir: Path, results: dict[str, Any]) -> None:
    """Write results.json; on a full disk, say so instead of hiding the run's own error."""
    try:
        write_json(output_dir / "results.json", results)
    except DiskFullError as err:
        log.error("results.json not written: %s", err)


def final_summary(results: Mapping[str, Any]) -> str:
    """`val acc best 0.9667, test acc 0.9444 (3 epochs, 4.1 s)`; missing figures as `-`."""

    def num(key: str) -> str:
        value = results.get(key)
        return f"{value:.4f}" if isinstance(value, int | float) else "-"

    status = results.get("status", "completed")
    return (
        f"val acc best {num('val_acc_best')}, test acc {num('test_acc')} "
        f"({plural(results.get('epochs_completed', 0), 'epoch')}, {results.get('wall_s', 0):.1f} s)"
        + ("" if status == "completed" else f", {status}")
    )


def plural(count: Any, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def relative_to_run(path: str, output_dir: Path) -> str:
    """A checkpoint's path relative to the run directory (as results.json records it)."""
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(output_dir.resolve()))
    except ValueError:
        return str(path)


def early_stopping_fired(trainer: L.Trainer) -> bool:
    """Whether an EarlyStopping callback ended the fit. Ask before testing a checkpoint:
    trainer.test(ckpt_path=...) restores the callbacks' state from that checkpoint, which
    was saved before the callback fired."""
    return any(
        getattr(cb, "stopped_epoch", 0) for cb in trainer.callbacks if isinstance(cb, EarlyStopping)
    )


def stop_record(
    trainer: L.Trainer, results: Mapping[str, Any], early_stopped: bool
) -> dict[str, Any]:
    """Why training ended: "max_epochs", or what cut it short (max_time, max_steps, early
    stopping, divergence)."""
    if results.get("status") == "diverged":
        return {"stopped_by": "divergence"}
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or results.get("epochs_completed", 0) >= max_epochs:
        return {"stopped_by": "max_epochs"}
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    remaining = timer.time_remaining("train") if timer is not None else None
    if remaining is not None and remaining <= 0:
        done = results.get("epochs_completed")
        return {
            "stopped_by": "max_time",
            "stopped_reason": f"trainer.max_time ran out after {done} of {max_epochs} epochs",
        }
    if 0 < trainer.max_steps <= trainer.global_step:
        return {"stopped_by": "max_steps"}
    if early_stopped:
        return {"stopped_by": "early_stopping"}
    return {"stopped_by": "other", "stopped_reason": "training ended before trainer.max_epochs"}


def collect_results(
    trainer: L.Trainer,
    test_metrics: Mapping[str, float],
    best_checkpoint: str,
    status: str = "completed",
) -> dict[str, Any]:
    history = next((cb.epochs for cb in trainer.callbacks if isinstance(cb, MetricHistory)), [])
    if not history and trainer.checkpoint_callbacks:  # ddp_spawn: epochs ran in child processes
        history = history_from_last_checkpoint([cb.dirpath for cb in trainer.checkpoint_callbacks])
    final = history[-1] if history else {}
    val_accs = [row["val/acc"] for row in history if "val/acc" in row]
    # Further test figures (callbacks.bn_eval): test/acc_batch_stats -> test_acc_batch_stats.
    extra = {k.replace("/", "_"): v for k, v in test_metrics.items() if k.count("/") == 1}
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    return {
        **extra,
        "status": status,
        "val_acc_best": max(val_accs) if val_accs else None,
        "val_acc_final": final.get("val/acc"),
        "test_acc": test_metrics.get("test/acc"),
        "test_loss": test_metrics.get("test/loss"),
        "train_acc_final": final.get("train/acc"),
        "train_acc_eval_final": final.get("train/acc_eval"),
        # optimizer.lr as the optimizer got it: resolved (e.g. scaled with the batch size).
        "lr": optimizer.defaults.get("lr") if optimizer is not None else None,
        "train_loss_final": final.get("train/loss"),
        "val_loss_final": final.get("val/loss"),
        # Counted by the fit loop when MetricHistory is absent (callbacks=none).
        "epochs_completed": len(history) or trainer.current_epoch,
        "best_checkpoint": best_checkpoint,
        "history": history,
    }


def data_record(datamodule: L.LightningDataModule) -> dict[str, Any]:
    """What predict and the report need to know of the data without opening it again: the
    class names (folder names for data=image_folder) and the normalization statistics the
    run used (computed from the training images when data.mean/std are null)."""
    transform = getattr(datamodule, "eval_transform", None)
    record: dict[str, Any] = {"classes": [str(c) for c in getattr(datamodule, "class_names", ())]}
    if transform is not None:
        record["normalization"] = {"mean": list(transform.mean), "std": list(transform.std)}
    return record
