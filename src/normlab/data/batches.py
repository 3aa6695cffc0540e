"""Serve batches straight from uint8 tensors, with normalization and augmentation done on a
whole batch at once on whatever device holds the data.

This replaces torchvision's per-image pipeline (PIL -> ToTensor -> Normalize in worker
processes), which spends most of its time in Python per image. The whole split lives in one
uint8 tensor (CIFAR-10's 50k training images are 150 MB), so a batch is one index operation;
on a GPU the tensor lives in GPU memory and no data crosses the bus during training.

Randomness comes from generators seeded with (seed, epoch): the order and the augmentation of
epoch k are the same whether or not the run was interrupted before it, and every DDP rank
derives the same permutation before taking its own shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchTransform:
    """uint8 [B, C, H, W] -> normalized float32, with optional random crop and flip.

    Crop and flip happen on the uint8 images (a quarter of the bytes of float32), with the
    padding value 0 that torchvision's `RandomCrop(padding=...)` uses, so the result matches
    the per-image pipeline: `ToTensor()`, then `Normalize(mean, std)`.
    """

    mean: Sequence[float]
    std: Sequence[float]
    crop_padding: int = 0
    hflip: bool = False

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random parameters for n images: crop offsets and flip flags."""
        span = 2 * self.crop_padding + 1
        return {
            "dy": torch.randint(span, (n,), generator=generator),
            "dx": torch.randint(span, (n,), generator=generator),
            "flip": torch.rand(n, generator=generator) < 0.5,
        }

    def __call__(
        self, images: torch.Tensor, params: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if params is not None and self.crop_padding > 0:
            images = random_crop(images, self.crop_padding, params["dy"], params["dx"])
        if params is not None and self.hflip:
            images = torch.where(params["flip"].view(-1, 1, 1, 1), images.flip(3), images)
        scale, shift = _affine(self.mean, self.std, images.device, images.size(1))
        # (x / 255 - mean) / std folded into one multiply-add.
        return torch.addcmul(shift, images.float(), scale)


def _affine(
    mean: Sequence[float], std: Sequence[float], device: torch.device, channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if mean_t.size(1) != channels or std_t.size(1) != channels:
        raise ValueError(
            f"data.mean and data.std need one value per image channel ({channels}), "
            f"got {list(mean)} and {list(std)}"
        )
    scale = 1.0 / (255.0 * std_t)
    return scale, -mean_t / std_t


def random_crop(
    images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor
) -> torch.Tensor:
    """Zero-pad by `padding` and cut each image's window at its own offset (dy, dx)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = (dy.to(images.device).view(b, 1) + torch.arange(h, device=images.device)).view(b, h, 1)
    cols = (dx.to(images.device).view(b, 1) + torch.arange(w, device=images.device)).view(b, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1)
    # Advanced indexing around the channel slice gives [B, H, W, C]; move channels back.
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


class EpochOrder:
    """The sample order of each epoch; Lightning calls `set_epoch` on a loader's `sampler`."""

    def __init__(self, seed: int, shuffle: bool) -> None:
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        # Distinct, reproducible stream per (seed, epoch).
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)


class TensorBatchLoader:
    """An iterable of (images, labels) batches over tensors already on the training device.

    Lightning accepts any iterable with a length as a dataloader. Under DDP, pass the rank and
    world size: every rank computes the same permutation and keeps every world_size-th sample,
    so the shards are disjoint. Training shards are cut to equal length (every rank must take
    the same number of optimizer steps); evaluation shards cover every sample exactly once.
    """

    # Lightning looks for DataLoader's `sampler` (and calls its `set_epoch`) and, once it
    # finds one, for `batch_sampler` too. Batches are sliced here, so there is none.
    batch_sampler = None

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        transform: BatchTransform,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.transform = transform
        self.train = train
        self.rank, self.world_size = rank, world_size
        self.sampler = EpochOrder(seed, shuffle=train)

    def _num_samples(self) -> int:
        n = len(self.images)
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._num_samples()
        # Training drops the last partial batch: a batch of one breaks batch norm, and tiny
        # batches give noisy statistics. Evaluation keeps every sample.
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_total = len(self.images)
        device = self.images.device
        generator = self.sampler.generator()
        if self.train:
            order = torch.randperm(n_total, generator=generator)
        else:
            order = torch.arange(n_total)
        augment = self.train and self.transform.augments
        params = self.transform.draw(n_total, generator) if augment else None
        # Every rank draws the same order, then keeps its own interleaved shard.
        order = order[self.rank :: self.world_size][: self._num_samples()].to(device)
        if params is not None:
            params = {k: v.to(device) for k, v in params.items()}
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch_params = {k: v[idx] for k, v in params.items()} if params else None
            images = self.transform(self.images[idx], batch_params)
            yield images.contiguous(), self.labels[idx]
