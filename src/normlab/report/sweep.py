"""A sweep as its job directories left it: each job's `results.json`, grouped into
configurations by their command-line overrides with `seed` removed, so the seeds of one
configuration fold into mean ± standard deviation. Diverged, failed and missing jobs are kept,
never dropped.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normlab.errors import NormlabError
from normlab.files import folder_in_use
from normlab.report.numbers import short_forms
from normlab.report.schema import schema_problem
from normlab.results import result_number, train_val_gap
from normlab.runner.commands import command

# Runs that produced metrics: diverged runs stopped early but were validated and tested.
MEASURED = ("completed", "diverged")
# A job whose results.json is not JSON or breaks the schema: listed, never measured.
UNREADABLE = "unreadable"

log = logging.getLogger("normlab.report")


@dataclass
class Job:
    """One job directory of a sweep and what it left behind."""

    name: str
    overrides: list[str]
    results: dict[str, Any]
    config: str = ""  # label of its configuration, set when the sweep is grouped
    path: Path | None = None  # the job's folder

    @property
    def settings(self) -> dict[str, str]:
        return dict(split_override(o) for o in self.overrides)

    @property
    def status(self) -> str:
        return str(self.results.get("status", "failed"))

    @property
    def measured(self) -> bool:
        return self.status in MEASURED

    @property
    def seed(self) -> str | None:
        return self.settings.get("seed")

    def value(self, key: str) -> float | None:
        """A number from results.json, or the derived `train_val_gap`; None when absent."""
        if key == "train_val_gap":
            return train_val_gap(self.results)
        return result_number(self.results, key)

    @property
    def detail(self) -> str:
        """One line on what went wrong, for the table of diverged and failed jobs."""
        if self.status == "interrupted" and not self.results.get("error"):
            resume = command("train.py", resume=self.path or "<job dir>")
            return f"stopped (Ctrl-C or SIGTERM); continue it with {resume}"
        if self.status == "diverged":
            step = self.results.get("diverged_at_step")
            return f"loss NaN/inf or above max_loss by step {step}"
        error = str(self.results.get("error") or "")
        return error.splitlines()[0][:200] if error else ""


@dataclass
class Config:
    """The jobs of one configuration (same overrides, any seed)."""

    label: str  # "model=cnn_bn, optimizer.lr=0.00316": numbers shortened (report.numbers)
    settings: dict[str, str]  # the raw override values
    jobs: list[Job] = field(default_factory=list)
    shown: dict[str, str] = field(default_factory=dict)  # the settings as the label has them

    def values(self, key: str) -> list[float]:
        values = (job.value(key) for job in self.jobs if job.measured)
        return [v for v in values if v is not None and math.isfinite(v)]

    def per_epoch(self, key: str = "val/acc") -> dict[int, list[float]]:
        """Each epoch's values of a history metric, over the measured jobs (epoch from 0)."""
        epochs: dict[int, list[float]] = {}
        for job in self.jobs:
            if not job.measured:
                continue
            for row in job.results.get("history", []):
                value = row.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    epochs.setdefault(int(row["epoch"]), []).append(float(value))
        return dict(sorted(epochs.items()))

    def count(self, status: str) -> int:
        return sum(job.status == status for job in self.jobs)

    @property
    def measured(self) -> int:
        return sum(job.measured for job in self.jobs)


@dataclass
class Sweep:
    path: Path
    jobs: list[Job]
    configs: list[Config]
    varying: list[str]  # override keys whose value differs between jobs (seed included)
    fixed: list[str]  # overrides every job shares
    # {key: {raw value: label}} for the varying keys: 0.0031622776601683794 -> 0.00316
    short: dict[str, dict[str, str]] = field(default_factory=dict)

    def show(self, key: str, value: str) -> str:
        """A swept value as the report's labels show it."""
        return self.short.get(key, {}).get(value, value)


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def load_job(job_dir: Path) -> Job:
    """A job as its results.json describes it; "missing" without one, "unreadable" (with the
    key at fault) when it is not JSON or breaks the schema (normlab.report.schema)."""
    results_path = job_dir / "results.json"
    try:
        results = json.loads(results_path.read_text())
        problem = schema_problem(results)
    except FileNotFoundError:
        results = {
            "status": "missing",
            "error": "no results.json: the job is still running, or was killed before it wrote one",
        }
        problem = None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"is not readable JSON ({err})"
    if problem is not None:
        log.warning("job %s: results.json %s; the job is listed as unreadable and left out of "
                    "every figure", job_dir.name, problem)  # fmt: skip
        overrides = _overrides_from_hydra(job_dir)
        error = f"results.json {problem}"
        return Job(job_dir.name, overrides, {"status": UNREADABLE, "error": error}, path=job_dir)
    if results.get("status") == "running" and not folder_in_use(job_dir):
        # Written when training starts and replaced when it ends: nobody is running it now.
        results = {
            **results,
            "status": "interrupted",
            "error": "stopped while training (killed) before it could record how it ended",
        }
    overrides = results.get("overrides")
    if overrides is None:
        overrides = _overrides_from_hydra(job_dir)
    return Job(job_dir.name, list(overrides), results, path=job_dir)


def _overrides_from_hydra(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf  # only needed for jobs that died before results.json

    try:
        overrides = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # a damaged file: the job is still listed, under no configuration
        return []
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories: those holding a results.json or Hydra's record of a job."""
    dirs = [
        d
        for d in sweep_dir.iterdir()
        if d.is_dir() and ((d / "results.json").exists() or (d / ".hydra").is_dir())
    ]
    # Hydra numbers jobs 0, 1, ... 10: sort numerically, so the report follows sweep order.
    return sorted(
        dirs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name)
    )


def load_sweep(sweep_dir: Path) -> Sweep:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise NormlabError(
            f"sweep directory {sweep_dir} does not exist; pass the folder of a multirun, e.g. "
            "logs/multiruns/<date>_<time>_<pid>."
        )
    jobs = [load_job(d) for d in find_job_dirs(sweep_dir)]
    if not jobs:
        raise NormlabError(
            f"{sweep_dir} holds no job directories (folders with results.json or .hydra/); "
            "pass the folder of a multirun, e.g. logs/multiruns/<date>_<time>_<pid>."
        )
    settings = [job.settings for job in jobs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    varying = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    fixed = [f"{k}={settings[0][k]}" for k in keys if k not in varying]
    short = {k: short_forms(s.get(k, "(default)") for s in settings) for k in varying}
    configs: dict[tuple, Config] = {}
    for job, setting in zip(jobs, settings, strict=True):
        axes = {k: setting.get(k, "(default)") for k in varying if k != "seed"}
        key = tuple(axes.items())
        if key not in configs:
            shown = {k: short[k][v] for k, v in axes.items()}
            label = ", ".join(f"{k}={v}" for k, v in shown.items()) or "all runs"
            configs[key] = Config(label, axes, shown=shown)
        configs[key].jobs.append(job)
        job.config = configs[key].label
    return Sweep(sweep_dir, jobs, list(configs.values()), varying, fixed, short)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None
