"""What a job's results.json may hold, checked before the report uses any of it: numbers are
numbers (a boolean is not one), text is text, `overrides` is a list of strings. A file that
breaks the schema makes its job "unreadable", with the key at fault; its values never reach a
mean, a table or summary.csv. Keys not listed here are kept as they are (newer versions may add
some)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

STATUSES = ("completed", "diverged", "failed", "interrupted", "running")


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is {_kind(value)}, not a number"
    if not math.isfinite(value):
        return f"is {value}, not a finite number"
    return None


def _whole(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"is {_kind(value)}, not a whole number"
    return None


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else f"is {_kind(value)}, not text"


def _texts(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"is {_kind(value)}, not a list of strings"
    bad = next((item for item in value if not isinstance(item, str)), None)
    return None if bad is None else f"holds {_kind(bad)}, not only strings"


def _status(value: Any) -> str | None:
    if value in STATUSES:
        return None
    return f"is {_kind(value)}, not one of {', '.join(STATUSES)}"


def _history(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"is {_kind(value)}, not a list of epochs"
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            return f"entry {index} is {_kind(row)}, not an epoch's metrics"
        if (problem := _whole(row.get("epoch"))) is not None:
            return f"entry {index}: epoch {problem}"
        for key, metric in row.items():
            if metric is not None and (problem := _number(metric)) is not None:
                return f"entry {index}: {key} {problem}"
    return None


def _normalization(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"is {_kind(value)}, not {{mean: [...], std: [...]}}"
    for key in ("mean", "std"):
        channels = value.get(key)
        if not isinstance(channels, list) or any(_number(v) for v in channels):
            return f"{key} is {_kind(channels)}, not a list of numbers"
    return None


Check = Callable[[Any], "str | None"]
NULLABLE: dict[str, Check] = {
    **dict.fromkeys(
        (
            "val_acc_best",
            "val_acc_final",
            "test_acc",
            "test_loss",
            "train_acc_final",
            "train_loss_final",
            "val_loss_final",
            "wall_s",
        ),
        _number,
    ),
    **dict.fromkeys(
        ("epochs_completed", "diverged_at_step", "diverged_at_epoch", "threads"), _whole
    ),
    **dict.fromkeys(("error", "best_checkpoint", "name", "stopped_by", "stopped_reason"), _text),
    "normalization": _normalization,
}
REQUIRED: dict[str, Check] = {"status": _status}
LISTS: dict[str, Check] = {
    "overrides": _texts,
    "tags": _texts,
    "classes": _texts,
    "history": _history,
}


def schema_problem(results: Any) -> str | None:
    """What is wrong with a parsed results.json, naming the key at fault
    (`"test_acc" is text ("0.91"), not a number`); None when it fits the schema."""
    if not isinstance(results, Mapping):
        return f"holds {_kind(results)}, not an object of keys and values"
    if "status" not in results:
        return 'has no "status"'
    for checks, nullable in ((REQUIRED, False), (NULLABLE, True), (LISTS, False)):
        for key, check in checks.items():
            if key not in results or (nullable and results[key] is None):
                continue
            if (problem := check(results[key])) is not None:
                return f'"{key}" {problem}'
    return None


def _kind(value: Any) -> str:
    """How a JSON value reads in a message: `text ("0.91")`, `true`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 30 else value[:27] + "..."
        return f'text ("{shown}")'
    if isinstance(value, int | float):
        return str(value)
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
