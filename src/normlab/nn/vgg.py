"""VGG-style networks of 3x3 conv blocks (Simonyan & Zisserman, 2015), sized for 32x32 inputs.

Deep enough that the choice of normalization decides whether plain SGD trains at all
(docs/training.md gives what vgg11_slim reaches on CIFAR-10).
"""

from __future__ import annotations

import torch
from torch import nn

from normlab.nn.blocks import ConvBlock, DenseBlock, DropoutFactory, NormFactory, split_dropout

# Output widths of the conv layers; "M" is a 2x2 max-pool (applied inside the preceding block).
VGG_LAYOUTS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG-`depth` with every conv width multiplied by `width` (0.25 gives a CPU-sized net).

    The head is flatten -> FC(hidden) -> ReLU -> FC(classes); with dropout placement `head`
    the dropout follows the hidden FC layer. `norm` and `dropout` as in `SeedCNN`.
    """

    def __init__(
        self,
        depth: int = 11,
        width: float = 1.0,
        norm: NormFactory = nn.BatchNorm2d,
        dropout: DropoutFactory = nn.Identity,
        dropout_placement: str = "head",
        num_classes: int = 10,
        in_channels: int = 3,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        if depth not in VGG_LAYOUTS:
            raise ValueError(f"depth={depth}: VGG depths are {sorted(VGG_LAYOUTS)}.")
        layout = VGG_LAYOUTS[depth]
        conv_dropout, head_dropout = split_dropout(dropout, dropout_placement)
        blocks: list[nn.Module] = []
        channels = in_channels
        for i, item in enumerate(layout):
            if item == "M":
                continue
            out = max(1, round(int(item) * width))
            pool = i + 1 < len(layout) and layout[i + 1] == "M"
            blocks.append(
                ConvBlock(channels, out, 3, padding=1, norm=norm, dropout=conv_dropout, pool=pool)
            )
            channels = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),  # five pools take 32x32 to 1x1
            DenseBlock(channels, hidden, dropout=head_dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
