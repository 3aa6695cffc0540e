"""Serve batches straight from uint8 tensors, with normalization and augmentation done on
many images at once on whatever device holds the data.

This replaces torchvision's per-image pipeline (PIL -> ToTensor -> Normalize in worker
processes), which spends most of its time in Python per image. The whole split lives in one
uint8 tensor (CIFAR-10's 50k training images are 150 MB); on a GPU the tensor lives in GPU
memory and no data crosses the bus during training.

A training epoch is cut in chunks of a few hundred images on a CPU and thousands on a GPU
(after airbench, which prepares a whole epoch at once): each chunk is gathered in the epoch's
shuffled order, cropped and flipped by a single `gather`, and normalized by one multiply-add.
A batch is then two slices of the chunk and no tensor work, which is what makes batch 4
cheap; and a chunk is small enough to stay in the allocator's cache (fresh 100 MB buffers
cost more in page faults than the arithmetic). Nothing here synchronizes with the host, so on
a GPU the loader only queues kernels.

Randomness comes from generators seeded with (seed, epoch): the order and the augmentation of
epoch k are the same whether or not the run was interrupted before it, and every DDP rank
derives the same permutation before taking its own shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# Images prepared together. On 2 CPU cores 256 was fastest (~170k images/s on one thread,
# 1024: ~115k): a chunk's float32 output then stays in the allocator's cache, while larger
# ones are fresh memory whose page faults cost more than the arithmetic. A GPU prefers fewer,
# larger kernels.
CHUNK_IMAGES = {"cpu": 256, "cuda": 8192}


@dataclass(frozen=True)
class BatchTransform:
    """uint8 [B, C, H, W] -> normalized float32, with optional random crop and flip.

    Crop and flip happen on the uint8 images, with the padding value 0 that torchvision's
    `RandomCrop(padding=...)` uses, so the result matches the per-image pipeline:
    `ToTensor()`, then `Normalize(mean, std)`.
    """

    mean: Sequence[float]
    std: Sequence[float]
    crop_padding: int = 0
    hflip: bool = False
    # (scale, shift) per (device, channels): built once, not on every batch.
    _affine: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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

    def augment(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Crop and flip uint8 images with per-image parameters (from `draw`)."""
        flip = params["flip"] if self.hflip else None
        return crop_and_flip(images, self.crop_padding, params["dy"], params["dx"], flip)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 `(x / 255 - mean) / std` as `x * scale + shift`."""
        key = (images.device, images.size(1))
        if key not in self._affine:
            self._affine[key] = _affine(self.mean, self.std, *key)
        scale, shift = self._affine[key]
        # Convert first, then multiply-add in place: on a CPU the uint8 * float32 multiply
        # takes a slow mixed-type path (docs/performance.md).
        return images.float().mul_(scale).add_(shift)

    def __call__(
        self, images: torch.Tensor, params: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if params is not None and self.augments:
            images = self.augment(images, params)
        return self.normalize(images)


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


def crop_and_flip(
    images: torch.Tensor,
    padding: int,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Zero-pad by `padding`, cut each image's window at its own offset (dy, dx) and mirror
    it left-right where `flip` is set: one `gather` over the padded images.

    Every output pixel reads `padded[b, c, y + dy[b], x' + dx[b]]` with x' = x, or W-1-x for
    a flipped image. One kernel instead of advanced indexing or one masked copy per offset
    (slower on the CPU: docs/performance.md), and unlike masked copies it never waits on
    the GPU.
    """
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding,) * 4) if padding else images
    padded_w = w + 2 * padding
    x = torch.arange(w, device=device).expand(b, w)
    if flip is not None:
        x = torch.where(flip.to(device).view(b, 1), w - 1 - x, x)
    cols = x + dx.to(device).view(b, 1)
    rows = (torch.arange(h, device=device) + dy.to(device).view(b, 1)) * padded_w
    index = (rows.view(b, h, 1) + cols.view(b, 1, w)).view(b, 1, h * w)
    flat = padded.reshape(b, c, -1)
    return flat.gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


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

    def _epoch_order(self) -> tuple[torch.Tensor | None, dict[str, torch.Tensor] | None]:
        """This rank's sample ids in serving order (None: all, in order) and their
        augmentation parameters."""
        n_total = len(self.images)
        if not self.train:
            if self.world_size == 1:
                return None, None
            return torch.arange(self.rank, n_total, self.world_size), None
        generator = self.sampler.generator()
        order = torch.randperm(n_total, generator=generator)
        params = None
        if self.transform.augments:
            # Drawn for every sample id, so an image's augmentation does not depend on the
            # number of ranks.
            params = self.transform.draw(n_total, generator)
        # Every rank draws the same order, then keeps its own interleaved shard.
        order = order[self.rank :: self.world_size][: self._num_samples()]
        if params is not None:
            params = {key: value[order] for key, value in params.items()}
        return order, params

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, params = self._epoch_order()
        device = self.images.device
        if order is not None:
            # One host-to-device copy per epoch; every later index stays on the device.
            order = order.to(device, non_blocking=True)
            params = {k: v.to(device, non_blocking=True) for k, v in (params or {}).items()}
        size = self.batch_size
        total = len(self) * size if self.train else self._num_samples()
        per_chunk = CHUNK_IMAGES.get(device.type, CHUNK_IMAGES["cpu"])
        chunk = max(size, per_chunk // size * size)  # whole batches per chunk
        for lo in range(0, total, chunk):
            hi = min(lo + chunk, total)
            if order is None:
                images, labels = self.images[lo:hi], self.labels[lo:hi]
            else:
                index = order[lo:hi]
                images, labels = self.images.index_select(0, index), self.labels[index]
            if params:
                images = self.transform.augment(images, {k: v[lo:hi] for k, v in params.items()})
            images = self.transform.normalize(images)
            for start in range(0, hi - lo, size):
                yield images[start : start + size], labels[start : start + size]
