"""The LightningModule: cross-entropy training of any `nn.Module` classifier.

It owns the loss, the metrics and the optimizer; the network, the optimizer factory and the
schedule are handed in (by `normlab.runner` from the Hydra config), so this file knows nothing
of Hydra and the networks know nothing of Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric

from normlab.errors import ConfigError
from normlab.training.hooks import TRAINING_STEP_HOOKS, skip_inherited_batch_hooks
from normlab.training.metrics import Accuracy, Mean

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# Called as schedule(optimizer, total_steps=...); see normlab.training.schedules.
ScheduleFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class ImageClassifier(L.LightningModule):
    """Train `net` with cross-entropy and report accuracy per stage.

    Accuracy is micro-averaged (correct predictions / images), which is what the lesson
    computes; torchmetrics' `MulticlassAccuracy` would default to the macro average. The
    loss and accuracy are running sums (`normlab.training.metrics`): a step adds to them
    with a few tensor operations and never waits for the device.

    Logged: `train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/acc_best` (best epoch so
    far), `test/loss`, `test/acc`. Epoch time and learning rate come from callbacks.

    Args:
        net: the classifier network, mapping [B, C, H, W] images to [B, classes] logits.
        optimizer: called with the parameters; e.g. `functools.partial(torch.optim.SGD, lr=0.1)`.
        scheduler: called with the optimizer and `total_steps`, e.g.
            `functools.partial(normlab.training.schedules.cosine, min_lr=0.0)`; None = constant.
        num_classes: number of classes the network predicts (`model.num_classes`); a step
            whose logits have another width stops the run with a ConfigError, instead of
            training a wider head in silence or failing inside cross-entropy.
        compile: compile the network with `torch.compile` in place (`nn.Module.compile`, so
            parameter names carry no `_orig_mod.` and checkpoints load into an uncompiled
            network). True for the defaults, or a mapping of `torch.compile` options, e.g.
            `{"mode": "reduce-overhead"}` (CUDA graphs: no per-kernel launch cost at small
            batch sizes) or `{"backend": "aot_eager"}` (no code generation).
        channels_last: run convolutions in NHWC memory format (faster on GPUs with tensor cores).
        hparams: plain (JSON-like) values to record as the run's hyperparameters.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: ScheduleFactory | None = None,
        num_classes: int = 10,
        compile: bool | Mapping[str, Any] = False,
        channels_last: bool = False,
        hparams: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.channels_last = channels_last
        if hparams:
            # Plain containers only: torch.load(weights_only=True) must be able to read them.
            self.save_hyperparameters(dict(hparams))
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile(**(dict(compile) if isinstance(compile, Mapping) else {}))

        self.num_classes = num_classes
        # Neither metric synchronizes with the host on a step (no input validation, no NaN
        # check): a NaN loss shows up as a NaN epoch loss.
        self.train_acc, self.val_acc, self.test_acc = Accuracy(), Accuracy(), Accuracy()
        self.train_loss, self.val_loss, self.test_loss = Mean(), Mean(), Mean()
        self.val_acc_best = MaxMetric()
        # Part of the checkpoint, so a resumed run remembers its best epoch.
        self.val_acc_best.persistent(True)
        # None of Lightning's per-step hooks is used here: it need not call them.
        skip_inherited_batch_hooks(self, L.LightningModule, TRAINING_STEP_HOOKS)

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning records the hook it is in (a string) before and after every hook call, some
        # forty times a training step; `nn.Module.__setattr__`'s checks for parameters, buffers
        # and submodules cannot apply to it. Private to Lightning, and no public way exists:
        # Lightning sets it itself on every hook call, so only this setter can make it cheap.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        if logits.size(1) != self.num_classes:  # a shape: read without waiting for the device
            raise self._width_error(logits.size(1))
        loss = F.cross_entropy(logits, labels)
        # update(), not __call__: the call would also compute a per-batch value nobody reads.
        getattr(self, f"{stage}_acc").update(logits.detach(), labels)
        getattr(self, f"{stage}_loss").update(loss.detach())
        return loss

    def _width_error(self, width: int) -> ConfigError:
        n = self.num_classes
        return ConfigError(
            f"model.num_classes={n} but the network ({type(self.net).__name__}) outputs {width} "
            f"class scores per image. Build the network for {n} classes (a custom network's "
            f"own output width must follow model.num_classes), or set model.num_classes={width} "
            "if the data has that many classes."
        )

    def _log_epoch_metrics(self, stage: str) -> None:
        """Register the stage's metric objects with Lightning, once per epoch.

        Lightning computes a logged `Metric` object when the epoch ends (synchronized across
        processes) and then resets it; the steps only `update()` it. Logging the object on
        every step, the usual idiom, adds Lightning bookkeeping to every step, which dominated
        small-batch CPU steps (docs/performance.md).
        """
        for name in ("loss", "acc"):
            metric = getattr(self, f"{stage}_{name}")
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=True)

    def on_train_epoch_start(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_start(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._log_epoch_metrics("test")

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # a couple of batches from an untrained net are not an epoch
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        steps = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer, total_steps=steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
