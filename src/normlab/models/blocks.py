"""Conv and fully connected building blocks with pluggable normalization and dropout."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from normlab.layers.factory import Spec, dropout_settings, make_dropout, make_norm2d, norm_name


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
        norm: Spec = "none",
        dropout: Spec = "none",
        padding: int = 0,
        pool: bool = False,
        bias: bool | None = None,
    ) -> None:
        if bias is None:
            bias = norm_name(norm) == "none"
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias),
            "norm": make_norm2d(norm, out_channels),
            "act": nn.ReLU(),
        }
        if pool:
            layers["pool"] = nn.MaxPool2d(2, 2)
        if dropout_settings(dropout)[2] in ("conv", "all"):
            layers["dropout"] = make_dropout(dropout)
        super().__init__(OrderedDict(layers))


class DenseBlock(nn.Sequential):
    """linear -> ReLU [-> dropout]: a hidden layer of the classifier head."""

    def __init__(self, in_features: int, out_features: int, *, dropout: Spec = "none") -> None:
        layers: dict[str, nn.Module] = {
            "fc": nn.Linear(in_features, out_features),
            "act": nn.ReLU(),
        }
        if dropout_settings(dropout)[2] in ("head", "all"):
            layers["dropout"] = make_dropout(dropout)
        super().__init__(OrderedDict(layers))
