"""The measurements beside train/val/test (normlab.training.evaluations) and the seed-drawn
training subset, with the real Lightning Trainer on the digits data: eval-mode training
accuracy, BN tested on batch statistics and after re-estimating its statistics (Li et al.),
and which training images a run sees."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from conftest import CONF, compose_config
from torch import nn

import normlab
from normlab.data import DigitsDataModule
from normlab.errors import DataError
from normlab.nn.batchnorm import ScratchBatchNorm2d
from normlab.results import train_val_gap
from normlab.runner.build import build_network
from normlab.training.evaluations import (
    accuracy,
    batchnorm_in_train_mode,
    batchnorm_layers,
    recalibrate_batchnorm,
)

# 960 training images in 30 batches of 32: no incomplete batch is dropped, so an epoch's
# running train accuracy covers exactly the images train/acc_eval measures.
DIGITS = ("data=digits", "data.train_size=960", "callbacks/diagnostics=none", "logger=none")


def run(tmp_path, name: str, *overrides: str) -> dict:
    return normlab.train(*DIGITS, *overrides, f"hydra.run.dir={tmp_path / name}", config_dir=CONF)


def test_eval_mode_train_accuracy_equals_the_running_one_without_dropout_or_bn(tmp_path):
    # A rate too small to move the weights: the epoch's running accuracy is then the
    # accuracy of one network, the same network train/acc_eval measures after the epoch.
    results = run(tmp_path, "plain", "model=cnn", "optimizer.lr=1e-12", "trainer.max_epochs=1")
    final = results["history"][-1]
    assert final["train/acc_eval"] == pytest.approx(final["train/acc"], abs=1e-6)
    assert results["train_acc_eval_final"] == final["train/acc_eval"]
    gap = results["train_acc_eval_final"] - results["val_acc_final"]
    assert train_val_gap(results) == pytest.approx(gap)


def test_eval_mode_train_accuracy_is_measured_with_dropout_off(tmp_path):
    results = run(
        tmp_path, "dropout", "model=cnn_dropout", "model.dropout.p=0.5", "optimizer.lr=1e-12",
        "trainer.max_epochs=1",
    )  # fmt: skip
    final = results["history"][-1]
    # Same weights, same images: the running accuracy drew a dropout mask per batch.
    assert abs(final["train/acc_eval"] - final["train/acc"]) > 1e-3
    assert all("train/acc_eval" in row for row in results["history"])


def test_bn_evaluations_record_batch_stats_and_recalibrated_accuracy(tmp_path):
    overrides = ("model=cnn_bn_dropout", "model.dropout.p=0.5", "trainer.max_epochs=2")
    on = ("callbacks.bn_eval.batch_stats=true", "callbacks.bn_eval.recalibrate=true")
    results = run(tmp_path, "bn", *overrides, *on)
    for key in ("test_acc_batch_stats", "test_acc_bn_recalibrated"):
        assert 0.1 < results[key] <= 1.0, key
    assert results["lr"] == pytest.approx(0.05)  # conf/optimizer's rate for cnn_bn_dropout
    off = run(tmp_path, "default", *overrides)
    assert "test_acc_batch_stats" not in off and "test_acc_bn_recalibrated" not in off
    # Same seed, same weights: the extra evaluations do not change the run's own test.
    assert off["test_acc"] == pytest.approx(results["test_acc"])
    no_bn = run(tmp_path, "no_bn", "model=cnn", "trainer.max_epochs=1", *on)
    assert "test_acc_bn_recalibrated" not in no_bn, "nothing to re-estimate without BN"


def trained_bn_run(tmp_path) -> dict:
    return run(
        tmp_path, "trained", "model=cnn_bn_dropout", "model.dropout.placement=conv",
        "model.dropout.p=0.5", "trainer.max_epochs=2", "callbacks.bn_eval.recalibrate=true",
    )  # fmt: skip


def test_recalibration_changes_bn_statistics_but_not_the_checkpoint(tmp_path):
    results = trained_bn_run(tmp_path)
    ckpt = tmp_path / "trained" / results["best_checkpoint"]
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    module, data = restore(tmp_path, state)
    before = {k: v.clone() for k, v in module.state_dict().items() if "running" in k}
    with batchnorm_in_train_mode(module, momentum=None):
        recalibrate_batchnorm(module, data.train_set.images, data.eval_transform, 32)
        during = {k: v.clone() for k, v in module.state_dict().items() if "running" in k}
    after = {k: v for k, v in module.state_dict().items() if "running" in k}
    assert any(not torch.allclose(before[k], during[k]) for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before), "restored afterwards"
    assert not any(m.training for m in module.modules()), "modes restored too"
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest


def restore(tmp_path, state: dict) -> tuple[nn.Module, DigitsDataModule]:
    """The run's network, built as the run built it, with the saved weights; its data."""
    cfg = compose_config([*DIGITS, "model=cnn_bn_dropout", "model.dropout.placement=conv"])
    net = build_network(cfg.model)
    net.load_state_dict(
        {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    )
    net.eval()
    data = DigitsDataModule(train_size=960)
    data.setup()
    return net, data


def batch_stats_accuracy(net: nn.Module, images, labels, transform) -> float:
    with batchnorm_in_train_mode(net):
        return accuracy(net, images, labels, transform, batch_size=8)


def test_batch_stats_agree_for_torch_and_scratch_batchnorm_and_leave_running_stats():
    torch.manual_seed(0)
    torch_bn = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10),
    )  # fmt: skip
    scratch = copy.deepcopy(torch_bn)
    scratch[1] = ScratchBatchNorm2d(4)
    scratch.load_state_dict(torch_bn.state_dict())
    data = DigitsDataModule()
    data.setup()
    test = data.test_set
    for net in (torch_bn, scratch):
        net.train()
        net(data.eval_transform(test.images[:64]))  # running statistics off their start values
        net.eval()
    saved = [copy.deepcopy(net.state_dict()) for net in (torch_bn, scratch)]
    accs = [
        batch_stats_accuracy(net, test.images, test.labels, data.eval_transform)
        for net in (torch_bn, scratch)
    ]
    assert accs[0] == pytest.approx(accs[1])
    running = accuracy(torch_bn, test.images, test.labels, data.eval_transform, 8)
    assert accs[0] != running, "batch statistics are another normalization"
    for net, state in zip((torch_bn, scratch), saved, strict=True):
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
        assert len(batchnorm_layers(net)) == 1


def test_a_subset_seed_draws_other_training_images_and_keeps_val_and_test():
    def split(**kwargs) -> DigitsDataModule:
        data = DigitsDataModule(train_size=200, **kwargs)
        data.setup()
        return data

    fixed, a, a_again, b = split(), split(subset_seed=0), split(subset_seed=0), split(subset_seed=1)
    assert torch.equal(a.train_set.images, a_again.train_set.images)
    assert not torch.equal(a.train_set.labels, b.train_set.labels)
    assert not torch.equal(fixed.train_set.labels, b.train_set.labels)
    for data in (a, b):
        assert torch.equal(data.val_set.images, fixed.val_set.images)
        assert torch.equal(data.test_set.images, fixed.test_set.images)
        assert len(data.train_set) == 200


def test_a_subset_seed_that_is_not_a_number_names_the_key():
    with pytest.raises(DataError, match=r"data\.subset_seed='one'.*whole number"):
        DigitsDataModule(train_size=200, subset_seed="one")


def test_batch_stats_are_taken_over_batches_of_mixed_classes_when_the_set_is_class_sorted():
    """Image folders are read class by class. Consecutive batches would then hold one class
    each, and BN with batch statistics would normalize the class itself away."""
    from normlab.training.evaluations import batch_stats_accuracy as bn_batch_stats_accuracy

    torch.manual_seed(0)
    labels = torch.arange(2).repeat_interleave(200)  # 200 of class 0, then 200 of class 1
    brightness = torch.where(labels == 1, 200, 50).to(torch.uint8)
    images = brightness.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    # The class is the brightness: BN centres it, the head reads its sign.
    net = nn.Sequential(nn.BatchNorm2d(1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        net[3].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        net[3].bias.zero_()
    net.eval()

    def to_float(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255

    assert batch_stats_accuracy(net, images, labels, to_float) == 0.5  # one class a batch
    assert bn_batch_stats_accuracy(net, images, labels, to_float, 8) > 0.95
    assert not net[0].training and net[0].num_batches_tracked == 0, "state restored"
