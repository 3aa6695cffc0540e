"""Learning-rate schedules, stepped once per optimizer step.

The total number of steps is only known once the Trainer has seen the data, so the
LightningModule calls `build_scheduler` from `configure_optimizers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR

SCHEDULERS = ("none", "cosine", "onecycle")


def build_scheduler(
    optimizer: Optimizer, spec: Mapping[str, Any] | None, total_steps: int
) -> LRScheduler | None:
    """The scheduler a `conf/scheduler/*.yaml` spec names, or None for `none`.

    cosine: anneal from the optimizer's lr to `min_lr` over the run (Loshchilov & Hutter, 2017).
    onecycle: warm up to the optimizer's lr for `pct_start` of the run, then anneal
    (Smith & Topin, 2019); `div_factor` and `final_div_factor` as in PyTorch.
    """
    options = dict(spec or {})
    name = options.pop("name", "none")
    if name == "none":
        return None
    total_steps = max(1, int(total_steps))
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=options.get("min_lr", 0.0))
    if name == "onecycle":
        return OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=options.get("pct_start", 0.25),
            div_factor=options.get("div_factor", 25.0),
            final_div_factor=options.get("final_div_factor", 1e4),
            anneal_strategy=options.get("anneal_strategy", "cos"),
        )
    raise ValueError(f"scheduler.name={name!r}: choose one of {list(SCHEDULERS)}")
