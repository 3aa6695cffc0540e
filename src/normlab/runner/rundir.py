"""What a run directory holds, read back: its saved config, its overrides and its plan.

`python train.py resume=<run dir>` re-runs the config saved in `<run dir>/.hydra/config.yaml`
in that same directory, from `checkpoints/last.ckpt` (written after every epoch); `eval.py` and
`predict` read the same files. The saved config is checked to build only trusted targets
(`normlab.runner.trust`); checkpoints are read by `normlab.runner.checkpoints`; the folder's
lock is `normlab.runner.claims`. Their names are importable from here as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from normlab.errors import ConfigError
from normlab.files import absolute_path
from normlab.runner.checkpoints import (
    CHECKPOINTS,
    NET_PREFIX,
    check_architecture,
    checkpoint_path,
    history_from_last_checkpoint,
    load_checkpoint,
    network_weights,
    resume_checkpoint,
    user_checkpoint,
)
from normlab.runner.claims import (
    claim_run_dir,
    holds_run,
    lock_folder,
    release_folder,
    secondary_rank,
)
from normlab.runner.commands import command
from normlab.runner.names import is_run_setting, override_key
from normlab.runner.trust import allowlisted, check_trusted_targets, config_dirs, walk_targets

__all__ = [  # re-exported: callers import them from here
    "NET_PREFIX",
    "allowlisted",
    "check_architecture",
    "checkpoint_path",
    "claim_run_dir",
    "config_dirs",
    "history_from_last_checkpoint",
    "holds_run",
    "load_checkpoint",
    "lock_folder",
    "network_weights",
    "release_folder",
    "secondary_rank",
    "walk_targets",
]

log = logging.getLogger("normlab")

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"


def task_overrides() -> list[str]:
    """This run's command-line overrides, as Hydra recorded them."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


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


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """A run's results.json as a dict; empty when it is missing or unreadable."""
    try:
        results = json.loads((Path(run_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return results if isinstance(results, dict) else {}


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
    pinned = saved.paths.output_dir  # the run's own directory (saved_config)
    apply_overrides(saved, cfg, overrides, skipped=("resume",))
    with open_dict(saved):
        saved.paths.output_dir = pinned  # `paths=<option>` replaces the whole node
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


def apply_overrides(
    saved: DictConfig, composed: DictConfig, overrides: Sequence[str], skipped: Iterable[str] = ()
) -> list[str]:
    """Put command-line overrides onto a run's saved config (resume=, eval.py), each with the
    value Hydra composed it to in `composed`: `data.eval_batch_size=500` sets one key,
    `trainer=cpu` replaces the whole node, `~key` deletes one. Unresolved: an interpolation
    (`${paths.root_dir}/data`) then resolves within the run's config. `hydra.*` settings are
    Hydra's own and already apply; keys in `skipped` are the entry point's own. Returns the
    overrides `composed` has no key for (a global group such as experiment=)."""
    absent = []
    for override in overrides:
        key = override_key(override).replace("/", ".")  # model/norm=group -> node model.norm
        if key in skipped or key == "hydra" or key.startswith("hydra."):
            continue
        parent, _, leaf = key.rpartition(".")
        if str(override).startswith("~"):
            node = OmegaConf.select(saved, parent) if parent else saved
            if isinstance(node, DictConfig) and leaf in node:
                with open_dict(node):
                    del node[leaf]
            continue
        source = OmegaConf.select(composed, parent) if parent else composed
        if not isinstance(source, DictConfig) or leaf not in source:
            absent.append(str(override))
            continue
        value = OmegaConf.to_container(source, resolve=False)[leaf]
        OmegaConf.update(saved, key, value, merge=False, force_add=True)
    return absent
