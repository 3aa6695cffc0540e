"""Every config file composes through Hydra and instantiates into a working object. Tests are
parametrized over the files themselves, so a new choice is tested by being added."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import CONF, config_options, write_image_folder
from hydra.utils import get_class, instantiate
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.plugins import TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from normlab.runner.build import build_module, build_network, build_trainer, instantiate_all
from normlab.runner.checks import check_run
from normlab.runner.rundir import plan_run


def test_config_groups_hold_at_least_the_documented_choices():
    """The choices README and DESIGN name; new ones are tested by the tests below."""
    assert set(config_options("data")) >= {"cifar10", "digits", "synthetic"}
    assert set(config_options("model")) >= {"cnn", "cnn_bn", "cnn_dropout", "cnn_bn_dropout"}
    norms = {"none", "batch", "scratch_batch", "group", "layer", "instance"}
    assert set(config_options("model/norm")) >= norms
    assert set(config_options("model/dropout")) >= {"none", "standard", "channel", "scratch"}
    assert set(config_options("trainer")) >= {"default", "cpu", "gpu", "ddp", "ddp_cpu"}


def test_default_config_has_the_contract_keys(compose_cfg):
    cfg = compose_cfg()
    for key in ("seed", "data.batch_size", "trainer.max_epochs", "optimizer.lr", "model.dropout.p"):
        assert OmegaConf.select(cfg, key) is not None, key
    for key in ("compile", "channels_last"):  # LightningModule options, outside `model`
        assert cfg[key] is False and key not in cfg.model
    assert cfg.data._target_.endswith("CIFAR10DataModule")
    assert cfg.model.norm._target_ == "torch.nn.BatchNorm2d"


@pytest.mark.parametrize("group", ["model/norm", "model/dropout", "scheduler"])
def test_every_layer_and_schedule_choice_is_a_partial_target(group):
    """One construction convention: a `_target_` with `_partial_: true` (or nothing at all)."""
    for option in config_options(group):
        node = OmegaConf.load(CONF / group / f"{option}.yaml") or {}
        assert not node or (node.get("_target_") and node.get("_partial_") is True), option


@pytest.mark.parametrize("data", config_options("data"))
def test_data_configs_instantiate(compose_cfg, data, tmp_path):
    cfg = compose_cfg([f"data={data}"])
    if hasattr(get_class(cfg.data._target_), "class_names_in"):  # reads class folders
        cfg.data.root = str(write_image_folder(tmp_path / "images"))
    dm = instantiate(cfg.data)
    assert isinstance(dm, L.LightningDataModule) and dm.batch_size > 0 and dm.class_names


@pytest.mark.parametrize("model", config_options("model"))
def test_model_configs_build_networks_that_classify_cifar_shaped_batches(compose_cfg, model):
    net = build_network(compose_cfg([f"model={model}"]).model)
    assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("optimizer", config_options("optimizer"))
@pytest.mark.parametrize("scheduler", config_options("scheduler"))
def test_optimizer_and_scheduler_configs(compose_cfg, optimizer, scheduler):
    cfg = compose_cfg([f"optimizer={optimizer}", f"scheduler={scheduler}", "model=cnn"])
    module = build_module(cfg, build_network(cfg.model))
    opt = module.optimizer_factory(module.parameters())
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    if module.scheduler_factory is None:
        assert not cfg.scheduler
        return
    schedule = module.scheduler_factory(opt, total_steps=100)
    for _ in range(99):
        opt.step()
        schedule.step()
    assert schedule.get_last_lr()[0] < cfg.optimizer.lr  # annealed by the end


# What each trainer option exists for: (accelerator, devices, DDP, SyncBatchNorm). "gpu" is
# built for the CPU on a machine without one; its other settings must still take effect.
TRAINERS = {
    "default": ("auto", 1, False, False),
    "cpu": ("cpu", 1, False, False),
    "gpu": ("gpu", 1, False, False),
    "ddp": ("gpu", "auto", True, True),
    "ddp_cpu": ("cpu", 2, True, False),
    "ddp_sim": ("cpu", 2, True, False),
}


@pytest.mark.parametrize("trainer", config_options("trainer"))
def test_trainer_configs(compose_cfg, tmp_path, trainer):
    """Every trainer option builds the runner's real Trainer with its own settings."""
    assert trainer in TRAINERS, f"add conf/trainer/{trainer}.yaml's purpose to TRAINERS"
    accelerator, devices, distributed, sync_batchnorm = TRAINERS[trainer]
    cfg = compose_cfg([f"trainer={trainer}", "logger=none"], output_dir=tmp_path)
    assert cfg.trainer.accelerator == accelerator and cfg.trainer.devices == devices
    gpu = torch.cuda.is_available() and accelerator in ("gpu", "auto")
    if accelerator == "gpu" and not gpu:
        cfg.trainer.accelerator = "cpu"
    built = build_trainer(cfg)
    assert isinstance(built.accelerator, CUDAAccelerator if gpu else CPUAccelerator)
    if devices == "auto":
        devices = torch.cuda.device_count() if gpu else 1
    assert built.num_devices == devices
    assert isinstance(built.strategy, DDPStrategy) == distributed
    layer_sync = getattr(built.strategy, "_layer_sync", None)
    assert isinstance(layer_sync, TorchSyncBatchNorm) == sync_batchnorm
    assert built.max_epochs == cfg.trainer.max_epochs == 20
    assert built.precision == "32-true"


@pytest.mark.parametrize("logger", config_options("logger"))
def test_logger_and_callback_configs(compose_cfg, tmp_path, logger):
    cfg = compose_cfg([f"logger={logger}"], output_dir=tmp_path)
    loggers = instantiate_all(cfg.get("logger"))
    assert len(loggers) == len(cfg.get("logger") or {})
    trainer = build_trainer(cfg)
    names = {type(c).__name__ for c in trainer.callbacks}
    assert {"ModelCheckpoint", "MetricHistory", "TerminalProgressBar"} <= names
    assert ("LearningRateMonitor" in names) == bool(loggers)


@pytest.mark.parametrize(
    "choice", [f"{g}={o}" for g in ("experiment", "debug") for o in config_options(g)]
)
def test_experiment_and_debug_configs_compose(compose_cfg, choice):
    """Each packaged option sets something (an empty file would pass a build alone), and what
    it sets passes the run's checks."""
    base = compose_cfg(["data=digits"])
    cfg = compose_cfg([choice, "data=digits"])
    assert settings(cfg) != settings(base), f"{choice} changes nothing"
    check_run(plan_run(cfg, []))
    build_network(cfg.model)


def settings(cfg) -> dict:
    """The composed config less Hydra's record of how it was composed (choices, overrides)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    for key in ("runtime", "overrides", "job"):
        container.get("hydra", {}).pop(key, None)
    return container


def test_deeper_models_take_every_norm(compose_cfg):
    for norm in config_options("model/norm"):
        cfg = compose_cfg(["model=vgg11_slim", f"model/norm={norm}", "model/dropout=standard"])
        assert build_network(cfg.model).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
