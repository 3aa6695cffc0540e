"""Inverted dropout, as `nn.Dropout` implements it.

During training each element is zeroed with probability `p` and the survivors are scaled by
1 / (1 - p), so the expected value of every activation is unchanged and evaluation needs no
rescaling: in eval mode the layer is the identity. The mask is drawn with `bernoulli_(1 - p)`
on a tensor shaped like the input, the same draw PyTorch's CPU kernel makes, so with the same
random state the two layers drop the same elements.
"""

from __future__ import annotations

import torch
from torch import nn


def check_dropout_probability(p: float) -> float:
    """Return `p` as a float, or raise a ValueError that says what a dropout rate must be."""
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(
            f"dropout probability has to be between 0 and 1, but got {p!r}. "
            "It is the fraction of activations zeroed during training (e.g. 0.5)."
        )
    return float(p)


class ScratchDropout(nn.Module):
    """Element-wise inverted dropout with drop probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = check_dropout_probability(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            # Everything is dropped; multiplying (rather than returning zeros) keeps the
            # autograd graph so gradients are zero instead of missing.
            return x * 0.0
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p)
        return x * keep.div_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
