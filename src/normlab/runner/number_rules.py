"""One rule for every number in a run's config, whichever key carries it.

A NaN or an infinity never means anything a user wants (NaN passes `p < 0 or p > 1` and every
other comparison, so most libraries accept it and train on garbage), so no number may be one
unless its key says "no limit" by being infinite. Keys whose meaning fixes a range
(probabilities, decays, momenta, clips, epsilons) are held to it by their name, wherever
they sit: a researcher's own norm's `momentum` is a momentum too. And a value given to a
class (`_target_`) must have the type its signature declares: a word where a float is
declared is refused before the run, not inside the first training step.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import numbers
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig

from normlab.errors import ConfigError


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    meaning: str
    example: str
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.high == math.inf:
            return f"{'above' if self.low_open else 'at least'} {self.low:g}"
        excluded = [
            f"{v:g}" for v, o in ((self.low, self.low_open), (self.high, self.high_open)) if o
        ]
        shown = f" ({' and '.join(excluded)} excluded)" if excluded else ""
        return f"between {self.low:g} and {self.high:g}{shown}"


INF = math.inf
# Matched against the dotted key (fnmatch: `*` spans dots), first match wins.
RANGES: tuple[tuple[str, Range], ...] = (
    ("*dropout*.p", Range(0, 1, "a dropout probability", "0.5", high_open=True)),
    ("*weight_decay", Range(0, INF, "a weight decay", "5e-4")),
    ("*momentum", Range(0, 1, "a momentum", "0.9")),
    ("*dampening", Range(0, 1, "SGD's dampening", "0")),
    ("*betas.*", Range(0, 1, "an Adam beta", "0.9", high_open=True)),
    ("*.eps", Range(0, INF, "an epsilon", "1e-5", low_open=True)),
    ("*gradient_clip_val", Range(0, INF, "a gradient clip (0 = none)", "1.0")),
    ("*label_smoothing", Range(0, 1, "label smoothing", "0.1", high_open=True)),
    ("*min_lr", Range(0, INF, "a final learning rate", "0")),
    ("*pct_start", Range(0, 1, "the warm-up share of training", "0.25", True, True)),
    ("*div_factor", Range(0, INF, "a learning-rate divisor", "25", low_open=True)),
)
# Keys where infinity means "no limit".
MAY_BE_INFINITE = ("*max_loss",)
# Where the run's own machinery lives, not its settings.
SKIPPED = ("hydra", "paths")


def check_numbers(cfg: DictConfig) -> None:
    """ConfigError for the first number that is not finite or leaves its key's range
    (`check_declared_types`, which imports the classes, checks the types)."""
    for key, value in leaves(cfg):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            continue
        number = float(value)
        if math.isnan(number) or (
            math.isinf(number) and not any(fnmatch.fnmatch(key, p) for p in MAY_BE_INFINITE)
        ):
            raise ConfigError(
                f"{key}={value}: not a finite number. NaN and infinity pass most range checks "
                f"unnoticed and train on garbage; give a real value{example_for(key)}."
            )
        rule = next((r for pattern, r in RANGES if fnmatch.fnmatch(key, pattern)), None)
        if rule is not None and not rule.holds(number):
            raise ConfigError(
                f"{key}={value}: {rule.meaning} must be {rule.describe()}, e.g. "
                f"{key}={rule.example}."
            )


def leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf that resolves; interpolations that cannot resolve
    here (`${hydra:...}` outside a run) are left to the run."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        where = f"{path}.{key}" if path else str(key)
        if not path and key in SKIPPED:
            continue
        try:
            value = node[key]
        except Exception:
            continue
        if isinstance(value, DictConfig | ListConfig):
            yield from leaves(value, where)
        else:
            yield where, value


def example_for(key: str) -> str:
    rule = next((r for pattern, r in RANGES if fnmatch.fnmatch(key, pattern)), None)
    return f", e.g. {key}={rule.example}" if rule else ""


def check_declared_types(cfg: DictConfig, path: str = "") -> None:
    """Each argument a `_target_` node gives its class has the type the class declares
    (float and int parameters: a number, not a word or a boolean)."""
    for key in cfg:
        if not path and key in SKIPPED:
            continue
        try:
            child = cfg[key]
        except Exception:
            continue
        where = f"{path}.{key}" if path else str(key)
        if isinstance(child, DictConfig):
            check_declared_types(child, where)
    target = cfg.get("_target_") if isinstance(cfg, DictConfig) else None
    if not isinstance(target, str):
        return
    for name, declared in numeric_parameters(target).items():
        try:
            value = cfg.get(name)
        except Exception:
            continue
        if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
            continue  # (a boolean is no number here, though Python counts it as one)
        owner = target.rsplit(".", 1)[-1]
        raise ConfigError(
            f"{path}.{name}={value!r}: {owner} declares {name} as {declared.__name__}, so it "
            f"takes a number here, e.g. {path}.{name}=0.1 (for a number written as text, drop "
            "the quotes in the YAML file)."
        )


def numeric_parameters(target: str) -> dict[str, type]:
    """{parameter: float or int} for the parameters `target` declares as numbers (optionally
    None); {} when the target cannot be imported or inspected (check_keys names that)."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
        function = obj.__init__ if inspect.isclass(obj) else obj
        hints = typing.get_type_hints(function)
    except Exception:
        return {}
    found = {}
    for name, hint in hints.items():
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
        if all(arg is float or arg is int for arg in options):
            found[name] = float if float in options else int
    return found
