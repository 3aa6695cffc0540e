"""Clocks for the parts of a training epoch, and Lightning callbacks that read them.

A full epoch at batch 4 is 12,500 steps; the benchmark times a part of one and extrapolates.
`PhaseClock` records when the first `warmup` steps are done, when the last measured step is
done, and named marks after that (evaluation, the end of the epoch). From these:

    per_step  = steady-state seconds per training step (after the warm-up steps); also their
                median, which a busy machine's pre-emptions barely move
    fixed     = everything that happens once per epoch: worker start-up and the warm-up
                steps' excess over the steady state, the gap after the last step, the
                checkpoint or `torch.save` at the end
    eval_per_image = seconds per evaluated image
    epoch(steps, images) = fixed + steps * per_step + images * eval_per_image
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L


class PhaseClock:
    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self.t0 = self.t_warm = self.t_last = 0.0
        self.steps = 0
        self.marks: dict[str, float] = {}
        self.eval_images = 0
        self.durations: list[float] = []  # of each step after the warm-up

    def start(self) -> None:
        self.t0 = self.t_warm = self.t_last = time.perf_counter()
        self.steps = 0
        self.marks = {}
        self.durations = []

    def step_done(self) -> None:
        now = time.perf_counter()
        self.steps += 1
        if self.steps > self.warmup:
            self.durations.append(now - self.t_last)
        self.t_last = now
        if self.steps == self.warmup:
            self.t_warm = now

    def mark(self, name: str, images: int | None = None) -> None:
        self.marks[name] = time.perf_counter()
        if images is not None:
            self.eval_images = images

    def summary(self) -> dict[str, Any]:
        """Seconds per step, per evaluated image and once per epoch (see the module doc)."""
        measured = self.steps - self.warmup
        if measured < 1:
            raise ValueError(f"{self.steps} steps timed; need more than warmup={self.warmup}")
        per_step = (self.t_last - self.t_warm) / measured
        train_end = self.marks.get("train", self.t_last)
        eval_end = self.marks.get("eval", train_end)
        end = self.marks.get("end", eval_end)
        eval_s = eval_end - train_end
        fixed = (self.t_warm - self.t0 - self.warmup * per_step) + (train_end - self.t_last)
        fixed += end - eval_end
        return {
            "steps": self.steps,
            "per_step_s": per_step,
            "per_step_median_s": statistics.median(self.durations),
            "eval_images": self.eval_images,
            "eval_per_image_s": eval_s / self.eval_images if self.eval_images else 0.0,
            "fixed_s": fixed,
            "measured_s": end - self.t0,
        }


def epoch_seconds(summary: dict[str, Any], steps: int, eval_images: int) -> float:
    """A whole epoch of `steps` training steps and `eval_images` evaluated images."""
    return (
        summary["fixed_s"]
        + steps * summary["per_step_s"]
        + eval_images * summary["eval_per_image_s"]
    )


class EpochClock(L.Callback):
    """A `PhaseClock` on Lightning's hooks, written as JSON to `path` when training ends.

    Add it to a run's callbacks from the config (`callbacks.bench_clock._target_=...`).
    The epoch's parts: training steps, validation (its images counted), and the rest up to
    `on_train_end`, which runs after the checkpoints of the epoch are saved.
    """

    def __init__(self, path: str, warmup: int = 5) -> None:
        self.path = Path(path)
        self.clock = PhaseClock(warmup)
        self._val_images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.step_done()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.clock.mark("train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        if not trainer.sanity_checking:
            self._val_images += len(batch[1])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.clock.mark("eval", images=self._val_images)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.mark("end")
        self.path.write_text(json.dumps(self.clock.summary()))


class FirstStepProbe(L.Callback):
    """Writes to `path`, as JSON, when the first training step starts (the end of a run's
    start-up): the wall-clock time (`time.time()`, comparable across processes) and the CPU
    seconds the process has used so far (steadier than wall time on a busy machine)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and trainer.current_epoch == 0 and not self.path.exists():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime
            self.path.write_text(json.dumps({"time": time.time(), "cpu_s": cpu}))
