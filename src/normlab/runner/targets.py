"""Checks of the config's `_target_` nodes: every key is a parameter of its target
(did-you-mean), and normlab's and Lightning's callbacks accept their arguments."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from normlab.errors import ConfigError
from normlab.runner.build import INSTANTIATE_KEYS, construction_error
from normlab.runner.hints import unknown_key_message
from normlab.runner.rundir import walk_targets

# Keys Hydra's instantiate reads itself.
# Keys the runner reads itself instead of passing them to the node's target.
RUNNER_KEYS = {"model.dropout": {"placement"}}


# Callbacks whose constructors only check and store their arguments: built during the checks,
# so that a bad argument is named before the run starts. Others (a researcher's own) are left
# to the run, as building them might do more.
CHECKED_CALLBACKS = ("normlab.", "lightning.pytorch.callbacks.")


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
    if named := construction_error(err, {path: dict(arguments)}):
        return named
    message = str(err).rstrip(".")
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
