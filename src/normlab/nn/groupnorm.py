"""`torch.nn.GroupNorm` with the channel count first, like every other norm layer.

Networks build a norm as `norm(num_channels)`; torch's GroupNorm takes `num_groups` first.
With `num_groups=1` this is layer norm over each sample's (C, H, W) maps with a per-channel
affine (`conf/model/norm/layer.yaml`): `torch.nn.LayerNorm` would need the spatial size up front.
"""

from __future__ import annotations

import torch
from torch import nn


class GroupNorm(nn.GroupNorm):
    """Per-sample statistics over `num_groups` groups of channels (Wu & He, 2018)."""

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 2,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # Checked here, before torch's modulo, which would raise ZeroDivisionError for 0 and a
        # message without the numbers otherwise.
        if not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups={num_groups!r} must be a positive number of groups.")
        if num_channels % num_groups:
            raise ValueError(
                f"num_groups={num_groups} does not divide the {num_channels} channels of a conv "
                "layer in this network; GroupNorm needs equal groups. Pick a divisor of every "
                "layer's width (2 works for the lesson's CNN: 6 and 16 channels)."
            )
        super().__init__(
            num_groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype
        )
