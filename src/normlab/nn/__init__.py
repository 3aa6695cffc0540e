"""Plain PyTorch: the from-scratch layers, the blocks and the networks.

Nothing here knows of Lightning or Hydra. A network takes its normalization and dropout as
callables: `norm(num_channels)` and `dropout()` each return a fresh layer, so any class with
that shape (`torch.nn.BatchNorm2d`, `functools.partial(torch.nn.Dropout, p=0.3)`, your own)
plugs in without a table of names.
"""

from normlab.nn.batchnorm import ScratchBatchNorm2d, batchnorm
from normlab.nn.blocks import PLACEMENTS, ConvBlock, DenseBlock, DropoutFactory, NormFactory
from normlab.nn.dropout import ScratchDropout
from normlab.nn.groupnorm import GroupNorm
from normlab.nn.seed_cnn import SeedCNN
from normlab.nn.vgg import VGG, VGG_LAYOUTS

__all__ = [
    "PLACEMENTS",
    "VGG",
    "VGG_LAYOUTS",
    "ConvBlock",
    "DenseBlock",
    "DropoutFactory",
    "GroupNorm",
    "NormFactory",
    "ScratchBatchNorm2d",
    "ScratchDropout",
    "SeedCNN",
    "batchnorm",
]
