"""scikit-learn's bundled handwritten digits as CIFAR-shaped images: real data, no network.

1,797 8x8 grayscale digits (16 grey levels) are upscaled to 32x32 and repeated over three
channels so every CIFAR-10 model runs on them unchanged. A fixed test split of 360 images is
held out once (seeded), then `val_size` more for validation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from normlab.data.base import ImageSplit, InMemoryDataModule


def load_digit_images(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as uint8 [N, 3, image_size, image_size] and int64 labels."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    digits = load_digits()
    grey = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    big = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(digits.target).long()


class DigitsDataModule(InMemoryDataModule):
    class_names = tuple(str(d) for d in range(10))

    def __init__(self, test_size: int = 360, image_size: int = 32, **kwargs) -> None:
        kwargs.setdefault("val_size", 180)
        super().__init__(**kwargs)
        self.test_size = test_size
        self.image_size = image_size

    def load(self) -> tuple[ImageSplit, ImageSplit]:
        images, labels = load_digit_images(self.image_size)
        # The test split uses its own fixed seed: it never moves, whatever split_seed says.
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
        test, train = order[: self.test_size], order[self.test_size :]
        return ImageSplit(images[train], labels[train]), ImageSplit(images[test], labels[test])
