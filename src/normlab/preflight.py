"""Checks that run before Hydra creates anything (a Hydra callback, see conf/hydra/default.yaml).

For a single run this is the whole validation: the config, the network it builds, the
checkpoint it would load, the run and data folders, and `resume=`. A mistake therefore exits
with one message and leaves no half-made run directory behind. Sweeps are checked here for
what concerns the whole sweep; each job is validated again by `normlab.run.train`, because
swept values only exist once the job is composed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from normlab.config import check_distributed, check_paths, validate_config
from normlab.errors import ConfigError, NormlabError


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_error():
            check_single_run(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_error():
            check_sweep(config)


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    # Hydra turns exceptions raised in callbacks into warnings and carries on; exit instead.
    try:
        yield
    except NormlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def check_single_run(config: DictConfig) -> None:
    from normlab.resume import checkpoint_to_load, load_run, verify_checkpoint

    resumed = None
    if config.get("resume"):
        resumed = load_run(config.resume, list(config.hydra.overrides.task))
        config_to_run = resumed.config
    else:
        config_to_run = config
    check_paths(config.hydra.run.dir, OmegaConf.select(config_to_run, "data.root"))
    checkpoint, key = checkpoint_to_load(config_to_run, resumed)
    validate_config(config_to_run, launcher=launcher_target(config))
    # Building the network lets the layer factories check norm and dropout options against
    # the real layer widths; the checkpoint is then matched to it. No data is read.
    from normlab.run import build_network

    net = build_network(config_to_run.model)
    if checkpoint is not None:
        verify_checkpoint(checkpoint, key, net)


def check_sweep(config: DictConfig) -> None:
    if config.get("resume"):
        raise ConfigError(
            "resume= continues one run: drop --multirun and resume each interrupted job on "
            "its own, e.g. python train.py resume=logs/multiruns/<sweep>/<job>."
        )
    check_paths(config.hydra.sweep.dir, None)
    check_distributed(config, multirun=True, launcher=launcher_target(config))


def launcher_target(config: DictConfig) -> str:
    return str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
