"""Learning-rate schedules, stepped once per optimizer step.

Each is configured as a partial (`conf/scheduler/*.yaml`: `_target_` + `_partial_: true` +
options) and called by the LightningModule as `schedule(optimizer, total_steps=...)`, because
the number of steps is only known once the Trainer has seen the data. Any function or class
with that signature can be a `_target_`.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR


def cosine(optimizer: Optimizer, total_steps: int, min_lr: float = 0.0) -> CosineAnnealingLR:
    """Anneal from the optimizer's lr to `min_lr` over the run (Loshchilov & Hutter, 2017)."""
    return CosineAnnealingLR(optimizer, T_max=max(1, int(total_steps)), eta_min=min_lr)


def onecycle(
    optimizer: Optimizer,
    total_steps: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
) -> OneCycleLR:
    """Warm up to the optimizer's lr for `pct_start` of the run, then anneal (Smith & Topin,
    2019); `div_factor` and `final_div_factor` as in PyTorch."""
    return OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=max(1, int(total_steps)),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        anneal_strategy=anneal_strategy,
    )
