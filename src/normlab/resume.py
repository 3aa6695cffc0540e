"""Resume an interrupted run in its own directory, and load checkpoints safely.

`python train.py resume=<run dir>` re-runs the config saved in `<run dir>/.hydra/config.yaml`
in that same directory, from `checkpoints/last.ckpt` (written after every epoch). Two
resolvers used by `conf/hydra/default.yaml` point Hydra at the old directory and stop it from
writing a new `.hydra/` over the saved config.

Checkpoints are only ever read with `torch.load(weights_only=True)`: tensors and plain
containers, never pickled code. This module is imported by `normlab/__init__.py` for its
resolvers, so torch is imported inside the functions that need it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from normlab.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# Overrides that may accompany resume=: where things are, not what is trained.
NEUTRAL_PREFIXES = ("resume=", "hydra.", "paths.")


def run_dir_resolver(resume: str | None, new_dir: str) -> str:
    """`hydra.run.dir`: the resumed run's own directory, or a new one."""
    return str(resume) if resume else new_dir


def config_subdir_resolver(resume: str | None) -> str | None:
    """`hydra.output_subdir`: a resumed run keeps the `.hydra/` it was started with."""
    return None if resume else ".hydra"


def register_resolvers() -> None:
    for name, resolver in (
        ("run_dir", run_dir_resolver),
        ("config_subdir", config_subdir_resolver),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


@dataclass(frozen=True)
class ResumedRun:
    run_dir: Path
    config: DictConfig  # as the run was started (interpolations unresolved)
    overrides: list[str]  # its original command-line overrides
    checkpoint: Path | None  # its last completed epoch; None if killed before the first


def load_run(resume: str | Path, extra_overrides: list[str] | None = None) -> ResumedRun:
    """Read what a run directory needs to be resumed; ConfigError when it cannot be."""
    run_dir = Path(resume).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(
            f"resume={resume}: no such run directory. Pass the folder of an earlier run, e.g. "
            "resume=logs/runs/2025-01-31_12-00-00_12345 (it holds .hydra/ and checkpoints/)."
        )
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(
            f"resume={resume}: {run_dir / CONFIG} is missing, so the run's config is unknown "
            "(it was stopped before Hydra saved it, or this is not a run directory). Start the "
            "run again without resume=."
        )
    changed = [o for o in extra_overrides or [] if not o.startswith(NEUTRAL_PREFIXES)]
    if changed:
        raise ConfigError(
            f"resume= continues a run exactly as it was configured, but {' '.join(changed)} "
            "would change it. Drop those overrides, or start a new run from the checkpoint "
            f"with ckpt_path={run_dir / LAST_CHECKPOINT} plus your overrides."
        )
    config = OmegaConf.load(run_dir / CONFIG)
    overrides = OmegaConf.load(run_dir / OVERRIDES) if (run_dir / OVERRIDES).is_file() else []
    checkpoint = run_dir / LAST_CHECKPOINT
    return ResumedRun(
        run_dir=run_dir,
        config=config,
        overrides=[str(o) for o in overrides],
        checkpoint=checkpoint if checkpoint.is_file() else None,
    )


def checkpoint_path(ckpt_path: str | None) -> Path | None:
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
    import pickle

    import torch

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
    except (RuntimeError, EOFError, OSError) as err:
        raise ConfigError(
            f"{key}={path}: not a readable PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). Point {key} at a .ckpt file written by normlab."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(
            f"{key}={path}: not a Lightning checkpoint (no 'state_dict'). Point {key} at a "
            ".ckpt file from a run's checkpoints/ folder."
        )
    return checkpoint


def check_architecture(checkpoint: dict[str, Any], net: nn.Module, path: Path, key: str) -> None:
    """ConfigError unless the checkpoint's network weights fit `net` name for name and shape."""
    saved = {
        name.removeprefix("net."): tuple(tensor.shape)
        for name, tensor in checkpoint["state_dict"].items()
        if name.startswith("net.")
    }
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
    described = describe_model(model) if model else "another network"
    raise ConfigError(
        f"{key}={path} was saved by a different architecture ({described}): "
        f"{'; '.join(problems)}. Use the model options the checkpoint was trained with (see "
        "its run's .hydra/config.yaml), or a checkpoint of this model."
    )


def examples(names: list[str]) -> str:
    return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")


def describe_model(model: dict[str, Any]) -> str:
    target = str(model.get("_target_", "?")).rsplit(".", 1)[-1]
    norm = model.get("norm", {}).get("name", "?")
    dropout = model.get("dropout", {}).get("name", "?")
    return f"{target} with norm={norm}, dropout={dropout}"


def checkpoint_to_load(cfg: DictConfig, resumed: ResumedRun | None) -> tuple[Path | None, str]:
    """The checkpoint a run starts from and the key that named it (for messages)."""
    if resumed is not None and resumed.checkpoint is not None:
        return resumed.checkpoint, "resume"
    return checkpoint_path(cfg.get("ckpt_path")), "ckpt_path"


# Checkpoints already verified in this process. A single run is checked by the preflight
# Hydra callback and again by `normlab.run.train` (which must also check sweep jobs and direct
# calls); the second check of the same file for the same architecture is free.
_VERIFIED: set[tuple] = set()


def verify_checkpoint(path: Path, key: str, net: nn.Module) -> None:
    """Refuse pickled code and checkpoints of another architecture, before any data is read."""
    shapes = tuple((name, tuple(t.shape)) for name, t in net.state_dict().items())
    signature = (str(path.resolve()), path.stat().st_mtime_ns, shapes)
    if signature in _VERIFIED:
        return
    check_architecture(load_checkpoint(path, key), net, path, key)
    _VERIFIED.add(signature)


def history_from_last_checkpoint(checkpoint_dirs: list[Path]) -> list[dict[str, float]]:
    """The per-epoch history saved in `last.ckpt`.

    Under `strategy=ddp_spawn` training happens in child processes, and the MetricHistory of
    the process that writes results.json never sees an epoch; the checkpoint holds them.
    """
    for folder in checkpoint_dirs:
        path = Path(folder) / LAST_CHECKPOINT.name
        if path.is_file():
            states = load_checkpoint(path, "checkpoint").get("callbacks", {})
            return list(states.get("MetricHistory", {}).get("epochs", []))
    return []
