"""Conv and fully connected building blocks with pluggable normalization and dropout."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

# `norm(num_channels)` and `dropout()` each return a new layer (see normlab.nn).
NormFactory = Callable[[int], nn.Module]
DropoutFactory = Callable[[], nn.Module]

# Where dropout layers go in a network: between the fully connected layers (the lesson's
# choice), after every conv block (so dropout feeds the next block's normalization), or both.
PLACEMENTS = ("head", "conv", "all")


def split_dropout(
    dropout: DropoutFactory, placement: str
) -> tuple[DropoutFactory | None, DropoutFactory | None]:
    """(dropout for conv blocks, dropout for the head) under `placement`; None = not there."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r}: choose one of {list(PLACEMENTS)}.")
    conv = dropout if placement in ("conv", "all") else None
    head = dropout if placement in ("head", "all") else None
    return conv, head


class ConvBlock(nn.Sequential):
    """conv -> norm -> ReLU [-> max-pool] [-> dropout].

    The norm sits between the convolution and the non-linearity, as in Ioffe & Szegedy (2015)
    and the lesson. The conv bias is dropped when a norm follows it unless `bias=True` is asked
    for: the norm subtracts the per-channel mean, so a bias there is a parameter that does
    nothing but drift.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        norm: NormFactory = nn.Identity,
        dropout: DropoutFactory | None = None,
        padding: int = 0,
        pool: bool = False,
        bias: bool | None = None,
    ) -> None:
        # The norm is made first so the conv knows whether it needs a bias. Norm layers draw
        # no random numbers when made, so the conv's initial weights do not depend on this.
        norm_layer = norm(out_channels)
        if bias is None:
            bias = isinstance(norm_layer, nn.Identity)
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias),
            "norm": norm_layer,
            "act": nn.ReLU(),
        }
        if pool:
            layers["pool"] = nn.MaxPool2d(2, 2)
        if dropout is not None:
            layers["dropout"] = dropout()
        super().__init__(OrderedDict(layers))


class DenseBlock(nn.Sequential):
    """linear -> ReLU [-> dropout]: a hidden layer of the classifier head."""

    def __init__(
        self, in_features: int, out_features: int, *, dropout: DropoutFactory | None = None
    ) -> None:
        layers: dict[str, nn.Module] = {
            "fc": nn.Linear(in_features, out_features),
            "act": nn.ReLU(),
        }
        if dropout is not None:
            layer = dropout()
            if isinstance(layer, nn.Dropout2d | nn.Dropout3d):
                raise ValueError(
                    "channel dropout drops whole feature maps, which only exist after conv "
                    "layers; place it after the conv blocks only (placement=conv)."
                )
            layers["dropout"] = layer
        super().__init__(OrderedDict(layers))
