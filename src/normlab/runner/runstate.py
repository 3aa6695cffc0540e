"""What eval.py and predict check about the run they read: that it is not training right now
(its best.ckpt would still change, and eval.json would contradict the finished run), and that
its checkpoint loads, with messages that name the keys the user typed (`run=`, `which=`).
Both read `run=` by Hydra's override grammar, so one quoting rule serves both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from torch import nn

from normlab.errors import ConfigError
from normlab.files import absolute_path, folder_in_use, write_json
from normlab.runner.commands import command, override
from normlab.runner.rundir import check_architecture, load_checkpoint, read_results

_MARK = "@normlab-key@"  # stands for the key in rundir's checkpoint messages, then replaced


def check_not_training(run_dir: str | Path, tool: str, rest: str = "") -> None:
    """ConfigError when the run in `run_dir` is still training: a process holds its folder's
    lock, or its results.json says status "running" (training started and never recorded an
    end: it is training where the lock cannot be seen, or it was killed). `tool` and `rest`
    make the command the message suggests (`python <tool> run=<run dir> <rest>`)."""
    folder = absolute_path(run_dir)
    if folder_in_use(folder):
        why = "another process holds its folder's lock: it is training right now"
        fix = f"Wait for it to finish, then run {command(tool, run=folder)}{rest}"
    elif read_results(folder).get("status") == "running":
        why = 'its results.json says status "running": it started and never recorded an end'
        fix = (
            "If it is training elsewhere, wait for it; if it was killed, finish it first with "
            f"{command('train.py', resume=folder)}"
        )
    else:
        return
    raise ConfigError(
        f"run={folder}: this run is still training ({why}), so its checkpoints are not final: "
        "a figure taken now would contradict the one the finished run records. "
        f"{fix}. To test a checkpoint as it is now, copy it out of the run and name the copy: "
        "ckpt_path=<copy>.ckpt run=<run dir>."
    )


def parse_run(value: str) -> str:
    """The folder a `run=<value>` argument names, read by Hydra's override grammar exactly as
    eval.py reads it (`run='/data/lo gs/x'`); ConfigError naming the key when it does not
    parse."""
    try:
        parsed = OverridesParser.create().parse_override(f"run={value}").value()
    except Exception as err:  # Hydra's own parse errors, of several types
        first_line = (str(err).splitlines() or [""])[0]
        raise ConfigError(
            f"run={value}: not a value of Hydra's override grammar ({first_line}); eval.py and "
            "predict read run= the same way. Quote it, inside the shell's quotes, e.g. "
            f"{override('run', value)}."
        ) from None
    if isinstance(parsed, str):
        try:  # OmegaConf's escapes and interpolations, as eval.py's config resolves them
            parsed = OmegaConf.create({"run": parsed}).run
        except Exception as err:
            first_line = (str(err).splitlines() or [""])[0]
            raise ConfigError(
                f"run={value}: {first_line}. A literal ${{ in a path is written \\${{ inside "
                f"quotes, e.g. {override('run', '/data/${x}/run')}."
            ) from None
    if not isinstance(parsed, str) or not parsed:
        raise ConfigError(
            f"run={value}: give one run directory, e.g. run=logs/runs/2026-01-31_12-00-00_1234 "
            f"(a path with spaces or commas in quotes: {override('run', 'logs/my runs/x')})."
        )
    return parsed


def load_run_checkpoint(run_dir: Path, which: str, path: Path) -> dict[str, Any]:
    """The run's `which` checkpoint (at `path`), loaded as rundir.load_checkpoint loads it;
    its messages name `run=` and `which=`, the keys the user typed."""
    try:
        return load_checkpoint(path, key=_MARK)
    except ConfigError as err:
        raise _reworded(err, run_dir, which, path) from None


def check_run_architecture(
    checkpoint: dict[str, Any], net: nn.Module, run_dir: Path, which: str, path: Path
) -> None:
    """rundir.check_architecture, its message naming `run=` and `which=`."""
    try:
        check_architecture(checkpoint, net, path, key=_MARK)
    except ConfigError as err:
        raise _reworded(err, run_dir, which, path) from None


def _reworded(err: ConfigError, run_dir: Path, which: str, path: Path) -> ConfigError:
    text = str(err).replace(
        f"{_MARK}={path}", f"run={run_dir} which={which}: its checkpoint {path}"
    )
    head, sep, _ = text.partition(f" Point {_MARK} at ")
    if sep:  # the advice was for a key naming a file; these keys name a run
        other = "best" if which == "last" else "last"
        text = (
            f"{head} The file is damaged (a copy or a save cut short): test the other one "
            f"with which={other}, or restore checkpoints/ from a copy."
        )
    return ConfigError(text.replace(_MARK, "run"))


SUPERSEDED = "eval.superseded.json"


def retire_eval_record(run_dir: str | Path) -> Path | None:
    """For train.py when it resumes a run: an eval.json that tested the run's own best or
    last checkpoint describes files the run is about to replace, so it moves to
    eval.superseded.json (with a note): the folder never holds two different figures for
    "the best checkpoint". Returns the new path, or None when there was nothing to retire."""
    path = Path(run_dir) / "eval.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("which") not in ("best", "last"):
        return None  # a copy's figure (ckpt_path= elsewhere): no checkpoint of the run changes
    record["superseded"] = (
        "the run was resumed after this evaluation and its checkpoints changed; run eval.py "
        "again once it has finished"
    )
    target = path.with_name(SUPERSEDED)
    write_json(target, record)
    path.unlink()
    return target
