"""LightningDataModules over in-memory uint8 tensors: CIFAR-10, digits, your own
image folders, synthetic."""

from normlab.data.base import ImageSplit, InMemoryDataModule
from normlab.data.batches import BatchTransform, TensorBatchLoader
from normlab.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
from normlab.data.digits import DigitsDataModule
from normlab.data.image_folder import ImageFolderDataModule
from normlab.data.synthetic import SyntheticDataModule

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "BatchTransform",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "ImageSplit",
    "InMemoryDataModule",
    "SyntheticDataModule",
    "TensorBatchLoader",
]
