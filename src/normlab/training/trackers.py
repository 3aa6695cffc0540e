"""Experiment trackers beyond TensorBoard: MLflow and Weights & Biases (logger=mlflow,
logger=wandb). Lightning's own loggers log the per-epoch metrics; this module adds what
normlab records at the end of a run (the values that define it, its status and its final
metrics) and the defaults that keep both offline unless told otherwise."""

from __future__ import annotations

import netrc
import os
from collections.abc import Iterable, Mapping
from typing import Any

from lightning.pytorch.loggers import Logger


def tracker_tags(tags: Iterable[Any] | None) -> dict[str, str]:
    """normlab's `tags: [a, b]` as MLflow tags (MLflow's are key/value): `{a: "true", ...}`."""
    return {str(tag): "true" for tag in tags or ()}


def wandb_mode(environ: Mapping[str, str] | None = None) -> str:
    """W&B's mode: WANDB_MODE when set; "online" with credentials (WANDB_API_KEY or a
    `wandb login` entry in ~/.netrc); else "offline", so a run never stops to ask."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


def is_tracker(logger: Logger) -> bool:
    """MLflow or W&B (checked by name: neither package needs to be installed)."""
    return type(logger).__name__ in ("MLFlowLogger", "WandbLogger")


def record_final(
    logger: Logger, params: Mapping[str, Any], metrics: Mapping[str, float], step: int
) -> None:
    """The run's defining values and status as params, its final metrics (test/acc,
    val/acc_best, ...)."""
    logger.log_hyperparams(dict(params))
    logger.log_metrics(dict(metrics), step=step)
    logger.finalize("success")
