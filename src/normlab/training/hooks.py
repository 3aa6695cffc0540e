"""Per-batch hooks called only on the objects that implement them.

Lightning calls each per-batch hook (six a training step, two an evaluation step) on every
callback and on the LightningModule, through a dispatcher that formats a profiler label and,
for a `ModelCheckpoint`, builds its state key on each call. Most callbacks implement none of
these hooks, so at batch 4 on a CPU the calls of empty base-class methods cost a sizeable part
of the step. Lightning skips a hook whose attribute is not callable, so an object that
inherits a per-batch hook unchanged from the base class gets `None` in its place: the same
behaviour (the base hooks do nothing), without the calls. Hooks the class overrides, and every
per-epoch or per-run hook, are left alone.
"""

from __future__ import annotations

from typing import Any

TRAINING_STEP_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)
PER_BATCH_HOOKS = (
    *TRAINING_STEP_HOOKS,
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


def skip_inherited_batch_hooks(
    obj: Any, base: type, hooks: tuple[str, ...] = PER_BATCH_HOOKS
) -> list[str]:
    """Set each of `hooks` that `type(obj)` inherits from `base` unchanged to None on `obj`
    (an instance attribute; the class is untouched). Returns the hooks it disabled.

    For a LightningModule pass `TRAINING_STEP_HOOKS`: Lightning inspects the signatures of
    its evaluation batch hooks, which must stay methods."""
    skipped = []
    for name in hooks:
        default = getattr(base, name, None)
        if default is not None and getattr(type(obj), name, None) is default:
            setattr(obj, name, None)
            skipped.append(name)
    return skipped
