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
import numbers
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normlab.errors import ConfigError, NormlabError
from normlab.runner.build import build_network, network_spec
from normlab.runner.rundir import (
    RunPlan,
    check_architecture,
    launcher_target,
    load_checkpoint,
    plan_run,
)

# Keys Hydra's instantiate reads itself.
INSTANTIATE_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
# Keys the runner reads itself instead of passing them to the node's target.
RUNNER_KEYS = {"model.dropout": {"placement"}}


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
    net = check_network(cfg.model)
    if plan.checkpoint is not None:
        checkpoint = load_checkpoint(plan.checkpoint, plan.checkpoint_key)
        check_architecture(checkpoint, net, plan.checkpoint, plan.checkpoint_key)
    return net


def check_network(model_cfg: DictConfig) -> nn.Module:
    """Construct the network on the meta device; ConfigError naming the setting if it fails."""
    try:
        return build_network(model_cfg, device="meta")
    except Exception as err:
        raise network_error(model_cfg, err) from None


def network_error(model_cfg: DictConfig, err: Exception) -> ConfigError:
    """One paragraph for an exception raised while building the network of `model_cfg`.

    Hydra wraps the error of a target in its own; the innermost one is the layer's. A message
    that starts with one of a node's options (`num_groups=4 does not divide ...`) gets that
    node's path in front; any other lists the settings that went into the network.
    """
    while err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, NormlabError):
        return ConfigError(str(err))
    message = str(err)
    spec = network_spec(model_cfg)
    nodes = {"model.norm": spec.get("norm"), "model.dropout": spec.get("dropout"), "model": spec}
    if isinstance(nodes["model.dropout"], dict):
        nodes["model.dropout"] = {**nodes["model.dropout"], "placement": None}
    for path, node in nodes.items():
        for key in node if isinstance(node, dict) else ():
            if message.startswith(f"{key}="):
                return ConfigError(f"{path}.{message}")
    settings = [
        f"{path}.{key}={value}"
        for path in ("model.norm", "model.dropout")
        for key, value in (OmegaConf.select(model_cfg, path.removeprefix("model.")) or {}).items()
        if key not in INSTANTIATE_KEYS or key == "_target_"
    ]
    return ConfigError(
        f"model: the network ({spec.get('_target_')}) cannot be built: "
        f"{type(err).__name__}: {message}. Its norm and dropout settings: "
        f"{', '.join(settings)}; `python train.py --cfg job` prints every setting."
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
    if not is_number(lr) or lr <= 0:
        raise ConfigError(
            f"optimizer.lr={lr!r}: the learning rate must be a positive number, "
            "e.g. optimizer.lr=0.05 (SGD) or optimizer.lr=1e-3 (AdamW)."
        )
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ConfigError(f"seed={cfg.get('seed')!r}: the seed must be an integer, e.g. seed=0.")


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
    match = difflib.get_close_matches(leaf, sorted(candidates), n=1, cutoff=0.6)
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
    groups = [
        o.input_line
        for o in parsed
        if not o.is_sweep_override() and (config_dir / o.key_or_group).is_dir()
    ]
    plain = [
        o.key_or_group
        for o in parsed
        if not (o.is_add() or o.is_force_add() or o.is_delete() or o.is_hydra_override())
        and not (config_dir / o.key_or_group).is_dir()
    ]
    if not plain:
        return []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=groups)
    except Exception:
        return []
    finally:
        GlobalHydra.instance().clear()
    hints = []
    for key in plain:
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


def check_paths(run_dir: str | Path, data_root: str | Path | None) -> None:
    """The run directory can be created, and the data folder read or created."""
    if not can_create(Path(run_dir)):
        raise ConfigError(
            f"cannot create the run directory {run_dir}: {blocker(Path(run_dir))}. Point "
            "paths.log_dir at a writable folder, e.g. paths.log_dir=$HOME/normlab-logs."
        )
    if data_root is not None:
        root = Path(data_root).expanduser()
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
    path = path.expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                return f"{candidate} is a file, not a folder"
            if not os.access(candidate, os.W_OK | os.X_OK):
                return f"{candidate} is not writable"
            return ""
    return ""


# --- the Hydra callback -------------------------------------------------------------------


class Preflight(Callback):
    """Runs the checks before Hydra creates anything (see conf/hydra/default.yaml)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_before_the_run():
            check_single_run(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_before_the_run():
            if config.get("resume"):
                raise ConfigError(
                    "resume= continues one run: drop --multirun and resume each interrupted job "
                    "on its own, e.g. python train.py resume=logs/multiruns/<sweep>/<job>."
                )
            check_paths(config.hydra.sweep.dir, None)
            check_distributed(config, multirun=True, launcher=launcher_target(config.hydra))


def check_single_run(config: DictConfig) -> None:
    """The checks before a single run (the composed config with its `hydra` node); raises
    NormlabError. `Preflight` runs them for train.py, `normlab.train` before it starts Hydra."""
    plan = plan_run(config, list(config.hydra.overrides.task))
    check_paths(config.hydra.run.dir, OmegaConf.select(plan.config, "data.root"))
    check_run(plan, launcher=launcher_target(config.hydra))


def checked_by_preflight() -> bool:
    """Whether this process is a single run that `Preflight` checked before it started."""
    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    targets = {
        str(node.get("_target_", "")) for node in (hydra_cfg.get("callbacks") or {}).values()
    }
    return hydra_cfg.mode == RunMode.RUN and f"{__name__}.Preflight" in targets


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
