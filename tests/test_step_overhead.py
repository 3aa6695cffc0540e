"""What keeps a training step cheap must not change what a run computes or which hooks run:
the running-sum metrics give torchmetrics' numbers, a hook is skipped only where the class
inherits it unchanged, and a configured profiler still profiles."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from normlab.runner.build import build_module, build_network, build_trainer
from normlab.training import DivergenceGuard, MetricHistory
from normlab.training.hooks import PER_BATCH_HOOKS, TRAINING_STEP_HOOKS
from normlab.training.metrics import Accuracy, Mean
from normlab.training.profiling import NoProfiler


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_running_sums_give_torchmetrics_results_exactly():
    generator = torch.Generator().manual_seed(0)
    reference = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
    reference_mean = MeanMetric(nan_strategy="disable")
    accuracy, mean = Accuracy(), Mean()
    for batch in [4] * 500 + [3]:  # a short last batch, as in an epoch
        logits = torch.randn(batch, 10, generator=generator)
        labels = torch.randint(0, 10, (batch,), generator=generator)
        loss = torch.rand((), generator=generator) * 3
        reference.update(logits, labels)
        reference_mean.update(loss)
        accuracy.update(logits, labels)
        mean.update(loss)
    assert torch.equal(accuracy.compute(), reference.compute())
    assert torch.equal(mean.compute(), reference_mean.compute())
    assert Accuracy().compute().item() == 0.0  # as torchmetrics: 0 before any prediction
    mean.update(torch.tensor(float("nan")))
    assert mean.compute().isnan()  # no NaN filtering: a NaN loss is a NaN epoch loss


class OwnBatchEnd(L.Callback):
    def on_train_batch_end(self, *args) -> None:
        pass


def test_trainer_skips_only_the_batch_hooks_a_callback_inherits(compose_cfg, tmp_path):
    cfg = compose_cfg(["data=digits", "logger=none"], output_dir=tmp_path)
    trainer = build_trainer(cfg)
    guard = next(cb for cb in trainer.callbacks if isinstance(cb, DivergenceGuard))
    assert callable(guard.on_train_batch_end)  # implemented: still called every step
    assert guard.on_before_backward is None and guard.on_validation_batch_end is None
    checkpoint = next(cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))
    assert callable(checkpoint.on_train_batch_end) and checkpoint.on_after_backward is None
    history = next(cb for cb in trainer.callbacks if isinstance(cb, MetricHistory))
    assert all(getattr(history, hook) is None for hook in PER_BATCH_HOOKS)
    assert callable(history.on_train_epoch_end)  # per-epoch hooks are never touched
    # the class is untouched: another instance keeps its methods
    assert callable(MetricHistory().on_before_backward)


def test_module_skips_the_training_step_hooks_it_inherits(compose_cfg, tmp_path):
    cfg = compose_cfg(["data=digits"], output_dir=tmp_path)
    module = build_module(cfg, build_network(cfg.model))
    assert all(getattr(module, hook) is None for hook in TRAINING_STEP_HOOKS)
    # Lightning inspects the signatures of the evaluation batch hooks: they stay methods
    assert callable(module.on_validation_batch_end) and callable(module.on_test_batch_start)


@pytest.mark.parametrize(("setting", "expected"), [(None, NoProfiler), ("simple", SimpleProfiler)])
def test_profiler_only_when_configured(compose_cfg, tmp_path, setting, expected):
    overrides = ["data=digits", "logger=none"]
    if setting:
        overrides.append(f"+trainer.profiler={setting}")
    trainer = build_trainer(compose_cfg(overrides, output_dir=tmp_path))
    assert type(trainer.profiler) is expected
    # Lightning's test for "not profiling" still holds for the no-op profiler
    assert isinstance(trainer.profiler, PassThroughProfiler) == (setting is None)
