"""Did-you-mean hints for mistyped keys and config-group options (`python train.py` and
`normlab.train`): Hydra's own refusal advises adding the key with `+`, wrong for a typo."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_ABSENT = object()


def unknown_key_message(key: str, candidates: Iterable[str], owner: str = "") -> str:
    parent, _, leaf = key.rpartition(".")
    if hint := template_hint(key):
        return hint
    candidates = sorted(candidates)
    alias = KEY_ALIASES.get(key) if not parent else None
    match = [alias] if alias in candidates else []
    match = match or difflib.get_close_matches(leaf, candidates, n=1, cutoff=0.6)
    where = f" ({owner})" if owner else ""
    hint = f"did you mean {parent + '.' if parent else ''}{match[0]}?" if match else ""
    return (
        f"{key} is not a setting of {parent or 'the config'}{where}; {hint or 'check the key.'}"
        " `python train.py --cfg job` prints every setting."
    )


def unknown_override_hints(overrides: list[str], config_dir: Path, config_name: str) -> list[str]:
    """Messages for command-line `key=value` overrides whose key does not exist.

    Hydra rejects such a key with advice to add it with `+`, which is wrong for a typo; this
    finds the setting the user most likely meant. The config is composed with only the
    group choices on the command line (e.g. `data=digits`), so it has the keys those choices
    bring.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [o for o in overrides if "=" in o and not o.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return []  # Hydra has already explained a malformed override
    hints, groups = [], []
    for o in parsed:
        if o.is_sweep_override() or not (config_dir / o.key_or_group).is_dir():
            continue
        hint = unknown_option_hint(o.key_or_group, o.value(), config_dir)
        if hint:
            hints.append(hint)
        else:
            groups.append(o.input_line)
    keys = [o for o in parsed if not (config_dir / o.key_or_group).is_dir()]
    plain = [
        o.key_or_group
        for o in keys
        if not (o.is_add() or o.is_force_add() or o.is_delete() or o.is_hydra_override())
    ]
    added = [o for o in keys if o.is_add()]
    if not plain and not added:
        return hints
    cfg = composed(config_dir, config_name, groups)
    if cfg is None:
        return hints
    for o in added:  # `+trainer.precision=16`: Hydra's "Could not append", the key exists
        if OmegaConf.select(cfg, o.key_or_group, default=_ABSENT) is not _ABSENT:
            plain_form = o.input_line.lstrip("+")
            hints.append(
                f"+{o.key_or_group} adds a new key, but {o.key_or_group} is a setting already: "
                f"drop the +, e.g. {plain_form} (or ++{plain_form} to set it either way)."
            )
    return hints + [hint for key in plain if (hint := unknown_key_hint(cfg, key))]


def composed(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig | None:
    """The config composed with `overrides` (the group choices), None when it cannot be."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name, overrides=overrides)
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()


def unknown_key_hint(cfg: DictConfig, key: str) -> str | None:
    """What the setting `key` (not in `cfg`) was probably meant to be; None when it exists."""
    if hint := template_hint(key):
        return hint
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        # keys(), not `in`: a key whose value is still `???` is not "in" a DictConfig.
        if not isinstance(node, DictConfig) or part not in node.keys():  # noqa: SIM118
            known = list(node.keys()) if isinstance(node, DictConfig) else []
            return unknown_key_message(".".join(parts[: depth + 1]), known)
        if OmegaConf.is_missing(node, part):
            return None
        node = node[part]
    return None


# Option names lightning-hydra-template users type, and normlab's own.
OPTION_ALIASES = {
    "debug": {"profiler": "profile", "default": "fast", "limit": "fast"},
    "logger": {"many_loggers": "many", "tensorboard_csv": "many"},
    "trainer": {"mps": "gpu"},
    "callbacks": {"null": "none"},
}
# Top-level keys of lightning-hydra-template that normlab names otherwise.
KEY_ALIASES = {"task_name": "name"}
# lightning-hydra-template's key paths and normlab's (its model node nests the optimizer,
# scheduler and network; a key below one of these moves with it).
TEMPLATE_KEYS = {
    "model.optimizer": "optimizer",
    "model.scheduler": "scheduler",
    "model.net": "model",
    "model.lr": "optimizer.lr",
    "model.compile": "compile",
}
TEMPLATE_NODES = ("model.optimizer", "model.scheduler", "model.net")
# Its keys that normlab has no counterpart for: what to do instead.
TEMPLATE_ADVICE = {
    "extras": (
        "lightning-hydra-template's extras (print_config, ignore_warnings, enforce_tags) are "
        "not needed here: every run saves its resolved config as config_resolved.yaml, "
        "verbose=true also prints it and `python train.py --cfg job` prints it without "
        "running; drop the override."
    ),
    "train": (
        "train.py always trains. To test a checkpoint without training, use "
        "`python eval.py ckpt_path=<file.ckpt>` (or run=<run dir>); drop the override."
    ),
    "test": (
        "every run tests its best checkpoint once, at the end (results.json's test_acc); "
        "trainer.limit_test_batches=0 skips it. Drop the override."
    ),
    "data.num_workers": (
        "normlab's datamodules keep the decoded images in memory and cut batches by indexing in "
        "the training process (docs/performance.md), so there are no loader workers to set; "
        "drop the override."
    ),
    "trainer.tpu_cores": (
        "Lightning 2 has no tpu_cores: use trainer.accelerator=tpu trainer.devices=8."
    ),
    "callbacks.early_stopping": (
        "normlab's callbacks have no early stopping (its studies compare runs at equal "
        "epochs). Add Lightning's with +callbacks.early_stopping="
        "'{_target_:lightning.pytorch.callbacks.EarlyStopping,monitor:val/acc,mode:max,"
        "patience:3}'; results.json then says stopped_by: early_stopping."
    ),
}


def template_path(key: str) -> str | None:
    """normlab's key for a lightning-hydra-template key path (`model.optimizer.lr` ->
    `optimizer.lr`), or None."""
    for theirs, ours in TEMPLATE_KEYS.items():
        if key == theirs or key.startswith(theirs + "."):
            return ours + key.removeprefix(theirs)
    return None


def template_hint(key: str) -> str | None:
    """What to type instead of lightning-hydra-template's `key`, or None for other keys."""
    if moved := template_path(key):
        example = f"{moved}.<name>" if key in TEMPLATE_NODES else f"{moved}=..."
        where = f"{key} is lightning-hydra-template's place for it; normlab's is {moved}"
        return f"{where} (e.g. {example})."
    parts = key.split(".")
    known = next(
        (
            ".".join(parts[:n])
            for n in range(len(parts), 0, -1)
            if ".".join(parts[:n]) in TEMPLATE_ADVICE
        ),
        None,
    )
    return f"{key} is not a setting here: {TEMPLATE_ADVICE[known]}" if known else None


def unknown_option_hint(group: str, value: Any, config_dir: Path) -> str | None:
    """`debug=profiler is not an option of debug; did you mean debug=profile?`, or None when
    `value` is one of the group's options (or not a plain name)."""
    if not isinstance(value, str) or group.startswith("hydra"):
        return None  # Hydra's groups also hold its plugins' options (hydra/launcher=joblib)
    options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
    if value in options:
        return None
    match = OPTION_ALIASES.get(group, {}).get(value)
    if match not in options:
        close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
        match = close[0] if close else None
    hint = f"did you mean {group}={match}? " if match else ""
    return (
        f"{group}={value} is not an option of {group}; {hint}"
        f"The options: {', '.join(options)} (files in conf/{group}/)."
    )
