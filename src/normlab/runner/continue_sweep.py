"""`python train.py resume=<sweep dir>`: continue a sweep that was stopped.

The sweep's own command line, as Hydra recorded it in `multirun.yaml`, runs again into the
same folder, so the sweeper expands the same jobs in the same order and each lands in its own
folder again. Each job then looks at what its folder holds:

- finished (completed, diverged, or failed on its config): kept; nothing in it is rewritten;
- interrupted, still marked running (killed outright), or failed while training: continued
  from its own last checkpoint, exactly as `resume=<job dir>` would (bit-identical);
- nothing yet: runs from the start.

The jobs learn that the sweep is being continued from an environment variable, which
reaches the joblib launcher's workers and SLURM jobs alike.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from normlab.errors import ConfigError
from normlab.files import absolute_path, folder_in_use
from normlab.runner.names import is_run_setting, override_key

ENV = "NORMLAB_CONTINUE_SWEEP"
MULTIRUN_RECORD = "multirun.yaml"
FINISHED = ("completed", "diverged")


def sweep_command(argv: list[str], config_dir: Path) -> list[str]:
    """`argv` as given, unless it is `resume=<sweep dir>` (with run settings): then the
    sweep's own command line, continuing into that folder. Sets ENV for the jobs."""
    if any(arg in ("-m", "--multirun") for arg in argv):
        return argv
    resume = next((arg for arg in argv if override_key(arg) == "resume"), None)
    value = parsed_value(resume) if resume else None
    if not value:
        return argv
    sweep_dir = absolute_path(Path(str(value)).expanduser())
    if not (sweep_dir / MULTIRUN_RECORD).is_file() or (sweep_dir / ".hydra").is_dir():
        return argv  # a run directory (or a mistake the run resume explains)
    others = [arg for arg in argv if arg is not resume]
    changed = [arg for arg in others if not is_run_setting(arg)]
    if changed:
        raise ConfigError(
            f"resume={value} continues a sweep exactly as it was started, but "
            f"{' '.join(changed)} would change its jobs. Drop those overrides (only where and how "
            "it runs may change: paths.*, threads=, verbose= and hydra.* settings), or start a "
            "new sweep."
        )
    task, hydra = recorded_overrides(sweep_dir)
    check_jobs_match_this_checkout(sweep_dir, config_dir)
    os.environ[ENV] = str(sweep_dir)
    sweep_at = f"hydra.sweep.dir={hydra_quoted(str(sweep_dir))}"
    return ["-m", *task, *hydra, sweep_at, *others]


def parsed_value(override: str) -> Any:
    """The value of a `key=value` override as Hydra's grammar reads it (quotes removed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).value()
    except Exception:
        return None  # Hydra reports a malformed override itself


def hydra_quoted(text: str) -> str:
    """`text` as one quoted value of Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def recorded_overrides(sweep_dir: Path) -> tuple[list[str], list[str]]:
    """(task overrides, Hydra overrides) the sweep was started with, from multirun.yaml."""
    path = sweep_dir / MULTIRUN_RECORD
    try:
        record = OmegaConf.load(path)
        task = [str(o) for o in record.hydra.overrides.task]
        hydra = [str(o) for o in record.hydra.overrides.hydra]
        sweeper = str(OmegaConf.select(record, "hydra.sweeper._target_", default="") or "")
    except Exception as err:
        first_line = (str(err).splitlines() or [""])[0]
        raise ConfigError(
            f"resume={sweep_dir}: its {MULTIRUN_RECORD} cannot be read ({type(err).__name__}: "
            f"{first_line}), so the sweep's command line is unknown. Restore it from a copy, or "
            "continue its jobs one at a time with python train.py resume=<sweep dir>/<job>."
        ) from None
    if "optuna" in sweeper.lower():
        raise ConfigError(
            f"resume={sweep_dir}: an Optuna search cannot be continued: its next trials depend "
            "on the results of earlier ones, which a new search would not see. Continue its "
            "interrupted trials one at a time with python train.py resume=<sweep dir>/<job>."
        )
    # Where the sweep goes is given anew (absolute: the recorded one may be relative to
    # another working directory); the mode is -m.
    keep = [o for o in hydra if override_key(o) not in ("hydra.sweep.dir", "hydra.mode")]
    return task, keep


def check_jobs_match_this_checkout(sweep_dir: Path, config_dir: Path) -> None:
    """ConfigError when a job that started would be configured differently by this checkout's
    conf/ (another checkout, or configs edited since): continuing would mix two studies."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    jobs = sorted(
        (d for d in sweep_dir.iterdir() if (d / ".hydra" / "config.yaml").is_file()),
        key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name),
    )
    busy = [d.name for d in jobs if folder_in_use(d)]
    if busy:
        raise ConfigError(
            f"resume={sweep_dir}: job {busy[0]} is still running (another process holds its "
            "folder's lock). Wait for the sweep to end, or stop it first."
        )
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            for job in jobs:
                overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
                now = compose("train", overrides=overrides)
                then = OmegaConf.load(job / ".hydra" / "config.yaml")
                if difference := first_difference(settings(then), settings(now)):
                    raise ConfigError(
                        f"resume={sweep_dir}: job {job.name} was configured differently from "
                        f"what this checkout's configs give for the same overrides ({difference})"
                        ". It was run by another checkout, or the configs changed since; "
                        "continuing would mix two studies. Continue it from the checkout that "
                        "started it, or start a new sweep."
                    )
    finally:
        GlobalHydra.instance().clear()


def settings(cfg: Any) -> dict[str, Any]:
    """What a job trains with: its config without where it writes."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("paths", None)
    container.pop("hydra", None)
    return container


def first_difference(then: Any, now: Any, where: str = "") -> str | None:
    """`key: then -> now` for the first setting that differs, or None."""
    if isinstance(then, dict) and isinstance(now, dict):
        for key in dict.fromkeys([*then, *now]):
            path = f"{where}.{key}" if where else str(key)
            if key not in then or key not in now:
                side = "only then" if key in then else "only now"
                return f"{path}: {side}"
            if found := first_difference(then[key], now[key], path):
                return found
        return None
    return None if then == now else f"{where}: {then!r} then, {now!r} now"


def job_in_continued_sweep(output_dir: Path) -> str | None:
    """What a job of a sweep being continued does with its folder: "keep" (finished),
    "continue" (started, not finished) or "run" (never started); None outside a continued
    sweep."""
    sweep_dir = os.environ.get(ENV)
    if not sweep_dir or Path(sweep_dir) not in absolute_path(output_dir).parents:
        return None
    from normlab.runner.rundir import holds_run, read_results

    if not holds_run(output_dir):
        return "run"
    results = read_results(output_dir)
    status = results.get("status")
    if status in FINISHED or (status == "failed" and failed_on_config(output_dir, results)):
        return "keep"
    return "continue"


def failed_on_config(output_dir: Path, results: dict[str, Any]) -> bool:
    """Whether a failed job failed on its config (running it again would fail again), not
    while training. Jobs recorded before `failure` existed: those that never wrote a
    checkpoint."""
    if "failure" in results:
        return results["failure"] == "config"
    return not (output_dir / "checkpoints").is_dir()


def say_kept(job: Any, name: str, summary: str) -> None:
    """The console line of a kept job. Printed, not logged: logging would append to the
    finished job's train.log."""
    print(f"#{job} {name}: kept as it was: {summary}", file=sys.stdout, flush=True)
