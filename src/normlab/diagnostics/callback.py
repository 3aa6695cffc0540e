"""See inside the network while it trains: what the lesson claims about batch norm and dropout,
measured per layer and written to TensorBoard (docs/inspecting.md, "Inspecting a run", lists
every tag).

Every `every_n_steps` optimizer steps one training step is instrumented (step 0 included):
activations before and after each norm, ReLU sparsity, gradient norms, update ratios, batch
norms' variance ratios and state. After every `every_n_epochs`-th validation epoch: the
prediction grid, the confusion matrix, per-class accuracy and the validation variance ratio.
Layers are named by module path (`features.0.norm`, `head.1.act`).

The hooks return at once on other steps and a step's statistics reach the host in one
transfer. The confusion matrix and per-class accuracy are torchmetrics objects, so under DDP
they cover every process's share of the validation set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from normlab.diagnostics.figures import prediction_grid, to_uint8_images
from normlab.diagnostics.probes import (
    TrainingProbe,
    ValidationProbe,
    WatchedLayers,
    gradient_norms,
    snapshot,
    update_ratios,
)
from normlab.errors import ConfigError
from normlab.training.progress import epoch_label

# The largest bucket edge of torch.utils.tensorboard's default histogram bins.
HISTOGRAM_LIMIT = 1e20


class NetworkDiagnostics(L.Callback):
    """Layer statistics, batch-norm state and validation pictures in TensorBoard.

    Args:
        every_n_steps: instrument one training step in this many (0 = no training-step
            diagnostics).
        every_n_epochs: draw the prediction grid and confusion matrix, and log per-class
            accuracy and the validation variance ratio, after every this many validation
            epochs, the first and the last included (0 = never).
        num_images: validation images in the prediction grid (the first ones of the
            validation set, the same every epoch; 0 = no grid).
    """

    def __init__(
        self, every_n_steps: int = 50, every_n_epochs: int = 5, num_images: int = 32
    ) -> None:
        # (setting, value, what it counts, what 0 means, an example)
        settings = (
            ("every_n_steps", every_n_steps, "a number of optimizer steps", "never", 50),
            ("every_n_epochs", every_n_epochs, "a number of validation epochs", "never", 5),
            ("num_images", num_images, "a number of images", "no prediction grid", 32),
        )
        for name, value, what, zero, example in settings:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"callbacks.diagnostics.{name}={value!r}: use {what}, a whole number "
                    f"from 0 (0: {zero}), e.g. callbacks.diagnostics.{name}={example}; "
                    "callbacks/diagnostics=none switches all diagnostics off."
                )
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self._writer = None  # rank zero's SummaryWriter; None elsewhere
        self._enabled = False
        self._layers: WatchedLayers | None = None
        self._train_probe: TrainingProbe | None = None
        self._val_probe: ValidationProbe | None = None
        self._step = -1  # the step being instrumented, or -1
        self._last_step = -1
        self._weights_before: dict[str, list[torch.Tensor]] = {}
        self._grad_norms: dict[str, torch.Tensor] = {}
        self._val_hook = None
        self._logits: torch.Tensor | None = None
        self._confusion: MulticlassConfusionMatrix | None = None
        self._class_acc: MulticlassAccuracy | None = None
        self._sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # --- set-up ----------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Decided alike on every process: the validation metrics synchronize across them.
        self._enabled = any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)
        if not self._enabled:
            rank_zero_warn(
                "callbacks.diagnostics needs a TensorBoard logger (logger=tensorboard or "
                "logger=many); no diagnostics will be written."
            )
            return
        if not trainer.is_global_zero:
            return  # only rank zero measures layers and writes event files
        self._writer = next(
            lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)
        )
        self._layers = WatchedLayers.of(network(pl_module))
        self._train_probe = TrainingProbe(self._layers)
        self._val_probe = ValidationProbe(self._layers)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hooks()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for probe in (self._train_probe, self._val_probe):
            if probe is not None:
                probe.remove()
        self._train_probe = self._val_probe = None
        if self._val_hook is not None:
            self._val_hook.remove()
            self._val_hook = None

    # --- training steps ---------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        due = self.every_n_steps > 0 and step % self.every_n_steps == 0
        # With gradient accumulation several batches share a step: instrument the first.
        if self._train_probe is None or not due or step == self._last_step:
            return
        self._last_step = self._step = step
        self._train_probe.active = True

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._step >= 0:
            self._grad_norms = dict(gradient_norms(self._layers))
            self._weights_before = snapshot(self._layers)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self._step < 0:
            return
        self._train_probe.active = False
        scalars, var_ratios = self._train_probe.take()
        scalars.update({f"grad_norm/{k}": v for k, v in self._grad_norms.items()})
        ratios = update_ratios(self._layers, self._weights_before)
        scalars.update({f"update_ratio/{k}": v for k, v in ratios})
        histograms = batch_norm_state(self._layers.batch_norms)
        histograms.update({f"bn/{k}/var_ratio_train": v for k, v in var_ratios.items()})
        self._write(scalars, histograms, self._step)
        self._step, self._grad_norms, self._weights_before = -1, {}, {}

    # --- validation epochs ------------------------------------------------------------------

    def _drawing(self, trainer: L.Trainer) -> bool:
        return (
            self._enabled
            and self.every_n_epochs > 0
            and not trainer.sanity_checking
            and (
                trainer.current_epoch % self.every_n_epochs == 0
                or trainer.current_epoch + 1 == trainer.max_epochs  # the picture to keep
            )
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._drawing(trainer):
            return
        if self._val_probe is not None:
            self._val_probe.active = True
        self._sample = None
        self._val_hook = pl_module.register_forward_hook(self._keep_logits)

    def _keep_logits(self, module: nn.Module, inputs: tuple, output: object) -> None:
        # Under DDP, Lightning routes validation_step through the module's own __call__ (its
        # forward temporarily redirected), so this hook also sees that outer call, which
        # returns None after the inner forward has delivered the logits.
        if isinstance(output, torch.Tensor):
            self._logits = output.detach()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._val_hook is None or self._logits is None:
            return
        images, labels = batch
        logits, self._logits = self._logits, None
        if self._confusion is None:
            k = logits.size(1)
            # No per-batch input checks: they would read the labels back to the host.
            self._confusion = MulticlassConfusionMatrix(k, validate_args=False)
            self._class_acc = MulticlassAccuracy(k, average=None, validate_args=False)
        for metric in (self._confusion, self._class_acc):
            metric.to(logits.device).update(logits, labels)
        if self._sample is None:
            n = self.num_images
            self._sample = (images[:n].detach(), labels[:n], logits[:n].argmax(dim=1))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_hook is None:
            return
        self._val_hook.remove()
        self._val_hook = None
        if self._val_probe is not None:
            self._val_probe.active = False
        if self._confusion is None:
            return
        # compute() on every process: it gathers their counts (DDP).
        counts = self._confusion.compute().cpu()
        per_class = self._class_acc.compute().cpu()
        self._confusion.reset()
        self._class_acc.reset()
        if self._writer is not None:
            self._write_validation(trainer, counts, per_class)

    def _write_validation(
        self, trainer: L.Trainer, counts: torch.Tensor, per_class: torch.Tensor
    ) -> None:
        step = trainer.global_step
        var_ratios = self._val_probe.take_var_ratios()
        scalars = {f"bn_var_ratio/{k}/val": v.mean() for k, v in var_ratios.items()}
        histograms = {f"bn/{k}/var_ratio_val": v for k, v in var_ratios.items()}
        self._write(scalars, histograms, step)
        names = class_names(trainer, counts.size(0))
        for name, accuracy in zip(names, per_class.tolist(), strict=True):
            self._writer.add_scalar(f"val_class_acc/{name}", accuracy, step)
        accuracy = counts.trace().item() / max(counts.sum().item(), 1)
        figure, axes = self._confusion.plot(counts, labels=names)
        axes.set_title(confusion_title(trainer, accuracy))
        self._writer.add_figure("val/confusion_matrix", figure, step, close=True)
        images, labels, predicted = self._sample
        if not len(images):
            return  # num_images=0: no grid (an empty image cannot be written)
        mean, std = normalization(trainer)
        grid = prediction_grid(
            to_uint8_images(images, mean, std),
            [names[i] for i in labels.tolist()],
            [names[i] for i in predicted.tolist()],
        )
        self._writer.add_image("val/predictions", grid, step, dataformats="HWC")

    # --- output -----------------------------------------------------------------------------

    def _write(
        self, scalars: Mapping[str, torch.Tensor], histograms: Mapping[str, torch.Tensor], step: int
    ) -> None:
        values = to_host({**scalars, **histograms})
        for tag in scalars:
            self._writer.add_scalar(tag, float(values[tag][0]), step)
        for tag in histograms:
            # A diverging run (the one most worth inspecting) has NaN, inf or astronomically
            # large statistics, which TensorBoard's default buckets cannot hold: add_histogram
            # would raise. Its scalars above still show the explosion.
            binnable = values[tag][np.abs(values[tag]) < HISTOGRAM_LIMIT]
            if binnable.size:
                self._writer.add_histogram(tag, binnable, step)


def network(pl_module: L.LightningModule) -> nn.Module:
    """The classifier inside the LightningModule, so layer names read `features.0.norm`."""
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, nn.Module) else pl_module


def batch_norm_state(batch_norms: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    state = {}
    for name, bn in batch_norms.items():
        for label, attribute in (
            ("gamma", "weight"),
            ("beta", "bias"),
            ("running_mean", "running_mean"),
            ("running_var", "running_var"),
        ):
            tensor = getattr(bn, attribute, None)
            if isinstance(tensor, torch.Tensor):
                state[f"bn/{name}/{label}"] = tensor.detach()
    return state


def to_host(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Copy many small device tensors to the host in one transfer (one sync, not hundreds)."""
    if not tensors:
        return {}
    flat = [t.detach().float().reshape(-1) for t in tensors.values()]
    host = torch.cat(flat).cpu().numpy()
    sizes = np.cumsum([t.numel() for t in flat])[:-1]
    return dict(zip(tensors, np.split(host, sizes), strict=True))


def class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
    names = getattr(trainer.datamodule, "class_names", None)
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def normalization(trainer: L.Trainer) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """The mean and std the validation images were normalized with, if the datamodule says."""
    transform = getattr(trainer.datamodule, "eval_transform", None)
    return getattr(transform, "mean", None), getattr(transform, "std", None)


def confusion_title(trainer: L.Trainer, accuracy: float) -> str:
    """`epoch 5/5: validation accuracy 0.931`: the epoch counted from 1, as the console's
    summary lines and progress bar count it."""
    return f"{epoch_label(trainer)}: validation accuracy {accuracy:.3f}"
