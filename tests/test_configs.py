"""Every config file composes through Hydra and instantiates into a working object."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from conftest import CONF
from hydra.utils import instantiate

from normlab.optim import build_scheduler
from normlab.run import build_module, build_network, instantiate_all


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_config_groups_hold_the_documented_choices():
    assert options("data") == ["cifar10", "digits", "synthetic"]
    assert {"cnn", "cnn_bn", "cnn_dropout", "cnn_bn_dropout", "vgg11"} <= set(options("model"))
    assert options("model/norm") == ["batch", "group", "instance", "layer", "none", "scratch_batch"]
    assert options("model/dropout") == ["channel", "none", "scratch", "standard"]
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu"} <= set(options("trainer"))


def test_default_config_has_the_contract_keys(compose_cfg):
    cfg = compose_cfg()
    for key in ("seed", "data.batch_size", "trainer.max_epochs", "optimizer.lr", "model.dropout.p"):
        assert cfg_select(cfg, key) is not None, key
    assert cfg.data._target_.endswith("CIFAR10DataModule") and cfg.model.norm.name == "batch"


def cfg_select(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


@pytest.mark.parametrize("data", options("data"))
def test_data_configs_instantiate(compose_cfg, data):
    dm = instantiate(compose_cfg([f"data={data}"]).data)
    assert isinstance(dm, L.LightningDataModule) and dm.batch_size > 0


@pytest.mark.parametrize(
    ("model", "norm", "dropout"),
    [
        *[(m, None, None) for m in options("model")],
        *itertools.product(["cnn"], options("model/norm"), options("model/dropout")),
        *[("vgg11_slim", n, "standard") for n in options("model/norm")],
    ],
)
def test_model_configs_build_networks_that_classify_cifar_shaped_batches(
    compose_cfg, model, norm, dropout
):
    overrides = [f"model={model}"]
    overrides += [f"model/norm={norm}"] if norm else []
    overrides += [f"model/dropout={dropout}"] if dropout else []
    cfg = compose_cfg(overrides)
    net = build_network(cfg.model)
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 10)


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_configs(compose_cfg, optimizer, scheduler):
    cfg = compose_cfg([f"optimizer={optimizer}", f"scheduler={scheduler}", "model=cnn"])
    module = build_module(cfg, build_network(cfg.model))
    opt = module.optimizer_factory(module.parameters())
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    sched = build_scheduler(opt, dict(cfg.scheduler), total_steps=100)
    assert (sched is None) == (scheduler == "none")


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs(compose_cfg, tmp_path, trainer):
    cfg = compose_cfg([f"trainer={trainer}"], output_dir=tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.get("sync_batchnorm", False) == (trainer == "ddp")
        return  # composes; instantiating needs a GPU
    assert isinstance(instantiate(cfg.trainer, logger=False), L.Trainer)


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_and_callback_configs(compose_cfg, tmp_path, logger):
    cfg = compose_cfg([f"logger={logger}"], output_dir=tmp_path)
    loggers = instantiate_all(cfg.get("logger"))
    assert len(loggers) == {"none": 0, "many": 2}.get(logger, 1)
    callbacks = instantiate_all(cfg.callbacks)
    assert {type(c).__name__ for c in callbacks} >= {
        "ModelCheckpoint",
        "MetricHistory",
        "TerminalProgressBar",
    }


@pytest.mark.parametrize("group", ["experiment", "debug"])
def test_experiment_and_debug_configs_compose(compose_cfg, group):
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}", "data=digits"])
        build_network(cfg.model)


def test_seed_lesson_is_the_lessons_recipe(compose_cfg):
    cfg = compose_cfg(["experiment=seed_lesson"])
    assert cfg.data.batch_size == 4 and cfg.trainer.max_epochs == 10
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        0.001,
        0.9,
        0.0,
    )
    assert list(cfg.data.mean) == [0.5] * 3 and list(cfg.data.std) == [0.5] * 3
    assert cfg.data.crop_padding == 0 and not cfg.data.hflip and cfg.scheduler.name == "none"
    assert compose_cfg(["experiment=seed_lesson", "model=cnn_bn"]).model.norm.name == "batch"
