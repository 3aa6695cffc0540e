"""The `Preflight` Hydra callback: the checks before Hydra creates anything.

A single run is checked here, before Hydra creates its directory, so a mistake leaves nothing
behind; any exception stops the run (fail closed). The run directory is then created and
locked, so no other process writes into it. A sweep gets its folder checked and locked; each
job is checked by `normlab.runner.prepare`, as swept values exist only once it is composed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from normlab.errors import ConfigError, NormlabError
from normlab.files import absolute_path
from normlab.runner.claims import claim_run_dir, holds_run, lock_folder
from normlab.runner.console import launcher_target
from normlab.runner.continue_sweep import ENV as CONTINUE_SWEEP
from normlab.runner.sweep import forward_sigterm_to_workers
from normlab.runner.values import check_config, check_distributed

# This module imports no torch (the checks that need it are imported as they run), so that
# what the config alone shows wrong is answered in about a second.
if TYPE_CHECKING:
    from torch import nn

    from normlab.runner.rundir import RunPlan


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


# Run directories whose single run check_single_run has checked and claimed in this process:
# the run's preparation (normlab.runner.prepare) does not check them again, and Preflight
# stands aside when normlab.train did it before starting Hydra (Preflight can only exit).
_checked: set[Path] = set()


def was_checked(run_dir: str | Path, forget: bool = False) -> bool:
    """Whether check_single_run passed for `run_dir` in this process (`forget`: once)."""
    path = absolute_path(run_dir)
    found = path in _checked
    if forget:
        _checked.discard(path)
    return found


class Preflight(Callback):
    """Runs the checks before Hydra creates anything (see conf/hydra/default.yaml); then
    creates and locks the run (or sweep) directory, so no other process writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if was_checked(str(config.hydra.run.dir)):
            return  # normlab.train checked it, raising instead of exiting
        with exit_before_the_run():
            check_single_run(config)

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


def check_single_run(config: DictConfig) -> RunPlan:
    """The checks before a single run (the composed config with its `hydra` node), then its
    directory created and locked; raises NormlabError. `Preflight` runs this for train.py,
    `normlab.train` before it starts Hydra."""
    launcher = launcher_target(config.hydra)
    resuming = config.get("resume") is not None
    if not resuming:
        check_config(config, launcher=launcher)  # before torch is imported: in about a second
    from normlab.runner.checks import check_planned
    from normlab.runner.rundir import plan_run

    plan = plan_run(config, list(config.hydra.overrides.task))
    if resuming:
        check_config(plan.config, launcher=launcher)  # the run's saved config
    run_dir = Path(str(config.hydra.run.dir))
    check_paths(run_dir, OmegaConf.select(plan.config, "data.root"))
    net = check_planned(plan)
    check_space(run_dir, net)
    claim_run_dir(run_dir, plan.resumed)
    _checked.add(absolute_path(run_dir))
    return plan


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
