"""One preparation step for every run: from a composed config to what the run needs.

`prepare_run` is called once per run, by `normlab.runner.train.train` (train.py, a sweep's
job, `normlab.train`, resume=): the config checked (once: `checks.check_run`, unless
`Preflight` already did for this run directory), torch's threads, the seed, then the network,
LightningModule, datamodule and Trainer, and the three-line header. Any error in building them
is recorded by the `RunRecord` the caller holds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import ModelSummary
from omegaconf import DictConfig, OmegaConf, open_dict

from normlab.files import atomic_open
from normlab.runner.build import build_module, build_network, build_trainer
from normlab.runner.checks import check_run
from normlab.runner.console import in_multirun, launcher_target
from normlab.runner.names import choice, run_name
from normlab.runner.outcome import RunRecord, plural
from normlab.runner.preflight import was_checked
from normlab.runner.rundir import RunPlan, plan_run
from normlab.runner.runstate import retire_eval_record
from normlab.runner.threads import (
    ddp_processes,
    load_warning,
    threads_for_run,
    threads_kept_for_ranks,
)
from normlab.training import ImageClassifier

log = logging.getLogger("normlab")


@dataclass(frozen=True)
class PreparedRun:
    """What a run needs, built once."""

    plan: RunPlan
    config: DictConfig
    choices: dict[str, Any]  # config-group choices: the run's labels
    module: ImageClassifier
    datamodule: L.LightningDataModule
    trainer: L.Trainer


def named_plan(cfg: DictConfig, overrides: list[str]) -> tuple[RunPlan, str]:
    """The run's plan (`resume=`, `ckpt_path=` resolved) and its name, set as `cfg.name` (the
    TensorBoard run's folder: logger.tensorboard.version is ${name})."""
    plan = plan_run(cfg, overrides)
    name = run_name(plan.config.get("name"), plan.overrides)
    with open_dict(plan.config):
        plan.config.name = name
    return plan, name


def prepare_run(plan: RunPlan, name: str, record: RunRecord) -> PreparedRun:
    """Check the planned run (once), set its threads and seed, build what it runs."""
    cfg, output_dir = plan.config, record.output_dir
    if not was_checked(output_dir, forget=True):  # a sweep's job: swept values exist only now
        check_run(plan, multirun=in_multirun(), launcher=launcher_target())
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    ranks = ddp_processes(cfg.get("trainer"))
    threads, why = threads_for_run(cfg.get("threads"), hydra_cfg, ranks)
    if plan.threads is not None and cfg.get("threads") is None:
        threads, why = plan.threads, "the count the run started with (results.json)"
    torch.set_num_threads(threads)
    record.cleanup.enter_context(threads_kept_for_ranks(threads, ranks))
    record.threads = threads
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    net = build_network(cfg.model)
    module = build_module(cfg, net)
    datamodule = instantiate(cfg.data)
    record.trainer = trainer = build_trainer(cfg)
    choices = dict(hydra_cfg.runtime.choices) if hydra_cfg is not None else {}
    if plan.choices is not None:  # resumed: the run's own, not the resume command's
        choices = plan.choices
    announce(cfg, name, net, trainer, choices, output_dir)
    log.info("torch threads: %d (%s; threads=N overrides)", threads, why)
    if warning := load_warning(threads):
        log.warning("%s", warning)
    describe_run(cfg, module, output_dir, show=bool(cfg.get("verbose")))
    if plan.resumed:
        log.info("resuming %s from %s", output_dir, plan.checkpoint or "the start (no checkpoint)")
        if trainer.is_global_zero and (retired := retire_eval_record(output_dir)):
            log.info("eval.json tested checkpoints this run replaces: now %s", retired.name)
    if plan.note:
        log.warning("%s", plan.note)
    return PreparedRun(plan, cfg, choices, module, datamodule, trainer)


@rank_zero_only
def announce(
    cfg: DictConfig,
    name: str,
    net: Any,
    trainer: L.Trainer,
    choices: Mapping[str, Any],
    output_dir: Path,
) -> None:
    """What is training, on what, and where its results go: three lines."""

    def chosen(group: str, node: Any) -> str:
        return choice(choices, group, node) or "none"

    dropout = chosen("model/dropout", cfg.model.get("dropout"))
    dropout_p = OmegaConf.select(cfg, "model.dropout.p", default=None)
    params = sum(param.numel() for param in net.parameters())
    devices = trainer.num_devices * trainer.num_nodes
    device = str(trainer.strategy.root_device.type) + (f" x{devices}" if devices > 1 else "")
    log.info("run %s -> %s", name, output_dir)
    log.info(
        "model %s (%s, %s params): norm %s, dropout %s%s",
        chosen("model", cfg.model),
        type(net).__name__,
        f"{params:,}",
        chosen("model/norm", cfg.model.get("norm")),
        dropout,
        f" p={dropout_p}" if dropout_p is not None and dropout != "none" else "",
    )
    log.info(
        "data %s, batch %s; %s lr %s, schedule %s; %s on %s",
        chosen("data", cfg.data),
        cfg.data.get("batch_size"),
        chosen("optimizer", cfg.optimizer),
        cfg.optimizer.get("lr"),
        chosen("scheduler", cfg.get("scheduler")),
        plural(cfg.trainer.get("max_epochs"), "epoch"),
        device,
    )


@rank_zero_only
def describe_run(cfg: DictConfig, module: ImageClassifier, output_dir: Path, show: bool) -> None:
    """Save what the run is before it starts: the network layer by layer
    (`model_summary.txt`, Lightning's ModelSummary) and the fully resolved config
    (`config_resolved.yaml`; `.hydra/config.yaml` keeps the interpolations). `verbose=true`
    also prints them."""
    summary = str(ModelSummary(module, max_depth=-1))
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    for name, text in (("model_summary.txt", summary), ("config_resolved.yaml", resolved)):
        with atomic_open(output_dir / name) as f:
            f.write(text + ("" if text.endswith("\n") else "\n"))
    if show:
        log.info("model summary (model_summary.txt):\n%s", summary)
        log.info("config (config_resolved.yaml):\n%s", resolved)
