"""Plain `nn.Module` networks: they know nothing of Lightning or Hydra."""

from normlab.models.blocks import ConvBlock, DenseBlock
from normlab.models.seed_cnn import SeedCNN
from normlab.models.vgg import VGG, VGG_LAYOUTS

__all__ = ["VGG", "VGG_LAYOUTS", "ConvBlock", "DenseBlock", "SeedCNN"]
