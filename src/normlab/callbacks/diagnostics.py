"""See inside the network while it trains: what the lesson claims about batch norm and dropout,
measured per layer and written to TensorBoard.

Every `every_n_steps` optimizer steps one training step is instrumented (step 0 included):

    activation_mean/<norm layer>/before|after   input and output of each normalization layer
    activation_std/<norm layer>/before|after    (BN keeps activations in a compact range)
    relu_zero_fraction/<relu>                   sparsity of the representation (dropout)
    grad_norm/<layer>                           gradient flow: does it reach the first layers?
    update_ratio/<layer>                        ||step|| / ||weights|| of this optimizer step
    bn_var_ratio/<bn>/train                     running var / this batch's var (channel mean)
    bn/<bn>/gamma|beta|running_mean|running_var|var_ratio_train   histograms

At the end of every validation epoch:

    val/predictions, val/confusion_matrix       images
    val_class_acc/<class>                       per-class accuracy
    bn_var_ratio/<bn>/val, bn/<bn>/var_ratio_val  running var / variance of validation inputs
                                                (the variance shift of dropout before BN)

Layers are named by module path (`features.0.norm`, `head.1.act`).

Cost: the hooks return at once on other steps, a step's statistics reach the host in one
transfer, the pictures are drawn with Pillow in milliseconds. And a time budget
(`max_overhead`, 5% by default) bounds the total: where an epoch lasts a fraction of a second
(tiny datasets, fast GPUs) instrumented steps and pictures are skipped rather than letting the
diagnostics slow training down (the first validation epoch is always drawn).
README.md gives the measured overhead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from normlab.callbacks import figures
from normlab.callbacks.budget import OverheadBudget
from normlab.callbacks.probes import (
    TrainingProbe,
    ValidationProbe,
    WatchedLayers,
    gradient_norms,
    snapshot,
    update_ratios,
)


class NetworkDiagnostics(L.Callback):
    """Layer statistics, batch-norm state and validation pictures in TensorBoard.

    Args:
        every_n_steps: instrument one training step in this many (0 = no training-step
            diagnostics).
        validation: draw the prediction grid and confusion matrix, and log per-class accuracy
            and the validation variance ratio, at the end of each validation epoch.
        num_images: validation images in the prediction grid (the first ones of the
            validation set, the same every epoch).
        max_overhead: the most time the diagnostics may take, as a fraction of the rest of
            training; work beyond it is skipped (and counted in a note at the end of fit).
            None: never skip.

    Attributes:
        budget: the time budget; `budget.spent` is the seconds the diagnostics took so far.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        validation: bool = True,
        num_images: int = 32,
        max_overhead: float | None = 0.05,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(
                f"callbacks.diagnostics.every_n_steps={every_n_steps}: use a positive interval, "
                "or 0 to switch the training-step diagnostics off."
            )
        self.every_n_steps = every_n_steps
        self.validation = validation
        self.num_images = num_images
        self.budget = OverheadBudget(max_overhead)
        self._writer = None
        self._layers: WatchedLayers | None = None
        self._train_probe: TrainingProbe | None = None
        self._val_probe: ValidationProbe | None = None
        self._step = -1  # the step being instrumented, or -1
        self._last_step = -1
        self._weights_before: dict[str, list[torch.Tensor]] = {}
        self._grad_norms: dict[str, torch.Tensor] = {}
        self._val_hook = None
        self._validations_drawn = 0
        self._logits: torch.Tensor | None = None
        self._confusion: torch.Tensor | None = None
        self._sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # --- set-up ----------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return  # only rank zero writes event files
        self._writer = tensorboard_writer(trainer)
        if self._writer is None:
            rank_zero_warn(
                "callbacks.diagnostics needs a TensorBoard logger (logger=tensorboard or "
                "logger=many); no diagnostics will be written."
            )
            return
        self._layers = WatchedLayers.of(network(pl_module))
        self._train_probe = TrainingProbe(self._layers)
        self._val_probe = ValidationProbe(self._layers)
        self.budget.start()
        self._validations_drawn = 0

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget.skipped:
            rank_zero_info(
                f"diagnostics: skipped {self.budget.skipped} instrumented steps or validation "
                f"pictures to stay within {self.budget.fraction:.0%} of training time "
                "(callbacks.diagnostics.max_overhead=null keeps them all)."
            )
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
        self._last_step = step
        if self.budget.allows("step"):
            self.budget.begin("step")
            self._step = step
            self._train_probe.active = True

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._step < 0:
            return
        with self.budget.timed():
            self._grad_norms = dict(gradient_norms(self._layers))
            self._weights_before = snapshot(self._layers)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self._step < 0:
            return
        self._train_probe.active = False
        self.budget.charge(self._train_probe.take_busy_s())
        with self.budget.timed():
            scalars, var_ratios = self._train_probe.take()
            scalars.update({f"grad_norm/{k}": v for k, v in self._grad_norms.items()})
            ratios = update_ratios(self._layers, self._weights_before)
            scalars.update({f"update_ratio/{k}": v for k, v in ratios})
            histograms = batch_norm_state(self._layers.batch_norms)
            histograms.update({f"bn/{k}/var_ratio_train": v for k, v in var_ratios.items()})
            self._write(scalars, histograms, self._step)
        self.budget.end("step")
        self._step, self._grad_norms, self._weights_before = -1, {}, {}

    # --- validation epochs ------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_probe is None or not self.validation or trainer.sanity_checking:
            return
        # The first validation epoch is always drawn: even the shortest run shows pictures.
        if self._validations_drawn > 0 and not self.budget.allows("validation"):
            return
        self.budget.begin("validation")
        self._validations_drawn += 1
        self._val_probe.active = True
        self._confusion, self._sample = None, None
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
        with self.budget.timed():
            self._count_predictions(batch)

    def _count_predictions(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        images, labels = batch
        predicted = self._logits.argmax(dim=1)
        k = self._logits.size(1)
        # Counted on the device: no host transfer until the epoch ends.
        counts = torch.bincount(labels * k + predicted, minlength=k * k).view(k, k)
        self._confusion = counts if self._confusion is None else self._confusion + counts
        if self._sample is None:
            n = self.num_images
            self._sample = (images[:n].detach(), labels[:n], predicted[:n])
        self._logits = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_hook is None:
            return
        self._val_hook.remove()
        self._val_hook = None
        self._val_probe.active = False
        self.budget.charge(self._val_probe.take_busy_s())
        with self.budget.timed():
            self._write_validation(trainer)
        self.budget.end("validation")

    def _write_validation(self, trainer: L.Trainer) -> None:
        var_ratios = self._val_probe.take_var_ratios()
        if self._confusion is None:
            return
        step = trainer.global_step
        counts = self._confusion.cpu().numpy()
        names = class_names(trainer, counts.shape[0])
        per_class = counts.diagonal() / np.maximum(counts.sum(axis=1), 1)
        scalars = {f"bn_var_ratio/{k}/val": v.mean() for k, v in var_ratios.items()}
        histograms = {f"bn/{k}/var_ratio_val": v for k, v in var_ratios.items()}
        self._write(scalars, histograms, step)
        for name, accuracy in zip(names, per_class, strict=True):
            self._writer.add_scalar(f"val_class_acc/{name}", float(accuracy), step)
        accuracy = counts.trace() / max(counts.sum(), 1)
        title = f"epoch {trainer.current_epoch}: validation accuracy {accuracy:.3f}"
        matrix = figures.confusion_matrix_image(counts, names, title)
        figures.add_picture(self._writer, "val/confusion_matrix", matrix, step)
        images, labels, predicted = self._sample
        mean, std = normalization(trainer)
        grid = figures.prediction_grid(
            figures.to_uint8_images(images, mean, std),
            [names[i] for i in labels.tolist()],
            [names[i] for i in predicted.tolist()],
        )
        figures.add_picture(self._writer, "val/predictions", grid, step)

    # --- output -----------------------------------------------------------------------------

    def _write(
        self, scalars: Mapping[str, torch.Tensor], histograms: Mapping[str, torch.Tensor], step: int
    ) -> None:
        values = to_host({**scalars, **histograms})
        for tag in scalars:
            self._writer.add_scalar(tag, float(values[tag][0]), step)
        for tag in histograms:
            # A diverging run (the one most worth inspecting) has NaN, inf or astronomically
            # large statistics, which TensorBoard's default buckets (|v| < 1e20) cannot hold:
            # add_histogram would raise. Its scalars above still show the explosion.
            binnable = values[tag][np.abs(values[tag]) < HISTOGRAM_LIMIT]
            if binnable.size:
                self._writer.add_histogram(tag, binnable, step)


HISTOGRAM_LIMIT = 1e20  # the largest bucket edge of torch.utils.tensorboard's default bins


def network(pl_module: L.LightningModule) -> nn.Module:
    """The classifier inside the LightningModule, so layer names read `features.0.norm`."""
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, nn.Module) else pl_module


def tensorboard_writer(trainer: L.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def batch_norm_state(batch_norms: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    state = {}
    for name, bn in batch_norms.items():
        for label, tensor in (
            ("gamma", bn.weight),
            ("beta", bn.bias),
            ("running_mean", bn.running_mean),
            ("running_var", bn.running_var),
        ):
            if tensor is not None:
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
