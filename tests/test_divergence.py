"""The divergence guard stops real Lightning runs whose loss blows up, and the per-epoch
history survives testing an earlier (best) checkpoint."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normlab.errors import ConfigError
from normlab.training import DivergenceGuard, MetricHistory

BATCHES_PER_EPOCH = 10


class ToyClassifier(L.LightningModule):
    """Logistic regression whose loss is multiplied by `blowup` from step `bad_step` on."""

    def __init__(self, bad_step: int | None = None, blowup: float = math.nan) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)
        self.bad_step = bad_step
        self.blowup = blowup

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.bad_step is not None and self.global_step >= self.bad_step:
            loss = loss * self.blowup
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        acc = (self.net(x).argmax(1) == y).float().mean()
        # Falls epoch after epoch, so the best checkpoint is the first epoch's.
        self.log("val/acc", acc - self.current_epoch, on_epoch=True)

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES_PER_EPOCH * 8, 4, generator=generator)
    y = torch.randint(0, 3, (len(x),), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def fit(module, callbacks, tmp_path, max_epochs=3, ckpt_path=None, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=max_epochs, callbacks=callbacks, default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        accelerator="cpu", **kwargs,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path)
    return trainer


def test_nan_loss_stops_the_run_at_the_next_check(tmp_path):
    guard = DivergenceGuard(check_every_n_steps=4)
    # global_step counts optimizer steps: the loss of the 8th batch (step 7 -> 8) is NaN
    trainer = fit(ToyClassifier(bad_step=7), [guard], tmp_path, enable_checkpointing=False)
    assert guard.diverged and guard.diverged_at_step == 8 and guard.diverged_at_epoch == 0
    assert trainer.global_step == 8  # no step after the check that caught it
    assert guard.record() == {"status": "diverged", "diverged_at_step": 8, "diverged_at_epoch": 0}


def test_a_nan_between_checks_is_not_forgotten_when_the_loss_looks_finite_again(tmp_path):
    """One NaN loss value, then finite ones again: the device-side flag remembers it until
    the next check, at the end of the epoch."""

    class OneBadStep(ToyClassifier):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if self.global_step != 2:
                return loss
            # NaN in value, zero gradient: the weights stay finite, later losses too
            return loss.detach() * math.nan + 0 * loss

    guard = DivergenceGuard(check_every_n_steps=1000)
    trainer = fit(OneBadStep(), [guard], tmp_path, enable_checkpointing=False)
    assert guard.diverged_at_step == BATCHES_PER_EPOCH and trainer.current_epoch == 1
    assert trainer.global_step == BATCHES_PER_EPOCH  # epoch 2 never started


def test_loss_above_max_loss_counts_as_divergence(tmp_path):
    guard = DivergenceGuard(check_every_n_steps=1, max_loss=1e4)
    fit(ToyClassifier(bad_step=3, blowup=1e6), [guard], tmp_path, enable_checkpointing=False)
    assert guard.diverged_at_step == 4


def test_finite_training_runs_to_the_end(tmp_path):
    guard = DivergenceGuard(check_every_n_steps=1, max_loss=1e4)
    trainer = fit(ToyClassifier(), [guard], tmp_path, enable_checkpointing=False)
    assert not guard.diverged and guard.record() == {}
    assert trainer.global_step == 3 * BATCHES_PER_EPOCH


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"check_every_n_steps": 0}, "check_every_n_steps=0"),
        ({"check_every_n_steps": 2.5}, "check_every_n_steps=2.5"),
        ({"max_loss": 0}, "max_loss=0"),
        ({"max_loss": -1.0}, "max_loss=-1.0"),
        ({"max_loss": "big"}, "max_loss='big'"),
    ],
)
def test_settings_that_cannot_work_name_the_config_key_and_an_example(kwargs, key):
    with pytest.raises(ConfigError) as info:
        DivergenceGuard(**kwargs)
    message = str(info.value)
    assert message.startswith(f"callbacks.divergence.{key}: must be a positive")
    name = key.split("=")[0]
    assert f"e.g. callbacks.divergence.{name}=" in message and "\n" not in message
    DivergenceGuard(max_loss=None)  # null: stop on NaN/inf only


def test_history_keeps_every_epoch_after_testing_the_best_checkpoint(tmp_path):
    """Lightning restores callback state when `test` loads a checkpoint; the history of the
    epochs after the best one must survive it (results.json's final values come from it)."""
    history = MetricHistory(print_summary=False)
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    module = ToyClassifier()
    trainer = fit(module, [history, best], tmp_path)
    assert best.best_model_path.endswith("epoch=0-step=10.ckpt")
    trainer.test(module, dataloaders=loader(), ckpt_path=best.best_model_path, verbose=False)
    assert [row["epoch"] for row in history.epochs] == [0, 1, 2]
    # ... while resuming a fit from that checkpoint does rewind it to the checkpoint's epoch
    resumed = MetricHistory(print_summary=False)
    fit(ToyClassifier(), [resumed], tmp_path / "resume", max_epochs=2,
        ckpt_path=best.best_model_path, enable_checkpointing=False)  # fmt: skip
    assert [row["epoch"] for row in resumed.epochs] == [0, 1]


@pytest.mark.slow
def test_diverging_run_with_every_step_diagnosed_ends_diverged_not_crashed(tmp_path):
    """A diverged network's statistics (NaN, inf, 1e30) cannot go into TensorBoard's
    histogram buckets; the diagnostics must skip those values, not fail the run."""
    from conftest import run_train, tensorboard_dir
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    proc, results = run_train(
        "model=cnn_bn", "data=digits", "optimizer.lr=1000", "trainer.max_epochs=2",
        "callbacks.diagnostics.every_n_steps=1",
        run_dir=run_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert results["status"] == "diverged"
    events = EventAccumulator(str(tensorboard_dir(run_dir)))
    events.Reload()
    assert any(tag.startswith("grad_norm/") for tag in events.Tags()["scalars"])
