"""Measurements beside the usual train/val/test figures, taken outside the training step.

- `TrainAccuracyEval`: after each validation, the accuracy on a fixed sample of the training
  images in eval mode (dropout off, BN with running statistics, no augmentation):
  `train/acc_eval`. `train/acc` is averaged over the epoch with dropout on and the weights
  still moving, so `train/acc - val/acc` mixes overfitting with dropout's own noise.
- `BatchNormEvaluations`: after testing, the test accuracy with BN using each batch's own
  statistics (`test/acc_batch_stats`) and with BN's running statistics re-estimated over the
  training images with dropout off (`test/acc_bn_recalibrated`, Li et al. 2019's diagnostic
  of the variance shift). The network's state is restored afterwards; no file is written.

Both read the images the datamodule holds (`train_set`, `test_set`, `eval_transform`: the
`InMemoryDataModule`s) and run where Lightning already runs without gradients (validation,
test), so the training step is untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import nn

from normlab.errors import ConfigError
from normlab.nn.batchnorm import ScratchBatchNorm2d

BATCHNORMS = (nn.modules.batchnorm._BatchNorm, ScratchBatchNorm2d)


def batchnorm_layers(net: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of `net`: torch's and normlab's scratch BatchNorm."""
    return [m for m in net.modules() if isinstance(m, BATCHNORMS)]


def batches(
    images: torch.Tensor, labels: torch.Tensor, transform: Any, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of uint8 images, normalized (no augmentation)."""
    for start in range(0, len(labels), batch_size):
        yield transform(images[start : start + batch_size]), labels[start : start + batch_size]


@torch.no_grad()
def accuracy(
    module: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: Any, batch_size: int
) -> float:
    """Fraction of the images `module` classifies correctly, in whatever mode it is in."""
    correct = 0
    for x, y in batches(images, labels, transform, batch_size):
        correct += int((module(x).argmax(1) == y).sum())
    return correct / max(len(labels), 1)


@contextlib.contextmanager
def batchnorm_in_train_mode(net: nn.Module, momentum: Any = "keep") -> Iterator[list[nn.Module]]:
    """Every other layer in eval mode (dropout off), the BN layers in train mode (batch
    statistics); on exit the BN buffers, momenta and every layer's mode are as they were."""
    layers = batchnorm_layers(net)
    modes = {m: m.training for m in net.modules()}
    saved = [{k: b.clone() for k, b in m.named_buffers() if b is not None} for m in layers]
    momenta = [m.momentum for m in layers]
    try:
        net.eval()
        for layer in layers:
            layer.train()
            if momentum != "keep":
                layer.momentum = momentum
        yield layers
    finally:
        for layer, buffers, value in zip(layers, saved, momenta, strict=True):
            layer.momentum = value
            with torch.no_grad():
                for name, buffer in layer.named_buffers():
                    if name in buffers:
                        buffer.copy_(buffers[name])
        for m, training in modes.items():
            m.train(training)


def _data(trainer: L.Trainer, owner: str) -> Any:
    datamodule = trainer.datamodule
    if getattr(datamodule, "train_set", None) is None or not hasattr(datamodule, "eval_transform"):
        raise ConfigError(
            f"callbacks.{owner} needs a normlab datamodule that holds its images in memory "
            f"(data=cifar10, cifar10_jpeg, image_folder, digits, synthetic), not "
            f"{type(datamodule).__name__}. Use one of those, or remove the callback with "
            f"~callbacks.{owner}."
        )
    return datamodule


class TrainAccuracyEval(L.Callback):
    """Log `train/acc_eval`: eval-mode accuracy on a fixed sample of the training images,
    after every validation (so once per epoch, in the per-epoch history and results.json).

    Args:
        sample_size: training images measured (fewer when the training set is smaller);
            the same images every epoch, drawn with a fixed seed (0), not the run's.
    """

    def __init__(self, sample_size: int = 5000) -> None:
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
            raise ConfigError(
                f"callbacks.train_eval.sample_size={sample_size!r}: must be a whole number "
                "of training images from 1, e.g. callbacks.train_eval.sample_size=5000."
            )
        self.sample_size = sample_size
        self._index: torch.Tensor | None = None

    def sample(self, n_train: int) -> torch.Tensor:
        """Indices of the measured training images (a fixed draw of min(size, n))."""
        if self._index is None or len(self._index) > n_train:
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(0))
            self._index = order[: min(self.sample_size, n_train)].sort().values
        return self._index

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        data = _data(trainer, "train_eval")
        index = self.sample(len(data.train_set)).to(data.train_set.labels.device)
        images = data.train_set.images.index_select(0, index)
        labels = data.train_set.labels[index]
        # Validation has put the module in eval mode and turned gradients off.
        acc = accuracy(pl_module, images, labels, data.eval_transform, data.eval_batch_size)
        pl_module.log("train/acc_eval", acc, on_epoch=True)


class BatchNormEvaluations(L.Callback):
    """After testing, test the same weights twice more (opt-in, each):

    - `batch_stats`: BN normalizes with each test batch's own statistics, at the training
      batch size (`data.batch_size`), dropout off; running statistics are not updated.
      Logged `test/acc_batch_stats` (results.json: `test_acc_batch_stats`).
    - `recalibrate`: BN's running statistics re-estimated from the training images (no
      augmentation, dropout off, cumulative average over batches of `data.batch_size`),
      then tested as usual. Logged `test/acc_bn_recalibrated`.

    A network without BN layers records nothing. The module's buffers are restored
    afterwards; checkpoints are never touched.
    """

    def __init__(self, batch_stats: bool = False, recalibrate: bool = False) -> None:
        self.batch_stats = bool(batch_stats)
        self.recalibrate = bool(recalibrate)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.batch_stats or self.recalibrate) or not batchnorm_layers(pl_module):
            return
        data = _data(trainer, "bn_eval")
        test = data.test_set
        if self.batch_stats:
            acc = batch_stats_accuracy(
                pl_module, test.images, test.labels, data.eval_transform, data.batch_size
            )
            pl_module.log("test/acc_batch_stats", acc)
        if self.recalibrate:
            pl_module.log("test/acc_bn_recalibrated", recalibrated_accuracy(pl_module, data))


def mixed(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors (images, labels) in one fixed random order (seed 0). Image folders are read
    class by class (CIFAR-10's JPEG copy: 1,000 test images of one class after another), and a
    batch of one class has that class's statistics: BN would normalize the class itself away."""
    order = torch.randperm(len(tensors[0]), generator=torch.Generator().manual_seed(0))
    return tuple(t.index_select(0, order.to(t.device)) for t in tensors)


def batch_stats_accuracy(
    module: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: Any, batch_size: int
) -> float:
    """Accuracy with BN normalizing each batch (of mixed classes) by its own statistics,
    dropout off; the module's buffers and modes are restored afterwards."""
    with batchnorm_in_train_mode(module):
        return accuracy(module, *mixed(images, labels), transform, batch_size)


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, images: torch.Tensor, transform: Any, bs: int) -> None:
    """Replace BN's running statistics with the cumulative average over `images` (dropout
    off). The caller keeps the layers in train mode (`batchnorm_in_train_mode(momentum=None)`)."""
    for layer in batchnorm_layers(module):
        layer.reset_running_stats()
    (images,) = mixed(images)
    for x, _ in batches(images, torch.empty(len(images)), transform, bs):
        if len(x) > 1:  # BN cannot take statistics of a single image
            module(x)


def recalibrated_accuracy(module: nn.Module, data: Any) -> float:
    """Test accuracy after re-estimating BN's statistics on the training images; the
    module's state is restored afterwards."""
    train, test = data.train_set, data.test_set
    with batchnorm_in_train_mode(module, momentum=None) as layers:
        recalibrate_batchnorm(module, train.images, data.eval_transform, data.batch_size)
        for layer in layers:
            layer.eval()
        return accuracy(module, test.images, test.labels, data.eval_transform, data.eval_batch_size)
