"""The terminal progress bar, drawn by a real fit into a terminal-like stream: it shows the
epoch's running loss and accuracy, read from the module's own metrics."""

from __future__ import annotations

import functools
import io
import math
import re
import statistics
from contextlib import redirect_stdout

import lightning as L
import pytest
import torch

from normlab.data import SyntheticDataModule
from normlab.nn.seed_cnn import SeedCNN
from normlab.training import ImageClassifier, TerminalProgressBar
from normlab.training.metrics import Accuracy, Mean

BATCHES = 5  # training batches per epoch


class Terminal(io.StringIO):
    """Captured output that says it is a terminal, as an interactive shell's stdout does."""

    def isatty(self) -> bool:
        return True


class StepLosses(L.Callback):
    """Every training step's loss, as the step returned it, per epoch."""

    def __init__(self) -> None:
        self.per_epoch: list[list[float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.per_epoch.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.per_epoch[-1].append(float(outputs["loss"]))


class EpochMetrics(L.Callback):
    """The epoch's train/loss and train/acc as Lightning computed them for the logs."""

    def __init__(self) -> None:
        self.per_epoch: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.per_epoch.append({k: float(metrics[f"train/{k}"]) for k in ("loss", "acc")})


def draw_fit(read_every_s: float | None = None):
    """Fit 2 epochs of synthetic data with the bar drawing into a Terminal; returns
    (everything drawn, the epoch metrics, the step losses)."""
    terminal = Terminal()
    steps, epochs = StepLosses(), EpochMetrics()
    with redirect_stdout(terminal):
        bar = TerminalProgressBar(refresh_rate=1)  # not forced: it believes the terminal
        if read_every_s is not None:
            bar.READ_EVERY_S = read_every_s
        datamodule = SyntheticDataModule(
            train_size_total=16 * BATCHES + 40, val_size=40, test_size=40, batch_size=16,
            eval_batch_size=40,
        )  # fmt: skip
        torch.manual_seed(0)
        module = ImageClassifier(SeedCNN(), functools.partial(torch.optim.SGD, lr=0.05))
        trainer = L.Trainer(
            accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
            num_sanity_val_steps=0, enable_model_summary=False,
            callbacks=[steps, epochs, bar],
        )  # fmt: skip
        trainer.fit(module, datamodule=datamodule)
    assert not bar.is_disabled
    return terminal.getvalue(), epochs.per_epoch, steps.per_epoch


def redraws(text: str, epoch: int) -> list[str]:
    """The training bar's redraws during one epoch (counted from 1), up to its last."""
    lines = [part for part in re.split(r"[\r\n]", text) if part.startswith(f"epoch {epoch}/2")]
    last = max(i for i, line in enumerate(lines) if f" {BATCHES}/{BATCHES} " in line)
    return lines[: last + 1]


def shown(line: str, name: str) -> str | None:
    found = re.search(rf"\b{name}=([0-9.]+)", line)
    return found and found.group(1)


def test_the_bar_shows_the_epochs_running_loss_and_accuracy():
    text, epochs, steps = draw_fit()
    for epoch in (1, 2):
        final = redraws(text, epoch)[-1]  # drawn when the epoch (and its validation) ended
        loss, acc = shown(final, "loss"), shown(final, "acc")
        assert loss is not None and acc is not None, final
        # The metric Lightning logs for the epoch, to the bar's 4 decimals ...
        assert loss == f"{epochs[epoch - 1]['loss']:.4f}"
        assert acc == f"{epochs[epoch - 1]['acc']:.4f}"
        # ... which is the mean of the losses the steps returned (computed here), and an
        # accuracy over the epoch's 80 training images.
        assert float(loss) == pytest.approx(statistics.fmean(steps[epoch - 1]), abs=1e-4)
        correct = float(acc) * 16 * BATCHES
        assert abs(correct - round(correct)) < 16 * BATCHES * 5e-5


def test_the_running_figures_are_read_at_most_every_read_every_s():
    # Never within an epoch: the figures appear only once the epoch's training has ended,
    # and the next epoch does not start out with the last one's.
    text, _, _ = draw_fit(read_every_s=math.inf)
    for epoch in (1, 2):
        during = [line for line in redraws(text, epoch) if f" {BATCHES}/{BATCHES} " not in line]
        assert during and not any("loss=" in line for line in during), during
        assert shown(redraws(text, epoch)[-1], "loss") is not None
    # At every redraw: the figures appear from the first step on.
    text, _, _ = draw_fit(read_every_s=0.0)
    first_step = [line for line in redraws(text, 2) if f" 1/{BATCHES} " in line]
    assert any(shown(line, "loss") and shown(line, "acc") for line in first_step), first_step


def test_local_values_are_the_computed_values_and_none_before_any_update():
    mean, accuracy = Mean(), Accuracy()
    assert mean.local_value() is None and accuracy.local_value() is None
    losses = torch.tensor([2.5, 1.25, 0.75])
    for loss in losses:
        mean.update(loss)
    logits = torch.eye(4)[[0, 1, 2, 3, 0]]  # argmax: 0, 1, 2, 3, 0
    accuracy.update(logits, torch.tensor([0, 1, 3, 3, 2]))
    assert mean.local_value() == pytest.approx(float(losses.mean())) == float(mean.compute())
    assert accuracy.local_value() == pytest.approx(3 / 5) == float(accuracy.compute())
    mean.reset()
    assert mean.local_value() is None
