"""The LightningDataModule every dataset shares: uint8 tensors in memory, split once with a
fixed seed, served by `TensorBatchLoader` on the training device."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch

from normlab.data.batches import BatchTransform, TensorBatchLoader
from normlab.errors import DataError


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> ImageSplit:
        return ImageSplit(self.images.to(device), self.labels.to(device))

    def take(self, index: torch.Tensor) -> ImageSplit:
        # index_select, not images[index]: advanced indexing of a uint8 [N, C, H, W] tensor
        # takes a slower path on the CPU, and every run's start-up splits the data.
        return ImageSplit(self.images.index_select(0, index), self.labels[index])


def only(n: int, noun: str) -> str:
    """`there is only 1 image`, `there are only 0 images`."""
    return f"there is only 1 {noun}" if n == 1 else f"there are only {n} {noun}s"


def count_or_fraction(size: float, key: str, total: int, fraction_of: int | None = None) -> int:
    """A split size as typed (`data.val_size`, `data.test_size`: a count of images, or a
    fraction below 1) as the number of images to hold out of `total`, leaving at least one on
    each side. A fraction is of `fraction_of` images (default: `total`), rounded to the
    nearest image. DataError naming `key`, the value as typed and the range allowed otherwise.
    """
    number = isinstance(size, numbers.Real) and not isinstance(size, bool)
    if not number or not math.isfinite(size) or size <= 0:
        raise DataError(
            f"{key}={size!r}: must be a positive number of images or a fraction between 0 "
            f"and 1, e.g. {key}=0.1."
        )
    of = fraction_of or total
    if total < 2:
        raise DataError(
            f"{key}={size}: {only(total, 'image')} to split, and both sides of the split "
            "need at least one. Add images to the dataset."
        )
    if 0 < size < 1:
        count = round(size * of)
    elif size == int(size):
        count = int(size)
    else:
        raise DataError(
            f"{key}={size}: a count of images must be a whole number (or use a fraction "
            f"between 0 and 1), e.g. {key}={int(size)}."
        )
    if count < 1:  # a fraction too small for one image
        smallest = math.ceil(1000 / of) / 1000  # 3 decimals up: at least one image
        raise DataError(
            f"{key}={size}: {size} of {of} images is less than one image. Use a count of 1 "
            f"to {total - 1} images, or a fraction of at least {smallest:g}."
        )
    if count >= total:
        # The largest fraction that still rounds to at most total - 1 images, 3 decimals down.
        largest = math.floor(1000 * (total - 1) / of) / 1000
        fraction = f", or a fraction of at most {largest:g}" if largest > 0 else ""
        asked = f"{count} images ({size} of {of})" if size < 1 else f"{count} images"
        raise DataError(
            f"{key}={size}: {asked} would leave none on the other side of the split of "
            f"{total} images. Use a count of at most {total - 1}{fraction}."
        )
    return count


class InMemoryDataModule(L.LightningDataModule):
    """Subclasses implement `load()`, returning the full training set and the test set as
    uint8 tensors; this class carves a validation split out of the training set and serves
    all three.

    Args:
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size for validation and test; larger is faster and changes
            nothing in the numbers (the network is in eval mode).
        mean, std: per-channel normalization on the [0, 1] scale.
        crop_padding: random-crop augmentation padding in pixels (0 = off).
        hflip: random horizontal flips.
        val_size: images held out of the training set for validation (below 1: a fraction).
        train_size: keep only this many training images (None = all); for studies of
            overfitting on reduced data.
        subset_seed: which `train_size` images are kept: None keeps the same ones for every
            run (the first of the fixed split's order); a number draws them with that seed,
            e.g. `${seed}`, so a study's spread over seeds covers the choice of the training
            images too. The validation and test images never depend on it.
        split_seed: fixes which images form the validation split, independent of the run seed
            so runs with different seeds are validated on the same images.
        seed: seeds batch order and augmentation.
    """

    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        crop_padding: int = 0,
        hflip: bool = False,
        val_size: float = 5000,
        train_size: int | None = None,
        split_seed: int = 0,
        seed: int = 0,
        subset_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_transform = BatchTransform(tuple(mean), tuple(std), crop_padding, hflip)
        self.eval_transform = BatchTransform(tuple(mean), tuple(std))
        self.val_size = val_size
        # A fractional val_size is of this many images (None: of the training set `load()`
        # returns); a subclass that holds out more than validation sets it in `load()`.
        self.val_fraction_of: int | None = None
        self.train_size = train_size
        self.split_seed = split_seed
        whole = isinstance(subset_seed, int) and not isinstance(subset_seed, bool)
        if subset_seed is not None and not whole:
            raise DataError(
                f"data.subset_seed={subset_seed!r}: must be a whole number (draw the training "
                "subset with that seed, e.g. data.subset_seed=${seed}) or null (the same subset "
                "for every run)."
            )
        self.subset_seed = subset_seed
        self.seed = seed
        self.train_set: ImageSplit | None = None
        self.val_set: ImageSplit | None = None
        self.test_set: ImageSplit | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load(self) -> tuple[ImageSplit, ImageSplit]:
        """Return (full training set, test set)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full_train, test = self.load()
        n_val = count_or_fraction(
            self.val_size, "data.val_size", len(full_train), self.val_fraction_of
        )
        order = torch.randperm(
            len(full_train), generator=torch.Generator().manual_seed(self.split_seed)
        )
        val_index, train_index = order[:n_val], order[n_val:]
        if self.train_size is not None:
            train_index = self._training_subset(train_index)
        device = self._device()
        self.train_set = full_train.take(train_index).to(device)
        self.val_set = full_train.take(val_index).to(device)
        self.test_set = test.to(device)

    def _training_subset(self, pool: torch.Tensor) -> torch.Tensor:
        """`train_size` of the training split's image indices: the first ones (fixed), or a
        draw with `subset_seed`. Drawn from the pool left after validation, so the
        validation split is the same whatever the subset."""
        if self.subset_seed is None:
            return pool[: self.train_size]
        draw = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.subset_seed))
        return pool[draw[: self.train_size]]

    def _device(self) -> torch.device:
        # Hold the data where the model trains: on a GPU every batch is then an index
        # operation in GPU memory, with no host-to-device copy per step.
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _loader(self, split: ImageSplit | None, train: bool) -> TensorBatchLoader:
        if split is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        return TensorBatchLoader(
            split.images,
            split.labels,
            self.batch_size if train else self.eval_batch_size,
            self.train_transform if train else self.eval_transform,
            train=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )

    def train_dataloader(self) -> TensorBatchLoader:
        loader = self._loader(self.train_set, train=True)
        if len(loader) == 0:
            world = max(loader.world_size, 1)
            per_process = f" ({world} processes: {len(self.train_set) // world} each)"
            per_process = per_process if world > 1 else ""
            fits = len(self.train_set) // world
            if fits < 2:
                # A batch of one breaks batch norm: no batch size can help, only more images.
                raise DataError(
                    f"data.batch_size={self.batch_size}: "
                    f"{only(len(self.train_set), 'training image')}{per_process}, too few for "
                    "a training batch of two. Use "
                    "more training images: a smaller data.val_size, a larger (or null) "
                    "data.train_size, or more images in the dataset."
                )
            raise DataError(
                f"data.batch_size={self.batch_size} is larger than the {len(self.train_set)} "
                f"training images{per_process}: training drops the last incomplete batch, so "
                f"the run would train on nothing. Use data.batch_size={fits} "
                "or less, or more training images (data.train_size, data.val_size)."
            )
        return loader

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.test_set, train=False)
