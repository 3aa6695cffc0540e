"""From config nodes to objects: every `_target_` is instantiated here, nowhere else.

The network's norm and dropout are `_partial_` nodes, so instantiating `cfg.model` hands the
network two factories (`norm(num_channels)`, `dropout()`). One key is not a layer argument:
`model.dropout.placement` says where the network puts dropout, and goes to the network as
`dropout_placement`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normlab.errors import ConfigError, NormlabError
from normlab.training import ImageClassifier, TerminalProgressBar
from normlab.training.checkpoints import AtomicCheckpointIO
from normlab.training.hooks import skip_inherited_batch_hooks
from normlab.training.profiling import NoProfiler


def network_spec(model_cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """`cfg.model` as plain values, ready for `instantiate`."""
    if isinstance(model_cfg, DictConfig):
        # Resolved in place, against the whole config: a copy (OmegaConf.create) would be cut
        # off from its root, and a model key that interpolates one outside the model
        # (`${seed}`, `${data.image_size}`) would fail to resolve.
        spec = OmegaConf.to_container(model_cfg, resolve=True)
    else:
        spec = OmegaConf.to_container(OmegaConf.create(model_cfg), resolve=True)
    dropout = spec.get("dropout")
    if isinstance(dropout, dict) and "placement" in dropout:
        spec["dropout_placement"] = dropout.pop("placement")
    return spec


def build_network(
    model_cfg: DictConfig | Mapping[str, Any], device: str | None = None
) -> nn.Module:
    """Instantiate the network of `cfg.model`. On `device="meta"` the constructors run with
    the real widths but allocate no memory and initialize nothing: the pre-run checks use it."""
    place = torch.device(device) if device else contextlib.nullcontext()
    with place:
        return instantiate(network_spec(model_cfg), _convert_="all")


# Hydra's own keys of a node, not arguments of its target.
INSTANTIATE_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


def build_network_or_error(
    model_cfg: DictConfig | Mapping[str, Any], device: str | None = None
) -> nn.Module:
    """`build_network`, any failure turned into one ConfigError that names the model setting
    at fault (`network_error`)."""
    try:
        network_spec(model_cfg)
    except Exception as err:
        # network_error reads the settings itself: one that does not resolve is said here.
        raise unresolved_error("model", err) from None
    try:
        return build_network(model_cfg, device)
    except Exception as err:
        raise network_error(model_cfg, err) from None


def construction_error(err: Exception, nodes: Mapping[str, Any]) -> ConfigError | None:
    """The one translation of a constructor refusing config values (the network's layers,
    the Trainer, a callback), or None when its message names none of them.

    Hydra wraps the error of a target in its own; the innermost one is the constructor's. A
    NormlabError already names its key. A message that starts with one of a node's
    arguments (`num_groups=4 does not divide ...`) gets that node's path in front.
    """
    if isinstance(err, NormlabError):
        return ConfigError(str(err))
    message = str(err).strip().rstrip(".")
    for path, node in nodes.items():
        for key in sorted(node if isinstance(node, dict) else (), key=len, reverse=True):
            if message.startswith(f"{key}="):
                return ConfigError(f"{path}.{message}.")
    return None


def innermost(err: Exception) -> Exception:
    """The error a target raised, under the ones Hydra wrapped it in."""
    while isinstance(err.__cause__, Exception):
        err = err.__cause__
    return err


def network_error(model_cfg: DictConfig, err: Exception) -> ConfigError:
    """One paragraph for an exception raised while building the network of `model_cfg`:
    the layer option it names, or the settings that went into the network."""
    err = innermost(err)
    spec = network_spec(model_cfg)
    nodes = {"model.norm": spec.get("norm"), "model.dropout": spec.get("dropout"), "model": spec}
    if isinstance(nodes["model.dropout"], dict):
        nodes["model.dropout"] = {**nodes["model.dropout"], "placement": None}
    if named := construction_error(err, nodes):
        return named
    settings = [
        f"{path}.{key}={value}"
        for path in ("model.norm", "model.dropout")
        for key, value in (OmegaConf.select(model_cfg, path.removeprefix("model.")) or {}).items()
        if key not in INSTANTIATE_KEYS or key == "_target_"
    ]
    return ConfigError(
        f"model: the network ({spec.get('_target_')}) cannot be built: "
        f"{type(err).__name__}: {err}. Its norm and dropout settings: "
        f"{', '.join(settings)}; `python train.py --cfg job` prints every setting."
    )


def unresolved_error(node: str, err: Exception) -> ConfigError:
    """A setting of `node` whose interpolation (`${...}`) cannot be resolved, as one paragraph."""
    first_line = (str(err).splitlines() or [""])[0]
    full_key = getattr(err, "full_key", None)
    where = f"{full_key}" if full_key else node
    return ConfigError(
        f"{where}: its value cannot be resolved ({type(err).__name__}: {first_line}). Point the "
        "interpolation at a key that exists, or give the value itself."
    )


def build_module(cfg: DictConfig, net: nn.Module) -> ImageClassifier:
    scheduler = cfg.get("scheduler")
    return ImageClassifier(
        net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler else None,
        num_classes=cfg.model.num_classes,
        compile=cfg.get("compile", False),
        channels_last=cfg.get("channels_last", False),
        hparams=hyperparameters(cfg),
    )


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The parts of the config that define the experiment, as plain values (saved in every
    checkpoint, so they must load with `torch.load(weights_only=True)`)."""
    plain = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if cfg.get(key) is not None else None
        for key in ("data", "model", "optimizer", "scheduler")
    }
    return {"seed": cfg.seed, **plain, "max_epochs": cfg.trainer.get("max_epochs")}


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a `callbacks` or `logger` group that has a `_target_`."""
    if not group:
        return []
    return [
        instantiate(node)
        for node in group.values()
        if isinstance(node, Mapping) and "_target_" in node
    ]


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the configured callbacks and loggers; checkpoints written atomically.
    Per-batch hooks are called only on the callbacks that implement them, and without a
    configured profiler the hook calls are not wrapped in one (`NoProfiler`). Settings
    Lightning refuses are a ConfigError naming them."""
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # logger=none: Lightning refuses a LearningRateMonitor with nowhere to log
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    if not any(isinstance(cb, ProgressBar) for cb in callbacks):
        # callbacks=none: Lightning would pick RichProgressBar when rich is installed, which
        # writes nothing useful into a redirected log.
        callbacks.append(TerminalProgressBar())
    for callback in callbacks:
        skip_inherited_batch_hooks(callback, L.Callback)
    try:
        return instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            plugins=[AtomicCheckpointIO()],
            **default_profiler(cfg),
        )
    except Exception as err:  # settings Lightning refuses: trainer.accelerator=gpu without one
        raise trainer_error(cfg.trainer, err) from None


def build_test_trainer(cfg: DictConfig) -> L.Trainer:
    """A Trainer that only tests (eval.py): the run's `trainer` settings with a progress bar
    and nothing that writes (no loggers, no checkpoints, no model summary); per-batch hooks
    and the profiler as in `build_trainer`. Settings Lightning refuses (`accelerator=gpu` on
    a machine without one) are a ConfigError naming them."""
    progress = TerminalProgressBar()
    skip_inherited_batch_hooks(progress, L.Callback)
    # The run's test-time measurements (BN with batch statistics, recalibrated): re-taken too.
    measurements = instantiate_all({"bn_eval": (cfg.get("callbacks") or {}).get("bn_eval")})
    try:
        return instantiate(
            cfg.trainer,
            logger=False,
            callbacks=[progress, *measurements],
            enable_checkpointing=False,
            enable_model_summary=False,
            **default_profiler(cfg),
        )
    except Exception as err:
        raise trainer_error(cfg.trainer, err) from None


def default_profiler(cfg: DictConfig) -> dict[str, Any]:
    """`profiler=NoProfiler()` unless the config names a profiler (see NoProfiler)."""
    return {"profiler": NoProfiler()} if cfg.trainer.get("profiler") is None else {}


# Trainer arguments that decide where and how it runs: what a refusal is usually about.
DEVICE_KEYS = ("accelerator", "devices", "strategy", "precision", "num_nodes")


def trainer_error(trainer_cfg: DictConfig, err: Exception) -> ConfigError:
    """One paragraph for an exception raised while instantiating the `trainer` node
    (Lightning's MisconfigurationException: "No supported gpu backend found!")."""
    err = innermost(err)
    if named := construction_error(err, {}):
        return named
    settings = ", ".join(
        f"trainer.{key}={trainer_cfg.get(key)}" for key in DEVICE_KEYS if key in trainer_cfg
    )
    first_line = (str(err).strip().splitlines() or [""])[0]
    return ConfigError(
        f"trainer: Lightning cannot set up the Trainer ({type(err).__name__}: {first_line}). "
        f"Its device settings: {settings}. Use what this machine has, e.g. "
        "trainer.accelerator=cpu trainer.devices=1 (or trainer=cpu) on a machine without a GPU."
    )


@contextlib.contextmanager
def batch_limits_named() -> Iterator[None]:
    """Lightning's refusal of a batch limit that only the loaded data shows wrong, as the
    ConfigError naming the key (the form of each limit: `values.check_batch_limits`)."""
    try:
        yield
    except (MisconfigurationException, ValueError) as err:
        if error := batch_limit_error(str(err)):
            raise error from None
        raise


def batch_limit_error(message: str) -> ConfigError | None:
    if found := re.search(r"check ([\d.]+) of the .* \* (\d+) < 1.*`(limit_\w+)`", message):
        share, batches, key = found.groups()
        loop = {"limit_train_batches": "training", "limit_val_batches": "validation"}
        one = f"{loop.get(key, 'test')} batch" + ("" if batches == "1" else "es")
        return ConfigError(
            f"trainer.{key}={share}: {share} of the {batches} {one} is less than one batch, so "
            f"that loop would run on nothing. Use trainer.{key}=1.0 (every batch) or a whole "
            f"number of batches (e.g. trainer.{key}=1), or hold out more images "
            "(data.val_size, data.test_size)."
        )
    if found := re.search(r"`val_check_interval` \((\d+)\).*training batches \((\d+)\)", message):
        interval, batches = found.groups()
        return ConfigError(
            f"trainer.val_check_interval={interval}: an epoch has only {batches} training "
            f"batches, so validation would never run. Use trainer.val_check_interval={batches} "
            "or fewer, a fraction of the epoch (e.g. 0.5), or leave it out to validate once "
            "per epoch."
        )
    return None
