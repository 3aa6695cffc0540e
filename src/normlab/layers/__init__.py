"""From-scratch normalization and dropout layers, and factories for every configured choice."""

from normlab.layers.batchnorm import ScratchBatchNorm2d, batchnorm
from normlab.layers.dropout import ScratchDropout
from normlab.layers.factory import (
    DROPOUT_BUILDERS,
    NORM_BUILDERS,
    dropout_settings,
    make_dropout,
    make_norm2d,
    norm_name,
)

__all__ = [
    "DROPOUT_BUILDERS",
    "NORM_BUILDERS",
    "ScratchBatchNorm2d",
    "ScratchDropout",
    "batchnorm",
    "dropout_settings",
    "make_dropout",
    "make_norm2d",
    "norm_name",
]
