"""The lesson's CNN, with the normalization and dropout the lesson asks the reader to add."""

from __future__ import annotations

import torch
from torch import nn

from normlab.nn.blocks import ConvBlock, DenseBlock, DropoutFactory, NormFactory, split_dropout


class SeedCNN(nn.Module):
    """LeNet-style CNN from the lesson: conv 3->6 k5, pool, conv 6->16 k5, pool,
    FC 400->120->84->10.

    `norm` goes after each convolution (before its ReLU); `dropout` with the default
    placement `head` goes after each hidden FC layer, where the lesson puts it. With the
    defaults (no norm, no dropout) the layer shapes and parameter count are exactly the
    lesson's (62,006 parameters for 10 classes): conv biases are kept here, unlike in
    `ConvBlock`'s default, so the plain network is the lesson's network.
    """

    def __init__(
        self,
        norm: NormFactory = nn.Identity,
        dropout: DropoutFactory = nn.Identity,
        dropout_placement: str = "head",
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        conv_dropout, head_dropout = split_dropout(dropout, dropout_placement)
        self.features = nn.Sequential(
            ConvBlock(in_channels, 6, 5, norm=norm, dropout=conv_dropout, pool=True, bias=True),
            ConvBlock(6, 16, 5, norm=norm, dropout=conv_dropout, pool=True, bias=True),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            DenseBlock(16 * 5 * 5, 120, dropout=head_dropout),
            DenseBlock(120, 84, dropout=head_dropout),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
