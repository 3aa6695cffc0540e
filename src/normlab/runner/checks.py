"""Every check a run gets before it starts, in one place.

Each mistake a user can type gets one message that names the key and the fix, instead of a
traceback from deep inside Lightning or PyTorch minutes into a run. `check_run` is the whole
of it: values, keys (with did-you-mean), DDP inside sweeps, the network the config describes
(constructed on the meta device: real widths, no memory, no weights) and the checkpoint it
would start from. No data is read.

A single run is checked by the `Preflight` Hydra callback, before Hydra creates its directory,
so a mistake leaves nothing behind; any exception there stops the run (fail closed). A job of
a sweep is checked by `normlab.runner.train`, because swept values exist only once the job is
composed; its failure is recorded in the job's results.json and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import numbers
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normlab.errors import ConfigError, NormlabError
from normlab.files import absolute_path
from normlab.runner.build import (
    INSTANTIATE_KEYS,
    build_network_or_error,
)
from normlab.runner.console import in_multirun
from normlab.runner.continue_sweep import ENV as CONTINUE_SWEEP
from normlab.runner.number_rules import check_numbers
from normlab.runner.rundir import (
    RunPlan,
    check_architecture,
    claim_run_dir,
    holds_run,
    launcher_target,
    load_checkpoint,
    lock_folder,
    plan_run,
    secondary_rank,
    walk_targets,
)

# Lightning's seed_everything accepts 0 .. 2**32 - 1 (numpy's seed range).
MAX_SEED = 2**32 - 1
# Keys Hydra's instantiate reads itself.
# Keys the runner reads itself instead of passing them to the node's target.
RUNNER_KEYS = {"model.dropout": {"placement"}}
# Every data module loads images as RGB.
IMAGE_CHANNELS = 3
# The side of the images of the datasets that have no data.image_size (CIFAR-10, digits):
# the size normlab's networks are built for.
IMAGE_SIZE = 32
# Callbacks whose constructors only check and store their arguments: built during the checks,
# so that a bad argument is named before the run starts. Others (a researcher's own) are left
# to the run, as building them might do more.
CHECKED_CALLBACKS = ("normlab.", "lightning.pytorch.callbacks.")
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


def check_callbacks(cfg: DictConfig) -> None:
    """Build normlab's and Lightning's callbacks once, so that an argument their constructor
    refuses (callbacks.divergence.check_every_n_steps=0) is named now, not by a Hydra
    traceback once the run directory exists. Arguments that resolve only once the run does
    (`${paths.output_dir}/checkpoints`) are left to their defaults here."""
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig) or node.get("_partial_"):
            continue
        target = OmegaConf.select(node, "_target_", default=None)
        if not isinstance(target, str) or not target.startswith(CHECKED_CALLBACKS):
            continue
        try:
            callback_class = get_class(target)
        except Exception:
            continue  # check_keys names a target that cannot be imported
        arguments = plain_arguments(node)
        if arguments is None:
            continue
        try:
            callback_class(**arguments)
        except Exception as err:
            raise callback_error(f"callbacks.{name}", target, arguments, err) from None


def plain_arguments(node: DictConfig) -> dict[str, Any] | None:
    """A callback node's constructor arguments, resolved; those that resolve only once the run
    exists are left out (their defaults stand in). None when an argument is itself an object
    to build: the checks do not build it."""
    arguments = {}
    for key in node:
        if key in INSTANTIATE_KEYS:
            continue
        try:
            value = node[key]
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
        except Exception:
            continue
        if any(True for _ in walk_targets(value)):
            return None
        arguments[str(key)] = value
    return arguments


def callback_error(
    path: str, target: str, arguments: Mapping[str, Any], err: Exception
) -> ConfigError:
    """One paragraph for a callback's constructor refusing its arguments, naming the key when
    its message names one of them. normlab's own callbacks raise ConfigErrors that already
    name their key: those stand as they are."""
    if isinstance(err, NormlabError):
        return ConfigError(str(err))
    message = str(err).rstrip(".")
    for key in sorted(arguments, key=len, reverse=True):
        if message.startswith(f"{key}="):
            return ConfigError(f"{path}.{message}.")
    for key in sorted(arguments, key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", message):
            return ConfigError(
                f"{path}.{key}={arguments[key]!r}: {message}. Set another value ({path}.{key}=...)."
            )
    settings = ", ".join(f"{path}.{key}={value!r}" for key, value in arguments.items())
    return ConfigError(
        f"{path} ({target}) cannot be built: {type(err).__name__}: {message}. Its settings: "
        f"{settings or 'none'}; `python train.py --cfg job` prints every setting."
    )


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


def check_keys(cfg: DictConfig) -> None:
    """Every key of a `_target_` node must be a parameter of its target (did-you-mean)."""
    nodes: list[tuple[str, Any]] = [
        (key, cfg.get(key)) for key in ("data", "trainer", "optimizer", "scheduler", "model")
    ]
    nodes += [
        (f"model.{key}", OmegaConf.select(cfg, f"model.{key}")) for key in ("norm", "dropout")
    ]
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            nodes.append((f"{group}.{name}", node))
    for path, node in nodes:
        if not isinstance(node, Mapping) or "_target_" not in node:
            continue
        accepted = accepted_parameters(path, node["_target_"])
        if accepted is None:
            continue  # the target takes arbitrary keyword arguments
        ignored = INSTANTIATE_KEYS | RUNNER_KEYS.get(path, set())
        for key in node:
            if key not in accepted and key not in ignored:
                raise ConfigError(unknown_key_message(f"{path}.{key}", accepted, node["_target_"]))


def accepted_parameters(path: str, target: str) -> set[str] | None:
    """Keyword parameters a `_target_` accepts, following `**kwargs` up the class hierarchy."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception as err:
        raise ConfigError(
            f"{path}._target_={target}: cannot import it ({err}). Check the spelling of the "
            "class path in the config file."
        ) from None
    functions = [obj]
    if inspect.isclass(obj):
        functions = [c.__init__ for c in obj.__mro__ if "__init__" in vars(c)]
    accepted: set[str] = set()
    for function in functions:
        try:
            params = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        accepted |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return accepted
    return None


def unknown_key_message(key: str, candidates: Iterable[str], owner: str = "") -> str:
    parent, _, leaf = key.rpartition(".")
    if not parent and key in TEMPLATE_ONLY_KEYS:
        return f"{key} is not a setting of the config: {TEMPLATE_ONLY_KEYS[key]}"
    candidates = sorted(candidates)
    alias = KEY_ALIASES.get(key) if not parent else None
    match = [alias] if alias in candidates else []
    match = match or difflib.get_close_matches(leaf, candidates, n=1, cutoff=0.6)
    where = f" ({owner})" if owner else ""
    hint = f"did you mean {parent + '.' if parent else ''}{match[0]}?" if match else ""
    return (
        f"{key} is not a setting of {parent or 'the config'}{where}; {hint or 'check the key.'}"
        " `python train.py --cfg job` prints every setting."
    )


def unknown_override_hints(overrides: list[str], config_dir: Path, config_name: str) -> list[str]:
    """Messages for command-line `key=value` overrides whose key does not exist.

    Hydra rejects such a key with advice to add it with `+`, which is wrong for a typo; this
    finds the setting the user most likely meant. The config is composed with only the
    group choices on the command line (e.g. `data=digits`), so it has the keys those choices
    bring.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [o for o in overrides if "=" in o and not o.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return []  # Hydra has already explained a malformed override
    hints = []
    groups = []
    for o in parsed:
        if o.is_sweep_override() or not (config_dir / o.key_or_group).is_dir():
            continue
        hint = unknown_option_hint(o.key_or_group, o.value(), config_dir)
        if hint:
            hints.append(hint)
        else:
            groups.append(o.input_line)
    plain = [
        o.key_or_group
        for o in parsed
        if not (o.is_add() or o.is_force_add() or o.is_delete() or o.is_hydra_override())
        and not (config_dir / o.key_or_group).is_dir()
    ]
    added = [o for o in parsed if o.is_add() and not (config_dir / o.key_or_group).is_dir()]
    if not plain and not added:
        return hints
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=groups)
    except Exception:
        return hints
    finally:
        GlobalHydra.instance().clear()
    for o in added:  # `+trainer.precision=16`: Hydra's "Could not append", the key exists
        if OmegaConf.select(cfg, o.key_or_group, default=_ABSENT) is not _ABSENT:
            plain_form = o.input_line.lstrip("+")
            hints.append(
                f"+{o.key_or_group} adds a new key, but {o.key_or_group} is a setting already: "
                f"drop the +, e.g. {plain_form} (or ++{plain_form} to set it either way)."
            )
    for key in plain:
        if moved := template_path(key):
            hints.append(
                f"{key} is lightning-hydra-template's place for it; normlab's is {moved} "
                f"(e.g. {moved}=...)."
            )
            continue
        parts = key.split(".")
        node: Any = cfg
        for depth, part in enumerate(parts):
            # keys(), not `in`: a key whose value is still `???` is not "in" a DictConfig.
            if not isinstance(node, DictConfig) or part not in node.keys():  # noqa: SIM118
                known = list(node.keys()) if isinstance(node, DictConfig) else []
                wrong = ".".join(parts[: depth + 1])
                hints.append(unknown_key_message(wrong, known))
                break
            if OmegaConf.is_missing(node, part):
                break
            node = node[part]
    return hints


# Option names lightning-hydra-template users type, and normlab's own.
OPTION_ALIASES = {
    "debug": {"profiler": "profile", "default": "fast", "limit": "fast"},
    "logger": {"many_loggers": "many", "tensorboard_csv": "many"},
    "trainer": {"mps": "gpu"},
    "callbacks": {"null": "none"},
}
# Top-level keys of lightning-hydra-template that normlab names otherwise.
KEY_ALIASES = {"task_name": "name"}
# lightning-hydra-template nests the optimizer, scheduler and network in its model node.
PATH_ALIASES = {
    "model.optimizer.": "optimizer.",
    "model.scheduler.": "scheduler.",
    "model.net.": "model.",
}


def template_path(key: str) -> str | None:
    """normlab's key for a lightning-hydra-template key path (`model.optimizer.lr` ->
    `optimizer.lr`), or None."""
    prefix = next((p for p in PATH_ALIASES if key.startswith(p)), None)
    return PATH_ALIASES[prefix] + key.removeprefix(prefix) if prefix else None


# Top-level keys of lightning-hydra-template that normlab has no counterpart for: what to do.
TEMPLATE_ONLY_KEYS = {
    "extras": (
        "lightning-hydra-template's extras (print_config, ignore_warnings, enforce_tags) are "
        "not needed here: every run saves its resolved config as config_resolved.yaml, "
        "verbose=true also prints it and `python train.py --cfg job` prints it without "
        "running; drop the override."
    ),
}


def unknown_option_hint(group: str, value: Any, config_dir: Path) -> str | None:
    """`debug=profiler is not an option of debug; did you mean debug=profile?`, or None when
    `value` is one of the group's options (or not a plain name)."""
    if not isinstance(value, str) or group.startswith("hydra"):
        return None  # Hydra's groups also hold its plugins' options (hydra/launcher=joblib)
    options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
    if value in options:
        return None
    match = OPTION_ALIASES.get(group, {}).get(value)
    if match not in options:
        close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
        match = close[0] if close else None
    hint = f"did you mean {group}={match}? " if match else ""
    return (
        f"{group}={value} is not an option of {group}; {hint}"
        f"The options: {', '.join(options)} (files in conf/{group}/)."
    )


def check_paths(
    run_dir: str | Path, data_root: str | Path | None, key: str = "hydra.run.dir"
) -> None:
    """The run (or sweep) directory can be created, and the data folder read or created.

    `run_dir` is Hydra's output folder as configured (`key` names the setting).
    """
    if str(run_dir).startswith("~"):
        # Hydra makes its output folders absolute without expanding `~`: the run would go
        # into a folder named `~` inside the current directory.
        raise ConfigError(
            f"{key}={run_dir}: Hydra does not expand ~ in its output folders, so the run "
            "would go into a folder named '~' in the current directory. Write the home "
            "folder out: $HOME/... (the shell expands it), e.g. paths.log_dir=$HOME/logs."
        )
    if not can_create(Path(run_dir)):
        raise ConfigError(
            f"cannot create the run directory {run_dir}: {blocker(Path(run_dir))}. Point "
            "paths.log_dir at a writable folder, e.g. paths.log_dir=$HOME/normlab-logs."
        )
    if data_root is not None:
        root = absolute_path(data_root)
        if root.exists() and not (root.is_dir() and os.access(root, os.R_OK | os.X_OK)):
            raise ConfigError(
                f"data.root={data_root} is not a readable folder. Point data.root (or "
                "paths.data_dir) at the folder that holds the dataset, or at a writable one "
                "to download it into."
            )
        if not root.exists() and not can_create(root):
            raise ConfigError(
                f"data.root={data_root}: cannot create the data folder: {blocker(root)}. Point "
                "data.root (or paths.data_dir) at a writable folder, e.g. data.root=$HOME/data."
            )


def can_create(path: Path) -> bool:
    return blocker(path) == ""


def blocker(path: Path) -> str:
    """Why `path` cannot be created as a directory ("" when it can or already is one)."""
    path = absolute_path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                return f"{candidate} is a file, not a folder"
            if not os.access(candidate, os.W_OK | os.X_OK):
                return f"{candidate} is not writable"
            return ""
    return ""


# --- the Hydra callback -------------------------------------------------------------------


# Set while normlab.train (the Python API) runs Hydra's callbacks: it has run the checks and
# claimed the run directory itself, raising on failure, because Preflight can only exit.
_checked_by_caller: ContextVar[bool] = ContextVar("normlab_checked_by_caller", default=False)


@contextlib.contextmanager
def checked_by_caller() -> Iterator[None]:
    """Within the block Preflight skips a single run: the caller did what it would do."""
    token = _checked_by_caller.set(True)
    try:
        yield
    finally:
        _checked_by_caller.reset(token)


class Preflight(Callback):
    """Runs the checks before Hydra creates anything (see conf/hydra/default.yaml); then
    creates and locks the run (or sweep) directory, so no other process writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _checked_by_caller.get():
            return
        with exit_before_the_run():
            plan = check_single_run(config)
            claim_run_dir(Path(str(config.hydra.run.dir)), plan.resumed)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_before_the_run():
            if config.get("resume") is not None:
                raise ConfigError(
                    "resume= continues a run or a whole sweep by itself: drop --multirun, e.g. "
                    "python train.py resume=logs/multiruns/<sweep> (or resume=<sweep>/<job> "
                    "for one job)."
                )
            sweep_dir = Path(str(config.hydra.sweep.dir))
            check_paths(sweep_dir, None, key="hydra.sweep.dir")
            check_distributed(config, multirun=True, launcher=launcher_target(config.hydra))
            check_space(sweep_dir, None)
            # resume=<sweep dir> runs the sweep again into its own folder, on purpose.
            continued = os.environ.get(CONTINUE_SWEEP) == str(absolute_path(sweep_dir))
            if not continued:
                refuse_used_sweep_dir(sweep_dir)
            lock_folder(sweep_dir, "sweep directory", "hydra.sweep.dir")
            if not continued:
                refuse_used_sweep_dir(sweep_dir)  # filled by another process before the lock
        forward_sigterm_to_workers()


def refuse_used_sweep_dir(sweep_dir: Path) -> None:
    """A sweep never writes into the folder of another sweep: its jobs 0, 1, ... would
    overwrite the finished jobs there."""
    if not sweep_dir.is_dir():
        return
    used = (sweep_dir / "multirun.yaml").exists() or any(
        child.is_dir() and (holds_run(child) or (child / ".hydra").is_dir())
        for child in sweep_dir.iterdir()
    )
    if used:
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} already holds a sweep, whose finished jobs this one "
            "would overwrite. Give this sweep another folder (leave hydra.sweep.dir out for a "
            "fresh one), or continue that sweep with python train.py "
            f"resume={sweep_dir}."
        )


# A run writes two checkpoints and a temporary third, plus logs; a few MB besides.
LOG_BYTES = 5 * 2**20


def check_space(folder: Path, net: nn.Module | None) -> None:
    """ConfigError when the disk holding `folder` has less room than a run's checkpoints."""
    folder = absolute_path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    weights = sum(p.numel() * p.element_size() for p in net.parameters()) if net else 0
    # weights, optimizer state (momentum) and gradients' worth of each checkpoint, three files
    needed = 3 * 2 * weights + LOG_BYTES
    if free < needed:
        raise ConfigError(
            f"no space left for the run in {folder}: the disk holding {existing} has "
            f"{free / 2**20:.1f} MiB free and the run needs about {needed / 2**20:.1f} MiB "
            "(its checkpoints and logs). Free some space, or point paths.log_dir at another "
            "disk."
        )


def forward_sigterm_to_workers() -> None:
    """SIGTERM to a sweep reaches the processes that run its jobs.

    The joblib launcher runs jobs in worker processes; killed, the parent would leave them
    training with nobody waiting for them. Here the parent passes SIGTERM on to its child
    processes (each job then records itself as interrupted and rewrites the sweep report),
    waits for them, and exits with code 130. Verified by hand with hydra/launcher=joblib
    n_jobs=2: both jobs "interrupted", the report lists them, no worker left.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        children = child_processes()
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while children and time.monotonic() < deadline:
            children = [pid for pid in children if alive(pid)]
            time.sleep(0.05)
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        print(f"sweep stopped by {signal.Signals(signum).name}", file=sys.stderr)
        sys.exit(130)  # as a single run stopped by SIGTERM

    signal.signal(signal.SIGTERM, stop)


def child_processes() -> list[int]:
    """Process ids whose parent is this process (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = entry.read_text().rsplit(")", 1)[1].split()
            cmdline = (entry.parent / "cmdline").read_bytes()
            # Resource trackers clean up after the workers and end with this process.
            if int(fields[1]) == os.getpid() and b"resource_tracker" not in cmdline:
                found.append(int(entry.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def check_single_run(config: DictConfig) -> RunPlan:
    """The checks before a single run (the composed config with its `hydra` node); raises
    NormlabError. `Preflight` runs them for train.py, `normlab.train` before it starts Hydra."""
    plan = plan_run(config, list(config.hydra.overrides.task))
    run_dir = Path(str(config.hydra.run.dir))
    check_paths(run_dir, OmegaConf.select(plan.config, "data.root"))
    net = check_run(plan, launcher=launcher_target(config.hydra))
    check_space(run_dir, net)
    if not plan.resumed and holds_run(run_dir) and not secondary_rank():
        claim_run_dir(run_dir, resumed=False)  # raises: the folder holds a run
    return plan


def checked_by_preflight() -> bool:
    """Whether this process is a single run that `Preflight` checked before it started."""
    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    targets = {
        str(node.get("_target_", "")) for node in (hydra_cfg.get("callbacks") or {}).values()
    }
    return not in_multirun(hydra_cfg) and f"{__name__}.Preflight" in targets


@contextlib.contextmanager
def exit_before_the_run() -> Iterator[None]:
    """Any exception in the checks stops the run with one paragraph and exit code 1.

    Hydra would turn an exception raised in a callback into a warning and start the run
    anyway; a check that cannot finish must not let the run start.
    """
    try:
        yield
    except NormlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        print(
            f"error: the checks before the run failed with {type(err).__name__}: {err}. "
            "Nothing was started or written. Look at the setting this concerns "
            "(`python train.py --cfg job` prints every setting).",
            file=sys.stderr,
        )
        sys.exit(1)
