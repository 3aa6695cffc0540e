"""A run's readable name, made of what defines it: `model-cnn_bn+seed-3` (for `model=cnn_bn
seed=3`).

The name is the command-line overrides that change what is trained (where and how it runs,
`hydra.*`, `paths.*`, `threads`, the callbacks and loggers, and labels such as `tags` are left
out), or `name=...` when given.
It ends the run directory's name (`logs/runs/<date>_<time>_<name>_<pid>`) and names the run's
TensorBoard folder, so TensorBoard lists runs by it. Kept to characters that are safe in file
names, in a shell and in a Hydra override (`eval.py run=<run dir>`, `resume=<run dir>`: `=`
and `,` there would be read as Hydra syntax), hence `key-value` items joined by `+`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import OmegaConf

# Overrides that say where or how a run happens, never what it computes: left out of run
# names, and the only ones that may accompany resume= (normlab.runner.rundir.plan_run applies
# them to the resumed run).
RUN_SETTINGS = ("hydra.", "hydra/", "paths.", "paths=")
RUN_SETTING_KEYS = frozenset({"resume", "threads", "verbose"})
# Also left out of run names: what a run records and how it is labelled (callbacks, loggers,
# its name and tags). A resumed run keeps these as they were: they are part of its record.
NOT_DEFINING = (
    *RUN_SETTINGS,
    "callbacks.",
    "callbacks=",
    "callbacks/",
    "logger.",
    "logger=",
)
NOT_DEFINING_KEYS = RUN_SETTING_KEYS | {
    "name",
    "task_name",
    "tags",
    "print_config",
    "optimized_metric",
}
DEFAULT_NAME = "default"
MAX_VALUE = 24  # characters of one value
MAX_NAME = 120  # characters of the whole name (file names allow 255)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@-]+")


def override_key(override: str) -> str:
    """The key (or config group) an override sets: `+model.norm.eps=1` -> `model.norm.eps`."""
    return str(override).lstrip("+~").partition("=")[0]


def is_run_setting(override: str) -> bool:
    """Whether `override` only says where or how the run happens (RUN_SETTINGS)."""
    return str(override).lstrip("+~").startswith(RUN_SETTINGS) or (
        override_key(override) in RUN_SETTING_KEYS
    )


def defines_run(override: str) -> bool:
    """Whether `override` changes what is trained, so that it belongs in the run's name."""
    return not (
        str(override).lstrip("+~").startswith(NOT_DEFINING)
        or override_key(override) in NOT_DEFINING_KEYS
    )


def run_name(name: str | None, overrides: Iterable[str] | None) -> str:
    """`name` made safe for a file name, or the name made of the defining `overrides`."""
    if name:
        return _safe(str(name))[:MAX_NAME] or DEFAULT_NAME
    parts = []
    for override in overrides or ():
        if not defines_run(override):
            continue
        key, _, value = str(override).lstrip("+~").partition("=")
        if "/" in value:  # a path: its last part says which
            value = value.rstrip("/").rsplit("/", 1)[-1]
        value = value.strip("'\"[]")
        if len(value) > MAX_VALUE:
            value = value[: MAX_VALUE - 2] + ".."
        parts.append(f"{key.replace('/', '.')}-{_safe(value)}" if value else key)
    joined = _safe("+".join(parts))
    if len(joined) > MAX_NAME:
        joined = joined[: MAX_NAME - 2].rstrip("+") + ".."
    return joined or DEFAULT_NAME


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-+")


def choice(choices: Mapping[str, Any], group: str, node: Any) -> str | None:
    """What a config group is set to: Hydra's choice (`model/norm: group`), else the class
    name of the node's `_target_` (a group set key by key), else None."""
    if choices.get(group):
        return str(choices[group])
    target = node.get("_target_") if isinstance(node, Mapping) else None
    return str(target).rsplit(".", 1)[-1] if target else None


def defining_hparams(
    cfg: Any, name: str, overrides: Iterable[str], choices: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The values that define a run, for TensorBoard's HParams: which model, norm, dropout,
    data, optimizer and schedule (the config choices, e.g. `model/norm: group`), the numbers a
    study varies (lr, weight decay, batch size, dropout p, seed, epochs), the tags, and every
    key the command line set. Constants such as the eval batch size and paths are left out.

    TensorBoard sorts the HParams columns by name, the ones whose values differ between the
    runs shown first, and displays the first five: a sweep's varied keys are what one sees.
    """
    choices = dict(choices or {})

    def select(key: str) -> Any:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)

    params: dict[str, Any] = {
        "data": choice(choices, "data", select("data")),
        "data/batch_size": select("data.batch_size"),
        "model": choice(choices, "model", select("model")),
        "model/norm": choice(choices, "model/norm", select("model.norm")),
        "model/dropout": choice(choices, "model/dropout", select("model.dropout")),
        "model/dropout/p": select("model.dropout.p"),
        "optimizer": choice(choices, "optimizer", select("optimizer")),
        "optimizer/lr": select("optimizer.lr"),
        "optimizer/weight_decay": select("optimizer.weight_decay"),
        "scheduler": choice(choices, "scheduler", select("scheduler")) or "none",
        "seed": select("seed"),
        "trainer/max_epochs": select("trainer.max_epochs"),
        "tags": ",".join(str(t) for t in (select("tags") or [])),
        "name": name,
    }
    for override in overrides:
        if not defines_run(override):
            continue
        key = override_key(override)
        if key in choices:  # a group: experiment=..., model/norm=...
            params.setdefault(key, str(choices[key]))
            continue
        value = select(key)
        if not OmegaConf.is_config(value):
            params.setdefault(key.replace(".", "/"), value)
    return {key: value for key, value in params.items() if value is not None}
