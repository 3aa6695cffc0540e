"""Stop a run whose training loss turns NaN or infinite, so a sweep goes on and reports it.

A learning-rate sweep is meant to find the rates at which a network blows up; a blown-up run
should end as a data point (`status: "diverged"` in `results.json`), not as a crash or as
hours of training on NaN weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from normlab.errors import ConfigError

log = logging.getLogger("normlab")


class DivergenceGuard(L.Callback):
    """Set `trainer.should_stop` once the training loss has been non-finite (or above
    `max_loss`).

    Reading a loss on the host (`loss.item()`) waits for the device to finish every queued
    kernel; doing that on each step would stall a GPU pipeline. So each step only updates the
    largest |loss| seen, a tensor that stays on the device (no sync), and it is read
    every `check_every_n_steps` steps and at the end of each training epoch. A NaN is
    therefore caught at most that many steps late, which costs nothing: once the weights are
    NaN, every later loss is too. Lightning then runs the validation it always runs before an
    early stop, so the run's last epoch records the collapse.

    Args:
        check_every_n_steps: read the largest |loss| on the host this often (optimizer steps).
        max_loss: also count a loss whose magnitude exceeds this as divergence (None: only
            NaN/inf). A network whose loss has exploded to 1e20 has diverged even when it
            stays finite (it usually comes back as a dead network at chance accuracy).
    """

    def __init__(self, check_every_n_steps: int = 25, max_loss: float | None = None) -> None:
        steps = check_every_n_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ConfigError(
                f"callbacks.divergence.check_every_n_steps={steps!r}: must be a positive whole "
                "number of optimizer steps (how often the loss is read on the host), e.g. "
                "callbacks.divergence.check_every_n_steps=25."
            )
        bad_limit = isinstance(max_loss, bool) or not isinstance(max_loss, int | float)
        if max_loss is not None and (bad_limit or not max_loss > 0):
            raise ConfigError(
                f"callbacks.divergence.max_loss={max_loss!r}: must be a positive number (a "
                "loss above it counts as divergence), e.g. callbacks.divergence.max_loss=1e4, "
                "or null to stop only on NaN/inf."
            )
        self.check_every_n_steps = check_every_n_steps
        self.max_loss = max_loss
        self.diverged_at_step: int | None = None
        self.diverged_at_epoch: int | None = None
        self._worst: torch.Tensor | None = None  # the largest |loss| so far

    @property
    def diverged(self) -> bool:
        return self.diverged_at_step is not None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return  # manual optimization that returns nothing: nothing to watch
        # One running maximum of |loss| (one or two tensor operations a step): NaN and
        # +-inf carry through torch.maximum, and the largest magnitude is what max_loss bounds.
        magnitude = loss.detach().abs()
        if magnitude.ndim:
            magnitude = magnitude.amax()
        self._worst = magnitude if self._worst is None else torch.maximum(self._worst, magnitude)
        if trainer.global_step % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if self._worst is None or self.diverged:
            return
        worst = float(self._worst)
        bad = not math.isfinite(worst) or (self.max_loss is not None and worst > self.max_loss)
        # Every process must take the same decision, or DDP ranks would wait on each other.
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        self.diverged_at_step = trainer.global_step
        self.diverged_at_epoch = trainer.current_epoch
        trainer.should_stop = True
        log.warning(
            "training loss is NaN, infinite or above max_loss=%s (seen by step %d, epoch %d): "
            "stopping this run; results.json will say status 'diverged'",
            self.max_loss,
            trainer.global_step,
            trainer.current_epoch + 1,
        )

    def record(self) -> dict[str, Any]:
        """What `results.json` adds for a diverged run (empty when the run did not diverge)."""
        if not self.diverged:
            return {}
        return {
            "status": "diverged",
            "diverged_at_step": self.diverged_at_step,
            "diverged_at_epoch": self.diverged_at_epoch,
        }


def divergence_record(trainer: L.Trainer) -> dict[str, Any]:
    """The guard's record for this trainer's run, or {} when no guard stopped it."""
    for callback in trainer.callbacks:
        if isinstance(callback, DivergenceGuard) and callback.diverged:
            return callback.record()
    return {}
