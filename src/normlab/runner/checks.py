"""The checks of a run's values, before anything is built: one message per mistake, naming
the key and the fix, instead of a traceback from deep inside Lightning or PyTorch minutes
into a run. `check_run` is the whole of it: values, keys (with did-you-mean), DDP inside
sweeps, the network the config describes (constructed on the meta device: real widths, no
memory, no weights) and the checkpoint it would start from. No data is read.

Called from one place, `normlab.runner.prepare.checked_plan`: for a single run by the
`Preflight` Hydra callback (before Hydra creates the run directory), for a sweep's job or a
call from Python as the run is prepared.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normlab.errors import ConfigError
from normlab.runner.build import build_network_or_error
from normlab.runner.hints import unknown_override_hints
from normlab.runner.number_rules import check_numbers
from normlab.runner.rundir import RunPlan, check_architecture, load_checkpoint
from normlab.runner.targets import accepted_parameters, check_callbacks, check_keys

# Importable from here as before (tests, evaluate.py, cli.py).
__all__ = ["accepted_parameters", "check_keys", "unknown_override_hints"]

# Lightning's seed_everything accepts 0 .. 2**32 - 1 (numpy's seed range).
MAX_SEED = 2**32 - 1
# Every data module loads images as RGB.
IMAGE_CHANNELS = 3
# The side of the images of the datasets that have no data.image_size (CIFAR-10, digits):
# the size normlab's networks are built for.
IMAGE_SIZE = 32
_ABSENT = object()


def check_run(plan: RunPlan, multirun: bool = False, launcher: str = "") -> nn.Module:
    """Raise ConfigError for the first thing in the planned run that cannot work.

    `multirun` and `launcher` (Hydra's launcher `_target_`) describe how the run was started,
    for the checks on DDP inside sweeps. Returns the network on the meta device.
    """
    cfg = plan.config
    check_unset(cfg)
    check_values(cfg)
    check_classes(cfg)
    check_distributed(cfg, multirun, launcher)
    check_keys(cfg)
    check_callbacks(cfg)
    net = build_network_or_error(cfg.model, device="meta")  # shapes only, no memory
    check_image_size(cfg, net)
    if plan.checkpoint is not None:
        checkpoint = load_checkpoint(plan.checkpoint, plan.checkpoint_key)
        check_architecture(checkpoint, net, plan.checkpoint, plan.checkpoint_key)
    return net


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


def check_unset(cfg: DictConfig) -> None:
    """Settings with no default (`???` in their YAML) that the command line did not give."""
    missing = missing_keys(cfg)
    if missing:
        key = missing[0]
        hint = " (the folder with train/<class>/<images>)" if key == "data.root" else ""
        raise ConfigError(
            f"{key} is not set: it has no default{hint}. Give it on the command line, "
            f"e.g. python train.py ... {key}=<value>."
        )


def missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Paths of the `???` values, without resolving interpolations (the `hydra:` ones are
    not resolvable before the run starts)."""
    found = []
    for key in node:
        if prefix == "" and key == "hydra":
            continue
        if OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig):
            found += missing_keys(node[key], f"{prefix}{key}.")
    return found


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


def check_values(cfg: DictConfig) -> None:
    positive_int(cfg, "data.batch_size", "images per step, per process under DDP", 32)
    positive_int(cfg, "data.eval_batch_size", "images per evaluation batch", 1000)
    count_or_fraction(cfg, "data.val_size", "training images held out for validation", 5000)
    if OmegaConf.select(cfg, "data.test_size") is not None:
        count_or_fraction(cfg, "data.test_size", "images held out for testing", 1000)
    if OmegaConf.select(cfg, "data.train_size") is not None:
        positive_int(cfg, "data.train_size", "training images kept (null = all)", 10000)
    positive_int(cfg, "trainer.max_epochs", "passes over the training set", 10)
    lr = OmegaConf.select(cfg, "optimizer.lr")
    if not is_number(lr) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(
            f"optimizer.lr={lr!r}: the learning rate must be a positive number (finite), "
            "e.g. optimizer.lr=0.05 (SGD) or optimizer.lr=1e-3 (AdamW)."
        )
    threads = cfg.get("threads")
    if threads is not None and (
        not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
    ):
        raise ConfigError(
            f"threads={threads!r}: torch's threads for this run must be a positive integer, "
            "e.g. threads=4, or null (the default: chosen from the cores the run may use, "
            "logged as it starts)."
        )
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"seed={seed!r}: the seed must be an integer from 0 to {MAX_SEED} (the range "
            "Lightning's seed_everything accepts), e.g. seed=0."
        )
    check_statistics(cfg)
    positive_int_if_given(cfg, "data.image_size", "the side of the square images, in pixels", 32)
    check_training_batches(cfg)
    check_numbers(cfg)  # every other number: finite, in its key's range, of its declared type


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


def check_training_batches(cfg: DictConfig) -> None:
    """A run must have at least one training batch: training drops the last partial batch,
    so fewer training images than data.batch_size train nothing."""
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches")
    if limit is not None and (not is_number(limit) or limit <= 0):
        raise ConfigError(
            f"trainer.limit_train_batches={limit!r}: the run would train on no batch at all. "
            "Use a positive number of batches (e.g. 10) or fraction (e.g. 0.1), or leave it "
            "out to train on every batch."
        )
    train_size = OmegaConf.select(cfg, "data.train_size")
    batch_size = OmegaConf.select(cfg, "data.batch_size")
    if isinstance(train_size, int) and isinstance(batch_size, int) and train_size < batch_size:
        raise ConfigError(
            f"data.train_size={train_size} is smaller than data.batch_size={batch_size}: "
            "training drops the last incomplete batch (a batch of one breaks batch norm), so "
            f"the run would train on nothing. Use data.batch_size={max(train_size, 2)} or "
            f"data.train_size={batch_size} or more."
        )


def positive_int_if_given(cfg: DictConfig, key: str, meaning: str, example: int) -> None:
    if OmegaConf.select(cfg, key) is not None:
        positive_int(cfg, key, meaning, example)


def positive_int(cfg: DictConfig, key: str, meaning: str, example: int) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"{key}={value!r}: must be a positive integer ({meaning}), e.g. {key}={example}."
        )


def count_or_fraction(cfg: DictConfig, key: str, meaning: str, example: int) -> None:
    value = OmegaConf.select(cfg, key)
    if is_number(value) and 0 < value < 1:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"{key}={value!r}: must be a positive number of images or a fraction between 0 "
            f"and 1 ({meaning}), e.g. {key}={example} or {key}=0.1."
        )


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_distributed(cfg: DictConfig, multirun: bool, launcher: str) -> None:
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="auto"))
    # Lightning's "ddp" starts the other ranks by re-running this very command line; with
    # --multirun in it, every rank would run the whole sweep again. A SLURM launcher starts
    # the ranks itself (one task per device), so nothing is re-run there.
    relaunches = strategy.startswith("ddp") and "spawn" not in strategy
    if multirun and relaunches and "submitit" not in launcher:
        raise ConfigError(
            f"trainer.strategy={strategy} inside --multirun: DDP re-runs the command line "
            "once per process, so every process would re-run the whole sweep. Sweep with "
            "trainer.strategy=ddp_spawn on one machine, or with hydra/launcher=slurm (one "
            "SLURM job per run); single runs (no -m) can use trainer=ddp as it is."
        )
    if "submitit" in launcher and "slurm" in launcher.lower():
        devices = OmegaConf.select(cfg, "trainer.devices")
        if not isinstance(devices, int) or devices < 1:
            raise ConfigError(
                f"trainer.devices={devices!r} with hydra/launcher=slurm: SLURM starts one task "
                "per device and needs the count up front; set trainer.devices to the GPUs per "
                "node, e.g. trainer.devices=4."
            )
