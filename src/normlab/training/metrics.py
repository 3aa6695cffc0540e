"""The per-epoch loss and accuracy, accumulated with two tensor operations per step.

torchmetrics' general-purpose `MeanMetric` and `MulticlassAccuracy` check, cast and broadcast
their inputs and compute confusion statistics on every `update()`; at batch 4 on a CPU that
costs more than the optimizer step. These two are `torchmetrics.Metric`s too (Lightning logs
and resets them, DDP sums their states), but an update only adds to running sums. Their
results are exactly those of `MeanMetric(nan_strategy="disable")` (the mean of the updated
values, summed in float32 in the same order) and of micro-averaged `MulticlassAccuracy` (correct
predictions / predictions, argmax of the logits).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

# Set by torchmetrics' update wrapper on every update: plain values, which need none of
# `nn.Module.__setattr__`'s checks for parameters, buffers and submodules. Private to
# torchmetrics, and no public way exists: its wrapper sets them itself on every update.
_BOOKKEEPING = frozenset({"_computed", "_update_count"})


class _RunningSums(Metric):
    full_state_update = False
    is_differentiable = False

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _BOOKKEEPING:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _value(self) -> torch.Tensor:
        """The value of the sums as they stand (no synchronization)."""
        raise NotImplementedError

    def compute(self) -> torch.Tensor:
        # torchmetrics wraps compute() to first sum the states of every process (DDP).
        return self._value()

    def local_value(self) -> float | None:
        """This process's value so far (e.g. the epoch's running loss for a progress bar),
        computed as `compute()` computes it but without synchronizing with other processes;
        None before the first update. Reading it waits for the device (one host sync), so
        call it now and then, not on every step."""
        # A plain int (reset with the states): no device read to find out.
        if not self.update_count:
            return None
        return float(self._value())


class Mean(_RunningSums):
    """The mean of the values passed to `update()` (each a scalar tensor or number), e.g. the
    per-batch losses of an epoch. No NaN filtering: a NaN loss makes a NaN epoch loss."""

    higher_is_better = None
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        dtype = torch.get_default_dtype()
        self.add_state("total", default=torch.tensor(0.0, dtype=dtype), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=dtype), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor | float) -> None:
        # add_, not +=: an augmented assignment would also call __setattr__ on the state.
        self.total.add_(value)
        self.count.add_(1.0)

    def _value(self) -> torch.Tensor:
        return self.total / self.count


class Accuracy(_RunningSums):
    """Micro-averaged accuracy: correct predictions (argmax over dim 1 of the logits) over
    predictions; 0 before any."""

    higher_is_better = True
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct.add_((logits.argmax(1) == labels).sum())
        self.total.add_(labels.numel())

    def _value(self) -> torch.Tensor:
        correct, total = self.correct.float(), self.total.float()
        return torch.where(total > 0, correct / total.clamp(min=1), torch.zeros_like(total))
