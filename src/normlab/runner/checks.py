"""The checks of a run, before anything is built: one message per mistake, naming the key and
the fix, instead of a traceback from deep inside Lightning or PyTorch minutes into a run.
`check_run` is the whole of it: the config's values (`values.check_config` first, which
imports no class), then `check_planned`: keys (did-you-mean), the classes, the network the
config describes (constructed on the meta device: real widths, no memory) and the checkpoint
it would start from. No data is read.

Called once per run: by `prepare.prepare_run` for a sweep's job; for a single run,
`preflight.check_single_run` runs its two halves apart (values before torch is imported,
then `check_planned`), before Hydra creates the run's directory.
"""

from __future__ import annotations

import inspect
import math

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normlab.errors import ConfigError
from normlab.runner.build import build_network_or_error
from normlab.runner.hints import unknown_override_hints
from normlab.runner.number_rules import check_declared_types
from normlab.runner.rundir import RunPlan, check_architecture, load_checkpoint
from normlab.runner.targets import accepted_parameters, check_callbacks, check_keys
from normlab.runner.values import (
    check_config,
    check_distributed,
    check_unset,
    is_number,
)

# Importable from here as before (tests, evaluate.py, cli.py).
__all__ = [
    "accepted_parameters",
    "check_distributed",
    "check_keys",
    "check_unset",
    "unknown_override_hints",
]

# Every data module loads images as RGB.
IMAGE_CHANNELS = 3
# The side of the images of the datasets that have no data.image_size (CIFAR-10, digits):
# the size normlab's networks are built for.
IMAGE_SIZE = 32
_ABSENT = object()


def check_run(plan: RunPlan, multirun: bool = False, launcher: str = "") -> nn.Module:
    """Raise ConfigError for the first thing in the planned run that cannot work: its values
    (`values.check_config`), then `check_planned`. Returns the network on the meta device.

    `multirun` and `launcher` (Hydra's launcher `_target_`) describe how the run was started,
    for the checks on DDP inside sweeps.
    """
    check_config(plan.config, multirun, launcher)  # first: no class imported (values.py)
    return check_planned(plan)


def check_planned(plan: RunPlan) -> nn.Module:
    """What `values.check_config` leaves: the classes, keys, network and checkpoint."""
    cfg = plan.config
    check_classes_and_keys(cfg)
    check_callbacks(cfg)
    net = build_network_or_error(cfg.model, device="meta")  # shapes only, no memory
    check_image_size(cfg, net)
    if plan.checkpoint is not None:
        checkpoint = load_checkpoint(plan.checkpoint, plan.checkpoint_key)
        check_architecture(checkpoint, net, plan.checkpoint, plan.checkpoint_key)
    return net


def check_settings(cfg: DictConfig, multirun: bool = False, launcher: str = "") -> None:
    """Every setting of `cfg`, before anything is built (eval.py; a run's are checked by
    `values.check_config` and then `check_run`)."""
    check_config(cfg, multirun, launcher)  # first: no class imported (values.py)
    check_classes_and_keys(cfg)


def check_classes_and_keys(cfg: DictConfig) -> None:
    """What needs the classes the config names: the statistics the data module takes, the
    types the classes declare, the classes found on disk, and the keys (did-you-mean)."""
    check_statistics(cfg)
    check_declared_types(cfg)
    check_classes(cfg)
    check_keys(cfg)


def check_image_size(cfg: DictConfig, net: nn.Module) -> None:
    """The network (on the meta device: shapes only) takes images of data.image_size.

    SeedCNN's classifier expects the 5x5 maps of a 32x32 image, VGG's the 1x1 maps left after
    its pools: another size fails at the first batch, after the run directory was written.
    """
    size = OmegaConf.select(cfg, "data.image_size")
    if size is None:
        return  # a dataset of its own fixed size (CIFAR-10, digits: 32x32)
    err = forward_error(net, size)
    # A network that fails at the size it was built for too cannot run on the meta device at
    # all (a researcher's own layer): that says nothing about the size.
    if err is None or size == IMAGE_SIZE or forward_error(net, IMAGE_SIZE) is not None:
        return
    first_line = (str(err).splitlines() or [""])[0].rstrip(".")
    raise ConfigError(
        f"data.image_size={size}: the network ({type(net).__name__}) cannot take {size}x{size} "
        f"images ({type(err).__name__}: {first_line}). Its layers are sized for one input "
        f"size, and it takes {IMAGE_SIZE}x{IMAGE_SIZE} images (CIFAR-10's size): use "
        f"data.image_size={IMAGE_SIZE}, or a network whose classifier adapts to the image size."
    )


def forward_error(net: nn.Module, size: int) -> Exception | None:
    """What a forward pass of one `size`x`size` RGB image raises on the meta device (None when
    it passes). In eval mode: a batch of one is fine for batch norm there."""
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.empty(1, IMAGE_CHANNELS, size, size, device="meta"))
    except Exception as err:
        return err
    finally:
        net.train(training)
    return None


def check_classes(cfg: DictConfig) -> None:
    """A dataset that finds its classes on disk (data=image_folder) must have as many as the
    network has outputs; the loss would otherwise fail on the first out-of-range label."""
    target = OmegaConf.select(cfg, "data._target_")
    try:
        data_class = get_class(target) if target else None
    except Exception:
        return  # check_keys names an unimportable target
    if not hasattr(data_class, "class_names_in"):
        return
    names = data_class.class_names_in(cfg.data.root)
    num_classes = OmegaConf.select(cfg, "model.num_classes")
    if num_classes != len(names):
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise ConfigError(
            f"model.num_classes={num_classes} but data.root={cfg.data.root} holds "
            f"{len(names)} classes ({shown}). Set model.num_classes={len(names)}."
        )


def check_statistics(cfg: DictConfig) -> None:
    """data.mean and data.std: one finite value per image channel (std above 0). null only
    where the data module computes them from the training images (data=image_folder), and
    then for both or neither: it uses given statistics only as a pair."""
    computes = computes_statistics(cfg)
    null_hint = "; null computes it from the training images" if computes else ""
    given = {}
    for key in ("data.mean", "data.std"):
        values = OmegaConf.select(cfg, key, default=_ABSENT)
        if values is _ABSENT:
            continue  # the data module's own default
        given[key] = values
        if values is None:
            if computes is False:
                raise ConfigError(
                    f"{key}=null: {cfg.data._target_} does not compute normalization "
                    f"statistics; give one value per image channel, e.g. {key}=[0.5,0.5,0.5] "
                    "(its config file has the dataset's own)."
                )
            continue
        values = list(values) if OmegaConf.is_list(values) else [values]
        bad = [v for v in values if not is_number(v) or not math.isfinite(v)]
        if key == "data.std":
            bad += [v for v in values if is_number(v) and v <= 0]
        if bad:
            raise ConfigError(
                f"{key}={values}: every channel's value must be a finite number"
                + (" above 0 (images are divided by it)" if key == "data.std" else "")
                + f", e.g. {key}=[0.5,0.5,0.5]{null_hint}."
            )
        if len(values) != IMAGE_CHANNELS:
            raise ConfigError(
                f"{key}={values}: give one value per image channel ({IMAGE_CHANNELS}: red, "
                f"green, blue; every dataset is loaded as RGB), e.g. {key}=[0.5,0.5,0.5]"
                f"{null_hint}."
            )
    # Left out, they default to null there too.
    mean, std = given.get("data.mean"), given.get("data.std")
    if computes and (mean is None) != (std is None):
        lone, other = ("data.mean", "data.std") if std is None else ("data.std", "data.mean")
        raise ConfigError(
            f"{lone} is given but {other} is null: {cfg.data._target_} uses given statistics "
            f"only as a pair, and would compute both from the training images, ignoring "
            f"{lone}. Give both ({lone}=... {other}=..., one value per channel) or neither."
        )


def computes_statistics(cfg: DictConfig) -> bool | None:
    """Whether the data module computes data.mean/std when they are null (its `mean`
    parameter defaults to None); None when its class cannot be imported (check_keys says
    so)."""
    try:
        data_class = get_class(str(OmegaConf.select(cfg, "data._target_")))
        parameter = inspect.signature(data_class.__init__).parameters.get("mean")
    except Exception:
        return None
    return parameter is not None and parameter.default is None
