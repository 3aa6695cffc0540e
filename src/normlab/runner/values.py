"""The checks that need only the composed config, no class of it imported: settings left
unset, the numbers (sizes, learning rate, seed, threads, batch limits, every number's range)
and DDP inside sweeps. They import no torch, so `python train.py optimizer.lr=-1` is answered
in about a second; `checks.check_run` runs them first, then the checks that import classes.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normlab.errors import ConfigError
from normlab.runner.number_rules import check_numbers

# Lightning's seed_everything accepts 0 .. 2**32 - 1 (numpy's seed range).
MAX_SEED = 2**32 - 1


def check_config(cfg: DictConfig, multirun: bool = False, launcher: str = "") -> None:
    """Raise ConfigError for the first setting the config alone shows cannot work.

    `multirun` and `launcher` (Hydra's launcher `_target_`) describe how the run was started.
    """
    check_unset(cfg)
    check_plain_values(cfg)
    check_distributed(cfg, multirun, launcher)


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


def check_plain_values(cfg: DictConfig) -> None:
    """Sizes, learning rate, threads, seed, batch limits, and every number's range."""
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
    if threads is not None and not is_count(threads, 1):
        raise ConfigError(
            f"threads={threads!r}: torch's threads for this run must be a positive integer, "
            "e.g. threads=4, or null (the default: chosen from the cores the run may use, "
            "logged as it starts)."
        )
    seed = cfg.get("seed")
    if not is_count(seed, 0) or seed > MAX_SEED:
        raise ConfigError(
            f"seed={seed!r}: the seed must be an integer from 0 to {MAX_SEED} (the range "
            "Lightning's seed_everything accepts), e.g. seed=0."
        )
    positive_int_if_given(cfg, "data.image_size", "the side of the square images, in pixels", 32)
    check_batch_limits(cfg)
    check_numbers(cfg)  # every other number: finite and in its key's range


def check_batch_limits(cfg: DictConfig) -> None:
    """trainer.limit_*_batches and trainer.val_check_interval have a form Lightning takes.
    (Limits that leave no batch of the data actually loaded are named as the run starts,
    `build.batch_limit_error`; a training set smaller than one batch by the data module,
    which alone knows how many images it holds.)"""
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches")
    if limit is not None and (not is_number(limit) or limit <= 0):
        raise ConfigError(
            f"trainer.limit_train_batches={limit!r}: the run would train on no batch at all. "
            "Use a positive number of batches (e.g. 10) or fraction (e.g. 0.1), or leave it "
            "out to train on every batch."
        )
    for stage in ("train", "val", "test"):
        key = f"trainer.limit_{stage}_batches"
        limit = OmegaConf.select(cfg, key)
        if limit is None or is_count(limit, 0) or (is_fraction(limit) and limit >= 0):
            continue
        skip = " (0 skips validation)" if stage == "val" else ""
        raise ConfigError(
            f"{key}={limit!r}: give a whole number of batches{skip}, e.g. {key}=10, or a "
            f"fraction of them from 0.0 to 1.0, e.g. {key}=0.25; leave it out to use every batch."
        )
    interval = OmegaConf.select(cfg, "trainer.val_check_interval")
    positive_share = is_fraction(interval) and interval > 0
    if interval is not None and not (is_count(interval, 1) or positive_share):
        raise ConfigError(
            f"trainer.val_check_interval={interval!r}: validate every N training batches (a "
            "whole number from 1, e.g. trainer.val_check_interval=100) or a fraction of an "
            "epoch above 0 (e.g. trainer.val_check_interval=0.5); leave it out to validate once "
            "per epoch."
        )


def positive_int_if_given(cfg: DictConfig, key: str, meaning: str, example: int) -> None:
    if OmegaConf.select(cfg, key) is not None:
        positive_int(cfg, key, meaning, example)


def positive_int(cfg: DictConfig, key: str, meaning: str, example: int) -> None:
    value = OmegaConf.select(cfg, key)
    if not is_count(value, 1):
        raise ConfigError(
            f"{key}={value!r}: must be a positive integer ({meaning}), e.g. {key}={example}."
        )


def count_or_fraction(cfg: DictConfig, key: str, meaning: str, example: int) -> None:
    value = OmegaConf.select(cfg, key)
    if is_number(value) and 0 < value < 1:
        return
    if not is_count(value, 1):
        raise ConfigError(
            f"{key}={value!r}: must be a positive number of images or a fraction between 0 "
            f"and 1 ({meaning}), e.g. {key}={example} or {key}=0.1."
        )


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_fraction(value: Any) -> bool:
    """A float Lightning reads as a share (0.0 to 1.0): an int is a count there."""
    return isinstance(value, float) and 0 <= value <= 1


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
