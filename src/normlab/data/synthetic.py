"""CIFAR-shaped random data for benchmarks and smoke tests: no download, any size.

Each class gets its own mean colour, so a network can learn something (useful to see a loss
go down) while timings and memory match CIFAR-10's shapes.
"""

from __future__ import annotations

import torch

from normlab.data.base import ImageSplit, InMemoryDataModule

# Images generated per step: the int16 noise of 50k images at once would be 300 MB (and
# int64, torch.randint's default, 1.2 GB) for a 150 MB result.
CHUNK = 4096


def make_synthetic(n: int, num_classes: int, image_size: int, seed: int) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    colours = torch.randint(
        64, 192, (num_classes, 3, 1, 1), generator=torch.Generator().manual_seed(0)
    ).to(torch.int16)
    images = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8)
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        noise = torch.randint(
            -64, 64, (hi - lo, 3, image_size, image_size), generator=g, dtype=torch.int16
        )
        images[lo:hi] = (colours[labels[lo:hi]] + noise).clamp_(0, 255)
    return ImageSplit(images, labels)


class SyntheticDataModule(InMemoryDataModule):
    def __init__(
        self,
        train_size_total: int = 50_000,
        test_size: int = 10_000,
        num_classes: int = 10,
        image_size: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.train_size_total = train_size_total
        self.test_size = test_size
        self.image_size = image_size
        self.class_names = tuple(f"class_{i}" for i in range(num_classes))

    def load(self) -> tuple[ImageSplit, ImageSplit]:
        n = len(self.class_names)
        return (
            make_synthetic(self.train_size_total, n, self.image_size, seed=1),
            make_synthetic(self.test_size, n, self.image_size, seed=2),
        )
