"""A saved config is data, not code: before anything is built from a run directory, every
`_target_` in its config must be one normlab itself would write (an allowlist of prefixes) or
one named by a `_target_` in this checkout's own `conf/` tree (a researcher's own norm class,
registered by a YAML there). Anything else is refused."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from normlab.errors import ConfigError

# What a saved config may instantiate without the checkout's conf/ naming it: normlab's own
# classes, PyTorch layers and optimizers, Lightning's Trainer, loggers and callbacks.
TRUSTED_PREFIXES = (
    "normlab.",
    "torch.nn.",
    "torch.optim.",
    "lightning.pytorch.loggers.",
    "lightning.pytorch.callbacks.",
)


TRUSTED_NAMES = ("lightning.pytorch.Trainer", "lightning.Trainer")


# normlab's own code that writes files or opens runs is no layer, dataset or callback.
UNTRUSTED_MODULES = (
    "normlab.files",
    "normlab.runner",
    "normlab.bench",
    "normlab.report",
    "normlab.predict",
)


# The checkout's own config folder, for entry points that run without Hydra (predict).
CHECKOUT_CONF = Path(__file__).resolve().parents[3] / "conf"


def config_dirs() -> list[Path]:
    """The folders whose YAML files the user's entry point composes: Hydra's file config
    sources (conf/ and any hydra.searchpath), else this checkout's conf/."""
    dirs: list[Path] = []
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources or []:
            if source.schema == "file" and source.provider in ("main", "command-line"):
                dirs.append(Path(source.path))
    if not dirs and CHECKOUT_CONF.is_dir():
        dirs.append(CHECKOUT_CONF)
    return dirs


@functools.lru_cache(maxsize=8)
def _targets_in(folder: Path, stamp: float) -> frozenset[str]:
    found: set[str] = set()
    for path in sorted(folder.rglob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except Exception:
            continue  # Hydra reports a broken config file itself
        found |= {str(t) for _, t in walk_targets(data) if isinstance(t, str)}
    return frozenset(found)


def conf_targets(dirs: list[Path]) -> frozenset[str]:
    """Every `_target_` value written in the YAML files under `dirs`."""
    found: frozenset[str] = frozenset()
    for folder in dirs:
        if folder.is_dir():
            stamp = max((p.stat().st_mtime for p in folder.rglob("*.yaml")), default=0.0)
            found |= _targets_in(folder.resolve(), stamp)
    return found


def walk_targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every `_target_` at any depth, lists (`_args_`) included."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield where, value
            else:
                yield from walk_targets(value, where)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from walk_targets(value, f"{path}[{index}]")


def allowlisted(target: str) -> bool:
    """Whether `target` names an object under one of TRUSTED_PREFIXES, for real.

    Hydra locates `a.b.c` by importing and then following attributes, so a trusted prefix
    alone proves nothing: `torch.nn.functional.torch.load` reaches torch.load. The object found
    must itself be defined in the trusted package, and no step may be a dunder attribute.
    """
    if target in TRUSTED_NAMES:
        return True
    prefix = next((p for p in TRUSTED_PREFIXES if target.startswith(p)), None)
    parts = target.split(".")
    if prefix is None or any(not part.isidentifier() or part.startswith("__") for part in parts):
        return False
    try:
        obj: Any = importlib.import_module(parts[0])
        for depth, part in enumerate(parts[1:], start=2):
            if hasattr(obj, part):
                obj = getattr(obj, part)
            else:
                obj = importlib.import_module(".".join(parts[:depth]))
            if inspect.ismodule(obj) and obj.__name__ != ".".join(parts[:depth]):
                return False  # a module reached under another name (an alias)
    except Exception:
        return False
    module = getattr(obj, "__module__", None)
    return (
        isinstance(module, str)
        and f"{module}.".startswith(prefix)
        and not f"{module}.".startswith(tuple(f"{m}." for m in UNTRUSTED_MODULES))
    )


def check_trusted_targets(cfg: DictConfig, key: str, path: Path) -> None:
    """ConfigError for the first `_target_` in a saved config that normlab would not write and
    this checkout's conf/ does not name. Nothing is instantiated before this passes."""
    dirs = config_dirs()
    named: frozenset[str] | None = None
    container = OmegaConf.to_container(cfg, resolve=False)
    for where, target in walk_targets(container):
        value = target
        if isinstance(target, str) and OmegaConf.is_interpolation(
            OmegaConf.create({"t": target}), "t"
        ):
            try:  # `_target_: ${some.key}`: what it would resolve to is what counts
                value = OmegaConf.select(cfg, where, throw_on_resolution_failure=True)
            except Exception:
                value = None
        if isinstance(value, str) and allowlisted(value):
            continue
        if named is None:
            named = conf_targets(dirs)
        if isinstance(value, str) and value in named:
            continue
        shown = ", ".join(str(d) for d in dirs) or "conf/"
        raise ConfigError(
            f"{key}: refused to open: its saved config {path} sets {where}={target}, which "
            "normlab does not trust. Opening a run directory builds every _target_ in its "
            "config, so a run from elsewhere could run any code; only normlab's own classes, "
            "torch.nn, torch.optim, Lightning's Trainer, loggers and callbacks, and targets "
            f"named by a YAML file in this checkout's config folder ({shown}) are built. If you "
            "trust it, add a YAML under conf/ that names it (e.g. conf/model/norm/mine.yaml "
            f"with `_target_: {target}`)."
        )
