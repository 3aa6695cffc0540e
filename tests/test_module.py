"""The LightningModule's own checks, with a real Trainer."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from normlab.errors import ConfigError
from normlab.nn import SeedCNN
from normlab.training import ImageClassifier


def fit(net: torch.nn.Module, num_classes: int, labels: int) -> L.Trainer:
    module = ImageClassifier(
        net, functools.partial(torch.optim.SGD, lr=0.01), num_classes=num_classes
    )
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, labels, (8,)))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=4))
    return trainer


@pytest.mark.parametrize("width,num_classes", [(10, 5), (3, 5)], ids=["wider", "narrower"])
def test_a_network_whose_width_is_not_num_classes_stops_at_the_first_step(width, num_classes):
    # Wider: it would train 10 outputs for 5 classes in silence. Narrower: cross-entropy would
    # fail on the first label >= 3 (on a GPU, as a device-side assert).
    with pytest.raises(ConfigError) as info:
        fit(SeedCNN(num_classes=width), num_classes, labels=num_classes)
    message = str(info.value)
    assert message.startswith(f"model.num_classes={num_classes} but the network (SeedCNN) "
                              f"outputs {width} class scores per image.")  # fmt: skip
    assert "\n" not in message


def test_a_network_of_num_classes_trains():
    assert fit(SeedCNN(num_classes=5), 5, labels=5).global_step == 2
