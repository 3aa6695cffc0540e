"""What a run directory holds, read back: its saved config, its overrides and its checkpoints.

`python train.py resume=<run dir>` re-runs the config saved in `<run dir>/.hydra/config.yaml`
in that same directory, from `checkpoints/last.ckpt` (written after every epoch); `eval.py` and
`predict` read the same files. Checkpoints are only ever read with
`torch.load(weights_only=True)`: tensors and plain containers, never pickled code.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from normlab.errors import ConfigError

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
CHECKPOINTS = {"best": Path("checkpoints") / "best.ckpt", "last": Path("checkpoints") / "last.ckpt"}
# Overrides that may accompany resume=: where things are, not what is trained.
NEUTRAL_PREFIXES = ("resume=", "hydra.", "paths.")
# The network's weights inside the LightningModule's state dict (`ImageClassifier.net`).
NET_PREFIX = "net."


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
            f"holding .hydra/ and checkpoints/ (e.g. {key}=logs/runs/2026-01-31_12-00-00_1234; "
            "for a sweep, one job's folder: logs/multiruns/<time>/0)."
        )
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(
            f"{key}={run_dir}: {path} is missing, so the run's config is unknown: this is not a "
            "normlab run directory, or the run was stopped before Hydra saved its config. For "
            "a sweep, pass one job's folder, e.g. logs/multiruns/<time>/0."
        )
    cfg = OmegaConf.load(path)
    with open_dict(cfg):
        # Saved as ${hydra:runtime.output_dir}, which would now name another directory.
        cfg.paths.output_dir = str(run_dir)
    return cfg


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


def plan_run(cfg: DictConfig, overrides: list[str]) -> RunPlan:
    """Resolve `resume=` and `ckpt_path=`; ConfigError when either cannot work."""
    if not cfg.get("resume"):
        return RunPlan(cfg, overrides, user_checkpoint(cfg.get("ckpt_path")), "ckpt_path", False)
    resume = cfg.resume
    changed = [o for o in overrides if not o.startswith(NEUTRAL_PREFIXES)]
    saved = saved_config(resume, "resume")
    if changed:
        raise ConfigError(
            f"resume= continues a run exactly as it was configured, but {' '.join(changed)} "
            "would change it. Drop those overrides, or start a new run from the checkpoint "
            f"with ckpt_path={Path(resume) / CHECKPOINTS['last']} plus your overrides."
        )
    run_dir = Path(resume).expanduser()
    original = OmegaConf.load(run_dir / OVERRIDES) if (run_dir / OVERRIDES).is_file() else []
    last = run_dir / CHECKPOINTS["last"]
    # Killed before its first checkpoint: the run starts again from step 0, in its directory.
    checkpoint = last if last.is_file() else None
    return RunPlan(saved, [str(o) for o in original], checkpoint, "resume", True)


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
    """
    for folder in checkpoint_dirs:
        path = Path(folder) / CHECKPOINTS["last"].name
        if path.is_file():
            states = load_checkpoint(path, "checkpoint").get("callbacks", {})
            return list(states.get("MetricHistory", {}).get("epochs", []))
    return []
