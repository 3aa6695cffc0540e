"""The console of a run: what a person reads, the same lines as `train.log`.

conf/hydra/default.yaml plugs these into Hydra's logging: messages without timestamps on the
console (`train.log` keeps them), written around a live progress bar instead of into it, and in
a sweep only one line per job (the job's final figures) plus warnings and errors; each job's
`train.log` still holds its whole story.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from tqdm import tqdm

# The logger of the lines a sweep prints, one per job.
JOB_SUMMARY = "normlab.job"


class ConsoleFormatter(logging.Formatter):
    """The message alone; `warning:` / `error:` in front of those."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


class ConsoleHandler(logging.StreamHandler):
    """A StreamHandler that writes through tqdm, so a line never runs into a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:
            self.handleError(record)


class SweepConsole(logging.Filter):
    """In a multirun, keep only warnings, errors and each job's summary line on the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.name.startswith("hydra") and str(record.msg).startswith("\t#"):
            # The launchers' "#3 : model=cnn seed=1" as each job starts (a sweep is the only
            # place they occur): the job's summary line names it when it ends.
            return False
        if not in_multirun():
            return True
        # Hydra's own lines ("Launching 4 jobs", the sweep report) and the jobs' summaries.
        return record.name == JOB_SUMMARY or record.name.startswith("hydra")


def in_multirun(hydra_cfg: Mapping[str, Any] | None = None) -> bool:
    """Whether `hydra_cfg` (a config's `hydra` node; by default this process's, when Hydra
    runs it) belongs to a --multirun. Never raises: a logging filter and error paths ask."""
    try:
        if hydra_cfg is None:
            if not HydraConfig.initialized():
                return False
            hydra_cfg = HydraConfig.get()
        mode = hydra_cfg.get("mode")
        return mode == RunMode.MULTIRUN or str(mode) == "MULTIRUN"
    except Exception:
        return False


def launcher_target(hydra_cfg: Mapping[str, Any] | None = None) -> str:
    """The `_target_` of Hydra's launcher (from the `hydra` node given, else this run's)."""
    if hydra_cfg is None:
        if not HydraConfig.initialized():
            return ""
        hydra_cfg = HydraConfig.get()
    return str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")


def hide_srun_hint_outside_slurm() -> None:
    """Drop Lightning's "The `srun` command is available on your system but is not used"
    where no SLURM job runs this process.

    Lightning says it whenever an `srun` executable is on PATH (any machine with SLURM's
    client installed: a login node, a workstation) and the process was not started by
    `srun`: every run, sweep job and notebook cell. Outside a SLURM allocation there is
    nothing to prepend. Inside one (SLURM_JOB_ID is set: `sbatch`, `salloc`) it is the
    warning that matters: a multi-device run started without `srun` hangs.
    """
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message="The `srun` command is available on your system")
