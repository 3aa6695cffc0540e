"""What a run directory holds, read back: its saved config, its overrides and its checkpoints.

`python train.py resume=<run dir>` re-runs the config saved in `<run dir>/.hydra/config.yaml`
in that same directory, from `checkpoints/last.ckpt` (written after every epoch); `eval.py` and
`predict` read the same files. Checkpoints are only ever read with
`torch.load(weights_only=True)`: tensors and plain containers, never pickled code.

A run directory may come from someone else, so its saved config is data, not code: before
anything is built from it, every `_target_` in it must be one normlab itself would write (an
allowlist of prefixes) or one named by a `_target_` in this checkout's own `conf/` tree (a
researcher's own norm class, registered by a YAML there). Anything else is refused.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from normlab.errors import ConfigError, NormlabError
from normlab.files import FolderLock, absolute_path, reraise_disk_full
from normlab.runner.commands import command
from normlab.runner.names import is_run_setting, override_key

log = logging.getLogger("normlab")

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
CHECKPOINTS = {"best": Path("checkpoints") / "best.ckpt", "last": Path("checkpoints") / "last.ckpt"}
# The network's weights inside the LightningModule's state dict (`ImageClassifier.net`).
NET_PREFIX = "net."
# What a saved config may instantiate without the checkout's conf/ naming it: normlab's own
# classes, PyTorch layers and optimizers, Lightning's Trainer, loggers and callbacks.
TRUSTED_PREFIXES = (
    "normlab.",
    "torch.nn.",
    "torch.optim.",
    "lightning.pytorch.loggers.",
    "lightning.pytorch.callbacks.",
)
TRUSTED_NAMES = ("lightning.pytorch.Trainer", "lightning.Trainer")
# normlab's own code that writes files or opens runs is no layer, dataset or callback.
UNTRUSTED_MODULES = (
    "normlab.files",
    "normlab.runner",
    "normlab.bench",
    "normlab.report",
    "normlab.predict",
)
# The checkout's own config folder, for entry points that run without Hydra (predict).
CHECKOUT_CONF = Path(__file__).resolve().parents[3] / "conf"


def task_overrides() -> list[str]:
    """This run's command-line overrides, as Hydra recorded them."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


def launcher_target(hydra_cfg: DictConfig | None = None) -> str:
    """The `_target_` of Hydra's launcher (from the `hydra` node given, else this run's)."""
    if hydra_cfg is None:
        if not HydraConfig.initialized():
            return ""
        hydra_cfg = HydraConfig.get()
    return str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")


def saved_config(run_dir: str | Path, key: str) -> DictConfig:
    """The config a run trained with, its output directory pinned to the run itself.

    `key` is the setting that named the directory (`resume`, `run`), for the messages.
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(
            f"{key}={run_dir}: no such directory. Pass the folder of a training run, the one "
            f"holding .hydra/ and checkpoints/ (e.g. {key}=logs/runs/2026-01-31_12-00-00_1234)"
            + (", or of a sweep, the one holding multirun.yaml." if key == "resume" else ".")
        )
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(
            f"{key}={run_dir}: {path} is missing, so the run's config is unknown: this is not a "
            "normlab run directory, or the run was stopped before Hydra saved its config. "
            + (
                "A sweep's folder holds multirun.yaml (resume=logs/multiruns/<time> continues "
                "the whole sweep)."
                if key == "resume"
                else "For a sweep, pass one job's folder, e.g. logs/multiruns/<time>/0."
            )
        )
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # a YAML syntax error, a binary file
        first_line = (str(err).splitlines() or [""])[0]
        raise ConfigError(
            f"{key}={run_dir}: its saved config {path} cannot be read ({type(err).__name__}: "
            f"{first_line}). The run directory is damaged; restore .hydra/config.yaml from a "
            "copy, or start a new run."
        ) from None
    if not isinstance(cfg, DictConfig) or not all(k in cfg for k in ("model", "data", "trainer")):
        raise ConfigError(
            f"{key}={run_dir}: its saved config {path} is empty or not a normlab training "
            "config (no model, data and trainer settings). The run directory is damaged or "
            "was not written by train.py; restore .hydra/config.yaml from a copy."
        )
    check_trusted_targets(cfg, f"{key}={run_dir}", path)
    with open_dict(cfg):
        # Saved as ${hydra:runtime.output_dir}, which would now name another directory.
        # Absolute, as Hydra's own output_dir: the folder's lock goes by that name.
        cfg.paths.output_dir = str(absolute_path(run_dir))
    return cfg


def config_dirs() -> list[Path]:
    """The folders whose YAML files the user's entry point composes: Hydra's file config
    sources (conf/ and any hydra.searchpath), else this checkout's conf/."""
    dirs: list[Path] = []
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources or []:
            if source.schema == "file" and source.provider in ("main", "command-line"):
                dirs.append(Path(source.path))
    if not dirs and CHECKOUT_CONF.is_dir():
        dirs.append(CHECKOUT_CONF)
    return dirs


@functools.lru_cache(maxsize=8)
def _targets_in(folder: Path, stamp: float) -> frozenset[str]:
    found: set[str] = set()
    for path in sorted(folder.rglob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except Exception:
            continue  # Hydra reports a broken config file itself
        found |= {str(t) for _, t in walk_targets(data) if isinstance(t, str)}
    return frozenset(found)


def conf_targets(dirs: list[Path]) -> frozenset[str]:
    """Every `_target_` value written in the YAML files under `dirs`."""
    found: frozenset[str] = frozenset()
    for folder in dirs:
        if folder.is_dir():
            stamp = max((p.stat().st_mtime for p in folder.rglob("*.yaml")), default=0.0)
            found |= _targets_in(folder.resolve(), stamp)
    return found


def walk_targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every `_target_` at any depth, lists (`_args_`) included."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield where, value
            else:
                yield from walk_targets(value, where)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from walk_targets(value, f"{path}[{index}]")


def allowlisted(target: str) -> bool:
    """Whether `target` names an object under one of TRUSTED_PREFIXES, for real.

    Hydra locates `a.b.c` by importing and then following attributes, so a trusted prefix
    alone proves nothing: `torch.nn.functional.torch.load` reaches torch.load. The object found
    must itself be defined in the trusted package, and no step may be a dunder attribute.
    """
    if target in TRUSTED_NAMES:
        return True
    prefix = next((p for p in TRUSTED_PREFIXES if target.startswith(p)), None)
    parts = target.split(".")
    if prefix is None or any(not part.isidentifier() or part.startswith("__") for part in parts):
        return False
    try:
        obj: Any = importlib.import_module(parts[0])
        for depth, part in enumerate(parts[1:], start=2):
            if hasattr(obj, part):
                obj = getattr(obj, part)
            else:
                obj = importlib.import_module(".".join(parts[:depth]))
            if inspect.ismodule(obj) and obj.__name__ != ".".join(parts[:depth]):
                return False  # a module reached under another name (an alias)
    except Exception:
        return False
    module = getattr(obj, "__module__", None)
    return (
        isinstance(module, str)
        and f"{module}.".startswith(prefix)
        and not f"{module}.".startswith(tuple(f"{m}." for m in UNTRUSTED_MODULES))
    )


def check_trusted_targets(cfg: DictConfig, key: str, path: Path) -> None:
    """ConfigError for the first `_target_` in a saved config that normlab would not write and
    this checkout's conf/ does not name. Nothing is instantiated before this passes."""
    dirs = config_dirs()
    named: frozenset[str] | None = None
    container = OmegaConf.to_container(cfg, resolve=False)
    for where, target in walk_targets(container):
        value = target
        if isinstance(target, str) and OmegaConf.is_interpolation(
            OmegaConf.create({"t": target}), "t"
        ):
            try:  # `_target_: ${some.key}`: what it would resolve to is what counts
                value = OmegaConf.select(cfg, where, throw_on_resolution_failure=True)
            except Exception:
                value = None
        if isinstance(value, str) and allowlisted(value):
            continue
        if named is None:
            named = conf_targets(dirs)
        if isinstance(value, str) and value in named:
            continue
        shown = ", ".join(str(d) for d in dirs) or "conf/"
        raise ConfigError(
            f"{key}: refused to open: its saved config {path} sets {where}={target}, which "
            "normlab does not trust. Opening a run directory builds every _target_ in its "
            "config, so a run from elsewhere could run any code; only normlab's own classes, "
            "torch.nn, torch.optim, Lightning's Trainer, loggers and callbacks, and targets "
            f"named by a YAML file in this checkout's config folder ({shown}) are built. If you "
            "trust it, add a YAML under conf/ that names it (e.g. conf/model/norm/mine.yaml "
            f"with `_target_: {target}`)."
        )


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """A run's results.json as a dict; empty when it is missing or unreadable."""
    try:
        results = json.loads((Path(run_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return results if isinstance(results, dict) else {}


def checkpoint_path(run_dir: str | Path, which: str, key: str = "run") -> Path:
    """The run's best or last checkpoint, checked to exist."""
    if which not in CHECKPOINTS:
        raise ConfigError(f"which={which!r}: choose which=best or which=last.")
    path = Path(run_dir) / CHECKPOINTS[which]
    if not path.is_file():
        found = sorted(p.name for p in path.parent.glob("*.ckpt"))
        raise ConfigError(
            f"{key}={run_dir}: no {which} checkpoint at {path} "
            f"({'found ' + ', '.join(found) if found else 'no checkpoints at all'}). "
            "A run writes checkpoints/best.ckpt and last.ckpt once it has finished an epoch; "
            + ("try which=last." if "last.ckpt" in found else "train it (longer) first.")
        )
    return path


@dataclass(frozen=True)
class RunPlan:
    """What a training run starts from, before anything is built."""

    config: DictConfig  # the config to train: a resumed run's own (interpolations unresolved)
    overrides: list[str]  # the command-line overrides that describe the run
    checkpoint: Path | None  # the checkpoint training starts from
    checkpoint_key: str  # the setting that named it, for messages
    resumed: bool
    note: str = ""  # said when the run starts (e.g. which checkpoint a resume fell back to)
    # A resumed run's torch threads as it recorded them: the count is part of what makes it
    # bit-identical to an uninterrupted run, whatever the machine's load is now.
    threads: int | None = None
    # A resumed run's config-group choices (data=digits, model=cnn...) as Hydra recorded them
    # when it started: its labels (console header, HParams) come from these, not from the
    # defaults the resume command composed.
    choices: dict[str, Any] | None = None


def plan_run(cfg: DictConfig, overrides: list[str]) -> RunPlan:
    """Resolve `resume=` and `ckpt_path=`; ConfigError when either cannot work."""
    if cfg.get("resume") == "" or (cfg.get("resume") is None and "resume=" in overrides):
        raise ConfigError(
            "resume= is empty: give the run or sweep directory to continue, e.g. "
            "python train.py resume=logs/runs/2026-01-31_12-00-00_1234 (a sweep: "
            "resume=logs/multiruns/<time>); leave resume out to start a new run."
        )
    if not cfg.get("resume"):
        return RunPlan(cfg, overrides, user_checkpoint(cfg.get("ckpt_path")), "ckpt_path", False)
    resume = cfg.resume
    changed = [o for o in overrides if not is_run_setting(o)]
    saved = saved_config(resume, "resume")
    if changed:
        raise ConfigError(
            f"resume= continues a run exactly as it was configured, but {' '.join(changed)} "
            "would change it. Drop those overrides (only where and how it runs may change: "
            "paths.*, threads=, verbose= and hydra.* settings), or start a new run from the "
            f"checkpoint with ckpt_path={Path(resume) / CHECKPOINTS['last']} plus your overrides."
        )
    run_dir = Path(resume).expanduser()
    moved = [o for o in overrides if override_key(o) in ("hydra.run.dir", "paths.output_dir")]
    if moved:
        raise ConfigError(
            f"resume={run_dir} continues the run in its own directory, but {moved[0]} would "
            "put it (or part of it) elsewhere. Drop it; to continue the run in another place, "
            "copy or move its directory there and resume that."
        )
    recorded = read_results(run_dir)
    if recorded.get("status") == "completed":
        raise ConfigError(
            f"resume={run_dir}: this run has completed (results.json says so); there is "
            f"nothing to continue. Re-test it with {command('eval.py', run=run_dir)}, or start a "
            "new run to train longer."
        )
    apply_run_settings(saved, cfg, overrides)
    # Killed before its first checkpoint: the run starts again from step 0, in its directory.
    checkpoint, note = resume_checkpoint(run_dir)
    threads = recorded.get("threads")
    threads = threads if type(threads) is int and threads > 0 else None
    return RunPlan(
        saved,
        saved_overrides(run_dir, "resume"),
        checkpoint,
        "resume",
        True,
        note,
        threads,
        saved_choices(run_dir),
    )


def saved_choices(run_dir: Path) -> dict[str, Any]:
    """The config-group choices Hydra recorded when the run started (`.hydra/hydra.yaml`);
    {} when that file is missing or unreadable (the labels then say "none")."""
    try:
        hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
        choices = OmegaConf.select(hydra, "hydra.runtime.choices")
        return dict(OmegaConf.to_container(choices)) if choices is not None else {}
    except Exception:
        return {}


def saved_overrides(run_dir: Path, key: str) -> list[str]:
    """The command-line overrides a run was started with (`.hydra/overrides.yaml`): its name
    and results.json's record. [] when the file is absent or holds no list (they describe
    the run, nothing is built from them); ConfigError when it cannot be read at all."""
    path = run_dir / OVERRIDES
    if not path.is_file():
        return []
    try:
        original = OmegaConf.load(path)
    except Exception as err:  # a YAML syntax error, a binary file, no permission
        first_line = (str(err).splitlines() or [""])[0]
        raise ConfigError(
            f"{key}={run_dir}: its saved overrides {path} cannot be read "
            f"({type(err).__name__}: {first_line}). The run directory is damaged; restore "
            ".hydra/overrides.yaml from a copy, or delete it (the run then keeps its config "
            "but is named 'default')."
        ) from None
    if not OmegaConf.is_list(original):
        return []
    return [str(o) for o in original]


def apply_run_settings(saved: DictConfig, composed: DictConfig, overrides: list[str]) -> None:
    """Put the overrides that accompany resume= (`paths.data_dir=...`, `threads=4`) onto the
    run's saved config, with the values Hydra composed them to in `composed`. Unresolved: an
    interpolation (`${paths.root_dir}/data`) then resolves within the resumed run's config.
    `hydra.*` settings are Hydra's own and already apply; the output folder stays pinned."""
    pinned = saved.paths.output_dir  # the run's own directory (saved_config)
    for override in overrides:
        key = override_key(override).replace("/", ".")
        if key == "resume" or key == "hydra" or key.startswith("hydra."):
            continue
        parent, _, leaf = key.rpartition(".")
        if str(override).startswith("~"):
            node = OmegaConf.select(saved, parent) if parent else saved
            if isinstance(node, DictConfig) and leaf in node:
                with open_dict(node):
                    del node[leaf]
            continue
        source = OmegaConf.select(composed, parent) if parent else composed
        value = OmegaConf.to_container(source, resolve=False)[leaf]
        OmegaConf.update(saved, key, value, merge=False, force_add=True)
    with open_dict(saved):
        saved.paths.output_dir = pinned  # `paths=<option>` replaces the whole node


def resume_checkpoint(run_dir: Path) -> tuple[Path | None, str]:
    """The checkpoint a resumed run continues from: last.ckpt, or when it cannot be read (a
    crash mid-write on a file system without atomic renames, a damaged copy) the newest
    checkpoint that can, said in the note. None when the run never wrote one; ConfigError when
    it wrote some and none can be read (starting over would discard the run)."""
    last = run_dir / CHECKPOINTS["last"]
    found = (
        sorted((run_dir / "checkpoints").glob("*.ckpt"))
        if (run_dir / "checkpoints").is_dir()
        else []
    )
    if not found:
        return None, ""
    readable: list[tuple[tuple[int, int, bool], Path]] = []
    problems: list[str] = []
    for path in found:
        try:
            state = load_checkpoint(path, "resume")
        except ConfigError as err:
            problems.append(f"{path.name}: {str(err).split(': ', 1)[-1].split('. ')[0]}")
            continue
        rank = (int(state.get("epoch", -1)), int(state.get("global_step", -1)), path == last)
        readable.append((rank, path))
    if not readable:
        raise ConfigError(
            f"resume={run_dir}: none of its checkpoints can be read ({'; '.join(problems)}), "
            "so it cannot be continued, and starting over would discard it. Restore "
            "checkpoints/ from a copy, or start a new run; nothing was changed."
        )
    newest = max(readable)[1]
    if newest == last:
        return last, ""
    why = "is missing" if not last.exists() else "cannot be read"
    return newest, (
        f"checkpoints/last.ckpt {why}; resuming from the newest readable checkpoint, "
        f"checkpoints/{newest.name} (epoch {max(readable)[0][0]}): the run repeats the epochs "
        "after it."
    )


def user_checkpoint(ckpt_path: str | None) -> Path | None:
    """The checkpoint named by the `ckpt_path` key, checked to exist."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) in ("last", "best", "hpc", "registry"):
        # Lightning would look for these in the new run's empty folder and silently train
        # from scratch.
        raise ConfigError(
            f"ckpt_path={ckpt_path} would look in this new run's own (empty) folder. To "
            "continue an earlier run use resume=<its run dir>; to start from a checkpoint "
            "give its file, e.g. ckpt_path=logs/runs/<run>/checkpoints/last.ckpt."
        )
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path}: no such file. Give the path of a .ckpt file, e.g. "
            "ckpt_path=logs/runs/<run>/checkpoints/last.ckpt."
        )
    return path


def load_checkpoint(path: Path, key: str = "ckpt_path") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`, refusing files that carry pickled code."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise ConfigError(
            f"{key}={path}: refused to load: the file holds pickled Python objects{what}, "
            "which could run code when loaded. normlab reads checkpoints with "
            "torch.load(weights_only=True); use a checkpoint written by normlab, or re-save "
            "this one's weights as a plain state_dict if you trust its source."
        ) from None
    except Exception as err:  # truncated, empty, or not a torch file at all
        first_line = (str(err).splitlines() or [""])[0]
        raise ConfigError(
            f"{key}={path}: not a readable PyTorch checkpoint ({type(err).__name__}: "
            f"{first_line}). Point {key} at a .ckpt file written by normlab."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(
            f"{key}={path}: not a Lightning checkpoint (no 'state_dict'). Point {key} at a "
            ".ckpt file from a run's checkpoints/ folder."
        )
    return checkpoint


def network_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's own entries of a LightningModule state dict, without the `net.` prefix."""
    return {
        name.removeprefix(NET_PREFIX): tensor
        for name, tensor in state_dict.items()
        if name.startswith(NET_PREFIX)
    }


def check_architecture(checkpoint: dict[str, Any], net: nn.Module, path: Path, key: str) -> None:
    """ConfigError unless the checkpoint's network weights fit `net` name for name and shape."""
    saved = {n: tuple(t.shape) for n, t in network_weights(checkpoint["state_dict"]).items()}
    wanted = {name: tuple(tensor.shape) for name, tensor in net.state_dict().items()}
    if saved == wanted:
        return
    missing = [n for n in wanted if n not in saved]
    extra = [n for n in saved if n not in wanted]
    reshaped = [n for n in wanted if n in saved and saved[n] != wanted[n]]
    problems = []
    if missing:
        problems.append(f"it lacks {len(missing)} of this network's tensors ({examples(missing)})")
    if extra:
        problems.append(f"it has {len(extra)} this network lacks ({examples(extra)})")
    if reshaped:
        name = reshaped[0]
        problems.append(
            f"{len(reshaped)} differ in shape ({name}: {list(saved[name])} there, "
            f"{list(wanted[name])} here)"
        )
    model = checkpoint.get("hyper_parameters", {}).get("model", {})
    raise ConfigError(
        f"{key}={path} was saved by a different architecture ({describe_model(model)}): "
        f"{'; '.join(problems)}. Use the model options the checkpoint was trained with (see "
        "its run's .hydra/config.yaml), or a checkpoint of this model."
    )


def examples(names: list[str]) -> str:
    return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")


def describe_model(model: Mapping[str, Any]) -> str:
    """`SeedCNN with norm=BatchNorm2d, dropout=Dropout`, from a model config's `_target_`s."""

    def name(node: Any) -> str:
        if not isinstance(node, Mapping):
            return "?"
        # Checkpoints written before norms and dropouts were `_target_`s name them `name`.
        return str(node.get("_target_") or node.get("name") or "?").rsplit(".", 1)[-1]

    if not model:
        return "another network"
    return (
        f"{name(model)} with norm={name(model.get('norm'))}, dropout={name(model.get('dropout'))}"
    )


def history_from_last_checkpoint(checkpoint_dirs: list[Path]) -> list[dict[str, float]]:
    """The per-epoch history saved in `last.ckpt`.

    Under `strategy=ddp_spawn` training happens in child processes, and the MetricHistory of
    the process that writes results.json never sees an epoch; the checkpoint holds them.
    [] when the file cannot be read: this runs while a failed run records its results, and
    a damaged last.ckpt must not replace the error that stopped the run.
    """
    for folder in checkpoint_dirs:
        path = Path(folder) / CHECKPOINTS["last"].name
        if path.is_file():
            try:
                states = load_checkpoint(path, "checkpoint").get("callbacks")
            except NormlabError:
                return []
            history = states.get("MetricHistory") if isinstance(states, dict) else None
            epochs = history.get("epochs") if isinstance(history, dict) else None
            return list(epochs) if isinstance(epochs, list) else []
    return []


# --- one process per run directory ----------------------------------------------------------

_claims: dict[Path, FolderLock] = {}


def holds_run(folder: Path) -> bool:
    """Whether `folder` already holds a training run's results or checkpoints."""
    return (folder / "results.json").exists() or (folder / "checkpoints").is_dir()


def secondary_rank() -> bool:
    """A process Lightning (or a cluster) started for DDP rank > 0: it shares rank 0's folder."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in RANK_VARIABLES)


RANK_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID")


def lock_folder(folder: str | Path, what: str, key: str) -> None:
    """Hold `folder`'s lock until this process ends (or `release_folder`); ConfigError when
    another process holds it."""
    folder = absolute_path(folder)
    if folder in _claims:
        return
    with reraise_disk_full(folder.parent, f"could not create {folder.name}"):
        folder.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(folder)
    if not lock.acquire():
        raise ConfigError(
            f"{key}={folder}: another process is using this {what} right now (it holds the "
            "folder's lock). Wait for it to finish, or stop it first; two processes writing "
            "one folder would overwrite each other's checkpoints and results."
        )
    _claims[folder] = lock


def release_folder(folder: str | Path) -> None:
    """Let go of `folder`'s lock, if this process holds it."""
    lock = _claims.pop(absolute_path(folder), None)
    if lock is not None:
        lock.release()


def claim_run_dir(run_dir: str | Path, resumed: bool, key: str = "hydra.run.dir") -> None:
    """Create and lock the run directory for this process.

    A new run refuses a folder that already holds a run (resume= is how to continue one); two
    processes never share one run directory (two resume= of one run: the second refuses).
    """
    if secondary_rank():
        return
    run_dir = absolute_path(run_dir)

    def refuse_existing() -> None:
        if not resumed and holds_run(run_dir):
            raise ConfigError(
                f"{key}={run_dir} already holds a run (results.json or checkpoints/), and a new "
                f"run would overwrite it. Continue it with {command('train.py', resume=run_dir)}, "
                f"re-test it with {command('eval.py', run=run_dir)}, or give the "
                "new run another folder (leave hydra.run.dir out for a fresh one)."
            )

    refuse_existing()
    lock_folder(run_dir, "run directory", "resume" if resumed else key)
    try:
        refuse_existing()  # created by another process between the check and the lock
    except ConfigError:
        release_folder(run_dir)
        raise
    # Temporary files of writes a crash cut short (normlab.files.atomic_open): with the lock
    # held, no other process is writing them.
    for stale in (*run_dir.glob(".*.tmp"), *run_dir.glob("checkpoints/.*.tmp")):
        if re.fullmatch(r"\..+\.[0-9a-f]{8}\.tmp", stale.name):
            stale.unlink(missing_ok=True)
