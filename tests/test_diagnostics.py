"""The diagnostics callback, read back with TensorBoard's own EventAccumulator and checked
against the same quantities computed independently with PyTorch."""

from __future__ import annotations

import copy
import io
from collections import OrderedDict
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tensorboard_dir
from finished_run import EPOCHS, EVERY_N_STEPS, STEPS_PER_EPOCH, digits_run
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normlab.diagnostics import NetworkDiagnostics
from normlab.diagnostics.callback import confusion_title
from normlab.diagnostics.figures import prediction_grid
from normlab.diagnostics.probes import ValidationProbe, WatchedLayers
from normlab.errors import ConfigError
from normlab.nn import ScratchBatchNorm2d, SeedCNN
from normlab.runner.build import build_network, instantiate_all
from normlab.runner.rundir import network_weights
from normlab.training import ImageClassifier

# The seed CNN's layers by module path: the names the README and TensorBoard use.
NORMS = {"features.0.norm": 6, "features.1.norm": 16}  # batch norms, with their channels
RELUS = ["features.0.act", "features.1.act", "head.1.act", "head.2.act"]
WEIGHTED = [
    "features.0.conv", "features.0.norm", "features.1.conv", "features.1.norm",
    "head.1.fc", "head.2.fc", "head.3",
]  # fmt: skip
TRAIN_STEPS = list(range(0, EPOCHS * STEPS_PER_EPOCH, EVERY_N_STEPS))
VAL_STEPS = [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]


class Events:
    """Everything in a run's TensorBoard event files, by tag and step."""

    def __init__(self, folder) -> None:
        self.scalars, self.histograms, self.images = {}, {}, {}
        for path in sorted(folder.glob("events.out.tfevents.*")):
            everything = {"scalars": 0, "histograms": 0, "images": 0}
            acc = EventAccumulator(str(path), size_guidance=everything)
            acc.Reload()
            tags = acc.Tags()
            for tag in tags["scalars"]:
                self.scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
            for tag in tags["histograms"]:
                values = {e.step: e.histogram_value for e in acc.Histograms(tag)}
                self.histograms.setdefault(tag, {}).update(values)
            for tag in tags["images"]:
                values = {e.step: e.encoded_image_string for e in acc.Images(tag)}
                self.images.setdefault(tag, {}).update(values)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return digits_run(tmp_path_factory)


@pytest.fixture(scope="module")
def events(run):
    return Events(tensorboard_dir(run.run_dir))


def saved_config(run_dir):
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.paths.output_dir = str(run_dir)
    return cfg


def trained_network(run_dir, checkpoint: str) -> nn.Module:
    net = build_network(saved_config(run_dir).model)
    state = torch.load(run_dir / "checkpoints" / checkpoint, weights_only=True)["state_dict"]
    net.load_state_dict(network_weights(state))
    return net.eval()


def normalized(images: torch.Tensor, cfg) -> torch.Tensor:
    mean = torch.tensor(list(cfg.data.mean)).view(1, -1, 1, 1)
    std = torch.tensor(list(cfg.data.std)).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def capture(net: nn.Module, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Filled by every forward pass with (input, output) of the named layers."""
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    modules = dict(net.named_modules())
    for name in names:
        modules[name].register_forward_hook(
            lambda m, i, o, name=name: captured.update({name: (i[0].detach(), o.detach())})
        )
    return captured


@pytest.mark.slow
def test_event_files_hold_every_diagnostic_for_every_layer(events):
    def steps(tag, kind=events.scalars):
        assert tag in kind, f"{tag} missing; have {sorted(kind)[:20]}..."
        return sorted(kind[tag])

    for layer in NORMS:
        for stat in ("activation_mean", "activation_std"):
            for side in ("before", "after"):
                assert steps(f"{stat}/{layer}/{side}") == TRAIN_STEPS
        assert steps(f"bn_var_ratio/{layer}/train") == TRAIN_STEPS
        assert steps(f"bn_var_ratio/{layer}/val") == VAL_STEPS
    for relu in RELUS:
        fractions = events.scalars[f"relu_zero_fraction/{relu}"]
        assert sorted(fractions) == TRAIN_STEPS and all(0 < v < 1 for v in fractions.values())
    for layer in WEIGHTED:
        grads, updates = (
            events.scalars[f"grad_norm/{layer}"],
            events.scalars[f"update_ratio/{layer}"],
        )
        assert sorted(grads) == sorted(updates) == TRAIN_STEPS
        assert all(np.isfinite(v) and v > 0 for v in [*grads.values(), *updates.values()])
    for layer, channels in NORMS.items():
        for name in ("gamma", "beta", "running_mean", "running_var", "var_ratio_train"):
            histograms = events.histograms[f"bn/{layer}/{name}"]
            assert sorted(histograms) == TRAIN_STEPS
            assert all(h.num == channels for h in histograms.values())
        assert steps(f"bn/{layer}/var_ratio_val", events.histograms) == VAL_STEPS
    for digit in range(10):
        assert steps(f"val_class_acc/{digit}") == VAL_STEPS
    assert steps("val/predictions", events.images) == VAL_STEPS
    assert steps("val/confusion_matrix", events.images) == VAL_STEPS


@pytest.mark.slow
def test_first_step_statistics_match_pytorch_on_the_same_batch(run, events):
    """Step 0 is reproducible outside the run: same seed, same initial weights, same first
    batch. The logged statistics must be those of that batch, and batch norm's output must be
    normalized (mean 0, std 1 with gamma=1, beta=0 at the first forward pass)."""
    cfg = saved_config(run.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as normlab.runner.train does
    net = build_network(cfg.model)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    images, _ = next(iter(datamodule.train_dataloader()))
    seen = capture(net, ["features.0.norm", "features.1.norm", "features.0.act"])
    net.train()(images)

    def logged(tag):
        return events.scalars[tag][0]

    for layer in NORMS:
        x = seen[layer][0]
        assert logged(f"activation_mean/{layer}/before") == pytest.approx(x.mean().item(), abs=1e-5)
        assert logged(f"activation_std/{layer}/before") == pytest.approx(x.std().item(), rel=1e-4)
        assert logged(f"activation_mean/{layer}/after") == pytest.approx(0.0, abs=1e-5)
        assert logged(f"activation_std/{layer}/after") == pytest.approx(1.0, abs=2e-3)
        # running_var starts at 1: the ratio is 1 / this batch's unbiased channel variance.
        ratio = 1.0 / x.transpose(0, 1).flatten(1).var(dim=1)
        assert logged(f"bn_var_ratio/{layer}/train") == pytest.approx(ratio.mean().item(), rel=1e-4)
        histogram = events.histograms[f"bn/{layer}/var_ratio_train"][0]
        assert histogram.sum == pytest.approx(ratio.sum().item(), rel=1e-4)
        assert histogram.min == pytest.approx(ratio.min().item(), rel=1e-4)
    zero_fraction = (seen["features.0.act"][1] == 0).float().mean().item()
    assert logged("relu_zero_fraction/features.0.act") == pytest.approx(zero_fraction, abs=1e-6)


@pytest.mark.slow
def test_validation_pictures_and_accuracies_match_the_last_checkpoint(run, events):
    """At the last epoch's validation the weights are those of last.ckpt: per-class accuracy,
    the variance ratio (on the first validation images) and the picture's right/wrong colours
    follow from them."""
    cfg = saved_config(run.run_dir)
    net = trained_network(run.run_dir, "last.ckpt")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    images, labels = datamodule.val_set.images, datamodule.val_set.labels
    seen = capture(net, ["features.1.norm"])
    with torch.no_grad():
        predicted = net(normalized(images, cfg)).argmax(dim=1)
        net(normalized(images[: min(cfg.data.eval_batch_size, 256)], cfg))  # as the probe does
    step = VAL_STEPS[-1]
    for digit in range(10):
        mine = predicted[labels == digit] == digit
        logged = events.scalars[f"val_class_acc/{digit}"][step]
        assert logged == pytest.approx(mine.float().mean().item(), abs=1e-6)

    running_var = net.features[1].norm.running_var
    ratio = running_var / seen["features.1.norm"][0].transpose(0, 1).flatten(1).var(dim=1)
    histogram = events.histograms["bn/features.1.norm/var_ratio_val"][step]
    assert histogram.num == 16 and histogram.sum == pytest.approx(ratio.sum().item(), rel=1e-4)
    assert events.scalars["bn_var_ratio/features.1.norm/val"][step] == pytest.approx(
        ratio.mean().item(), rel=1e-4
    )

    grid = np.asarray(Image.open(io.BytesIO(events.images["val/predictions"][step])).convert("RGB"))
    r, g = grid[..., 0].astype(int), grid[..., 1].astype(int)
    red_text, green_text = (r > 200) & (g < 130), (g > 180) & (r < 130)
    shown = slice(0, 32)  # the grid shows the first 32 validation images
    wrong = int((predicted[shown] != labels[shown]).sum())
    assert red_text.any() == (wrong > 0) and green_text.any() == (wrong < 32)
    matrix = Image.open(io.BytesIO(events.images["val/confusion_matrix"][step]))
    assert matrix.mode in ("RGB", "RGBA") and min(matrix.size) > 200


@pytest.mark.slow
def test_model_summary_and_resolved_config_are_saved_not_printed(run):
    net = build_network(saved_config(run.run_dir).model)
    summary = (run.run_dir / "model_summary.txt").read_text()
    listed = [line.split()[2] for line in summary.splitlines() if line.split()[:1] != ["|"]
              and "|" in line and line.split()[0].isdigit()]  # fmt: skip
    assert [n for n in listed if n.startswith("net.")] == [
        f"net.{name}" for name, _ in net.named_modules() if name
    ]
    assert "Total params" in summary
    # Printed only with verbose=true: the console is about the experiment.
    assert "net.features.0.norm" not in run.stdout and "model summary" not in run.stdout

    resolved = yaml.safe_load((run.run_dir / "config_resolved.yaml").read_text())
    saved = saved_config(run.run_dir)
    saved.name = run.results["name"]  # the runner fills in the run's name (null = automatic)
    expected = OmegaConf.to_container(saved, resolve=True)
    assert resolved == expected and resolved["data"]["seed"] == 0


def test_gradient_norm_and_update_ratio_match_one_sgd_step(tmp_path):
    """A real Trainer, one plain SGD step: the logged gradient norms and update ratios equal
    those of the same step taken by hand; also for the from-scratch batch norm."""
    torch.manual_seed(0)
    net = SeedCNN(norm=ScratchBatchNorm2d)  # no dropout: the step is deterministic
    reference = copy.deepcopy(net)
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    lr = 0.1
    module = ImageClassifier(net, optimizer=partial(torch.optim.SGD, lr=lr))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        logger=TensorBoardLogger(tmp_path, name="tb", version=""),
        callbacks=[NetworkDiagnostics(every_n_steps=1)],
    )  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=16))
    events = Events(tmp_path / "tb")

    F.cross_entropy(reference.train()(images), labels).backward()
    modules = dict(reference.named_modules())
    for layer in WEIGHTED:
        params = list(modules[layer].parameters(recurse=False))
        grad = torch.cat([p.grad.flatten() for p in params]).norm().item()
        weight = torch.cat([p.detach().flatten() for p in params]).norm().item()
        assert events.scalars[f"grad_norm/{layer}"][0] == pytest.approx(grad, rel=1e-4)
        assert events.scalars[f"update_ratio/{layer}"][0] == pytest.approx(
            lr * grad / weight, rel=1e-3
        )
    gamma_after = reference.features[0].norm.weight - lr * reference.features[0].norm.weight.grad
    histogram = events.histograms["bn/features.0.norm/gamma"][0]
    assert histogram.sum == pytest.approx(gamma_after.sum().item(), rel=1e-5)
    # The hooks are gone once training ends.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


class RunningVarianceNorm(nn.Module):
    """A batch norm of nobody's class list: known to the diagnostics by its running_var."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.register_buffer("running_var", self.bn.running_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


@pytest.mark.parametrize("bn_type", [nn.BatchNorm2d, ScratchBatchNorm2d, RunningVarianceNorm])
def test_validation_variance_ratio_uses_the_first_images_of_each_epoch(bn_type):
    bn = bn_type(4)
    bn.running_var.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))
    net = nn.Sequential(OrderedDict(norm=bn)).eval()
    layers = WatchedLayers.of(net)
    assert list(layers.batch_norms)[:1] == ["norm"] and list(layers.norms)[:1] == ["norm"]
    probe = ValidationProbe(layers, max_images=12)
    probe.active = True
    scale = torch.tensor([1.0, 2.0, 3.0, 0.5]).view(1, 4, 1, 1)
    first, later = torch.randn(20, 4, 6, 6) * scale + 3.0, torch.randn(20, 4, 6, 6)
    net(first)
    net(later)
    expected = bn.running_var / first[:12].transpose(0, 1).flatten(1).var(dim=1)
    torch.testing.assert_close(probe.take_var_ratios()["norm"], expected, rtol=1e-5, atol=0)
    net(later)  # the next epoch starts afresh
    expected = bn.running_var / later[:12].transpose(0, 1).flatten(1).var(dim=1)
    torch.testing.assert_close(probe.take_var_ratios()["norm"], expected, rtol=1e-5, atol=0)


def test_prediction_grid_reaches_tensorboard_intact(tmp_path):
    """Written as the callback writes it (add_image, HWC) and read back by TensorBoard's own
    reader: lossless, so the right/wrong label colours survive exactly."""
    from torch.utils.tensorboard import SummaryWriter

    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    images[:, :, :16] = 200
    grid = prediction_grid(images, ["1", "2", "3", "4"], ["1", "7", "3", "9"], columns=2)
    with SummaryWriter(tmp_path) as writer:
        writer.add_image("val/predictions", grid, 7, dataformats="HWC")
    stored = np.asarray(Image.open(io.BytesIO(Events(tmp_path).images["val/predictions"][7])))
    np.testing.assert_array_equal(stored[..., :3], grid)
    colours = {tuple(c) for c in grid.reshape(-1, 3)}
    assert any(c[0] > 200 and c[1] < 130 for c in colours)  # red: a wrong prediction
    assert any(c[1] > 180 and c[0] < 130 for c in colours)  # green: a right one


def test_diagnostics_are_on_by_default_and_can_be_tuned_or_switched_off(compose_cfg):
    def diagnostics(overrides):
        callbacks = instantiate_all(compose_cfg(overrides).callbacks)
        return [c for c in callbacks if isinstance(c, NetworkDiagnostics)]

    (default,) = diagnostics([])
    assert default.every_n_steps == 50 and default.every_n_epochs == 5
    (tuned,) = diagnostics(["callbacks.diagnostics.every_n_steps=7"])
    assert tuned.every_n_steps == 7
    assert diagnostics(["callbacks/diagnostics=none"]) == []


def test_without_a_tensorboard_logger_the_callback_warns_and_stays_out_of_the_way():
    module = ImageClassifier(SeedCNN(), optimizer=partial(torch.optim.SGD, lr=0.1))
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[NetworkDiagnostics(every_n_steps=1)],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="needs a TensorBoard logger"):
        trainer.fit(module, DataLoader(data, batch_size=8))
    assert trainer.global_step == 1


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"every_n_steps": -1}, "every_n_steps=-1"),
        ({"every_n_epochs": -5}, "every_n_epochs=-5"),
        ({"every_n_steps": 0.5}, "every_n_steps=0.5"),
        ({"num_images": -1}, "num_images=-1"),
    ],
)
def test_settings_that_cannot_work_name_the_config_key_and_the_fix(kwargs, key):
    with pytest.raises(ConfigError) as info:
        NetworkDiagnostics(**kwargs)
    message = str(info.value)
    name = key.split("=")[0]
    assert message.startswith(f"callbacks.diagnostics.{key}: use ")
    assert (
        f"e.g. callbacks.diagnostics.{name}=" in message and "callbacks/diagnostics=none" in message
    )
    NetworkDiagnostics(every_n_steps=0, every_n_epochs=0, num_images=0)  # 0: never


def test_num_images_0_writes_no_prediction_grid_and_everything_else(tmp_path):
    # Before: an empty grid reached TensorBoard's PNG writer ("cannot write empty image").
    torch.manual_seed(0)
    module = ImageClassifier(SeedCNN(), optimizer=partial(torch.optim.SGD, lr=0.1))
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
        logger=TensorBoardLogger(tmp_path, name="tb", version=""),
        callbacks=[NetworkDiagnostics(every_n_steps=1, every_n_epochs=1, num_images=0)],
    )  # fmt: skip
    loader = DataLoader(data, batch_size=8)
    trainer.fit(module, loader, loader)
    events = Events(tmp_path / "tb")
    assert "val/confusion_matrix" in events.images and "val/predictions" not in events.images
    assert any(tag.startswith("val_class_acc/") for tag in events.scalars)


class _TitlesAtValidationEnd(L.Callback):
    def __init__(self) -> None:
        self.titles: list[str] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.titles.append(confusion_title(trainer, 0.5))


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_confusion_matrix_title_counts_epochs_as_the_console_does():
    """The last epoch of `trainer.max_epochs=2` is "epoch 2/2" on the console: the confusion
    matrix drawn after it says so too (Lightning's current_epoch is 1 there)."""
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,))), batch_size=4)
    recorder = _TitlesAtValidationEnd()
    trainer = L.Trainer(
        max_epochs=2, callbacks=[recorder], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(_Tiny(), loader, loader)
    assert recorder.titles == [
        "epoch 1/2: validation accuracy 0.500", "epoch 2/2: validation accuracy 0.500"
    ]  # fmt: skip
