"""Sweep report: every job's `results.json` -> `summary.csv`, `summary.md` and PNG plots.

    python -m normlab.report logs/multiruns/<date>_<time>_<pid>

Jobs are grouped into configurations by their command-line overrides with `seed` removed, so
the seeds of one configuration fold into mean ± standard deviation. Diverged, failed and
missing jobs are listed by name, never dropped. The same report is written by Hydra after
every job of a multirun (`normlab.sweep_callback`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from normlab.errors import NormlabError
from normlab.report_stats import Contrast, contrasts

# Runs that produced metrics: diverged runs stopped early but were validated and tested.
MEASURED = ("completed", "diverged")
# Per-configuration aggregates in summary.md: (column title, per-job value).
AGGREGATES = (
    ("best val acc", "val_acc_best"),
    ("final val acc", "val_acc_final"),
    ("test acc", "test_acc"),
    ("train − val gap", "train_val_gap"),
)
# summary.csv puts these results.json keys first, then any others it finds.
FIRST_COLUMNS = (
    "val_acc_best", "val_acc_final", "test_acc", "train_val_gap", "train_acc_final",
    "train_loss_final", "val_loss_final", "test_loss", "epochs_completed", "wall_s",
)  # fmt: skip
# Not metrics: the per-epoch history goes to the plots, the overrides to their own columns.
NOT_COLUMNS = {"status", "history", "overrides"}


@dataclass
class Job:
    """One job directory of a sweep and what it left behind."""

    name: str
    overrides: list[str]
    results: dict[str, Any]
    config: str = ""  # label of its configuration, set when the sweep is grouped

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
            train, val = self.value("train_acc_final"), self.value("val_acc_final")
            return None if train is None or val is None else train - val
        value = self.results.get(key)
        return float(value) if isinstance(value, int | float) else None

    @property
    def detail(self) -> str:
        """One line on what went wrong, for the table of diverged and failed jobs."""
        if self.status == "diverged":
            step = self.results.get("diverged_at_step")
            return f"loss NaN/inf or above max_loss by step {step}"
        error = str(self.results.get("error") or "")
        return error.splitlines()[0][:200] if error else ""


@dataclass
class Config:
    """The jobs of one configuration (same overrides, any seed)."""

    label: str
    settings: dict[str, str]
    jobs: list[Job] = field(default_factory=list)

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


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def load_job(job_dir: Path) -> Job:
    results_path = job_dir / "results.json"
    try:
        results = json.loads(results_path.read_text())
    except FileNotFoundError:
        results = {
            "status": "missing",
            "error": "no results.json: the job is still running, or was killed before it wrote one",
        }
    except json.JSONDecodeError as err:
        results = {"status": "missing", "error": f"results.json unreadable: {err}"}
    overrides = results.get("overrides")
    if overrides is None:
        overrides = _overrides_from_hydra(job_dir)
    return Job(job_dir.name, [str(o) for o in overrides], results)


def _overrides_from_hydra(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf  # only needed for jobs that died before results.json

    return [str(o) for o in OmegaConf.load(path)]


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
    configs: dict[tuple, Config] = {}
    for job, setting in zip(jobs, settings, strict=True):
        axes = {k: setting.get(k, "(default)") for k in varying if k != "seed"}
        key = tuple(axes.items())
        if key not in configs:
            label = ", ".join(f"{k}={v}" for k, v in axes.items()) or "all runs"
            configs[key] = Config(label, axes)
        configs[key].jobs.append(job)
        job.config = configs[key].label
    return Sweep(sweep_dir, jobs, list(configs.values()), varying, fixed)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def format_mean_std(values: Sequence[float], n: int) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    text = f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"
    return text if len(values) == n else f"{text} (n={len(values)})"


def csv_columns(jobs: Iterable[Job]) -> list[str]:
    found = dict.fromkeys(k for job in jobs for k in job.results if k not in NOT_COLUMNS)
    return [c for c in FIRST_COLUMNS if c in found or c == "train_val_gap"] + sorted(
        k for k in found if k not in FIRST_COLUMNS
    )


def write_csv(sweep: Sweep, path: Path) -> None:
    axes = [k for k in sweep.varying if k != "seed"]
    metrics = csv_columns(sweep.jobs)
    header = ["job", "config", "seed", "status", *axes, *metrics, "overrides"]
    with _atomic(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for job in sweep.jobs:
            row: list[Any] = [job.name, job.config, job.seed, job.status]
            row += [job.settings.get(k, "") for k in axes]
            for key in metrics:
                value = job.value(key) if key == "train_val_gap" else job.results.get(key)
                row.append("" if value is None else value)
            row.append(" ".join(job.overrides))
            writer.writerow(row)


def sweep_contrasts(
    sweep: Sweep, key: str, baselines: dict[str, str] | None = None
) -> list[Contrast]:
    """Each swept value against its axis's baseline, per combination of the other axes."""
    runs = [
        (config.settings, job.seed or job.name, value)
        for config in sweep.configs
        for job in config.jobs
        if job.measured and (value := job.value(key)) is not None and math.isfinite(value)
    ]
    axes = [k for k in sweep.varying if k != "seed"]
    return contrasts(runs, axes, baselines)


def _contrast_section(sweep: Sweep, baselines: dict[str, str] | None) -> list[str]:
    test = sweep_contrasts(sweep, "test_acc", baselines)
    if not test:
        return []
    gap = {
        (c.axis, c.value, tuple(c.where.items())): c
        for c in sweep_contrasts(sweep, "train_val_gap", baselines)
    }
    rows = []
    for c in test:
        g = gap.get((c.axis, c.value, tuple(c.where.items())))
        rows.append(
            [
                f"{c.axis}: {c.value} − {c.baseline}",
                ", ".join(f"{k}={v}" for k, v in c.where.items()) or "–",
                f"{c.diff.n}{'' if c.diff.paired else ' (unpaired)'}",
                f"{c.diff.mean:+.4f}{' *' if c.diff.significant else ''}",
                f"[{c.diff.low:+.4f}, {c.diff.high:+.4f}]",
                f"{c.diff.p_value:.3g}",
                "–" if g is None else f"{g.diff.mean:+.4f} [{g.diff.low:+.4f}, {g.diff.high:+.4f}]",
            ]
        )
    return [
        "",
        "## Contrasts: is the difference real?",
        "",
        "Each swept value against its axis's baseline, the other axes held fixed: the mean "
        "difference in test accuracy over seeds with its 95% confidence interval (paired t "
        "over seeds when both sides ran the same seeds, else Welch's t) and p-value; "
        "* marks an interval that excludes zero. The last column is the same difference in "
        "the train − val gap.",
        "",
        *_table(["comparison", "where", "n", "Δ test acc", "95% CI", "p", "Δ gap [95% CI]"], rows),
    ]


def markdown(sweep: Sweep, plots: Sequence[str], baselines: dict[str, str] | None = None) -> str:
    counts: dict[str, int] = {}
    for job in sweep.jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    lines = [
        f"# Sweep report: {sweep.path.name}",
        "",
        f"{len(sweep.jobs)} jobs in {len(sweep.configs)} configurations: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + ".",
    ]
    if sweep.fixed:
        lines += ["", "Every job: `" + " ".join(sweep.fixed) + "`"]
    lines += [
        "",
        "Seeds folded together: mean ± sample standard deviation over the n runs that were "
        "measured (completed or diverged). Test accuracy uses each run's best checkpoint (by "
        "validation accuracy). The gap is the final epoch's training accuracy (averaged over the "
        "epoch, dropout active) minus its validation accuracy.",
        "",
        *_table(
            ["configuration", "n", *(title for title, _ in AGGREGATES), "diverged", "failed"],
            [
                [
                    config.label,
                    str(config.measured),
                    *(format_mean_std(config.values(k), config.measured) for _, k in AGGREGATES),
                    str(config.count("diverged")),
                    str(len(config.jobs) - config.measured),
                ]
                for config in sweep.configs
            ],
        ),
    ]
    ranked = [c for c in sweep.configs if c.values("val_acc_best")]
    if len(ranked) > 1:
        best = max(ranked, key=lambda c: statistics.fmean(c.values("val_acc_best")))
        lines += ["", f"Best mean validation accuracy: **{best.label}**."]
    lines += _contrast_section(sweep, baselines)
    lines += _epoch_section(sweep)
    lines += _problem_section(sweep)
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem.replace('_', ' ')}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table; every column but the first right-aligned (numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return lines


def _epoch_section(sweep: Sweep, max_columns: int = 12) -> list[str]:
    """Mean validation accuracy per epoch: how fast each configuration learns."""
    per_config = [(config, config.per_epoch("val/acc")) for config in sweep.configs]
    last = max((max(epochs) for _, epochs in per_config if epochs), default=None)
    if last is None:
        return []
    shown = list(range(last + 1))
    if len(shown) > max_columns:  # evenly spaced epochs, always the first and the last
        step = last / (max_columns - 1)
        shown = sorted({round(i * step) for i in range(max_columns)})
    rows = [
        [config.label]
        + [f"{statistics.fmean(epochs[e]):.4f}" if e in epochs else "–" for e in shown]
        for config, epochs in per_config
    ]
    return [
        "",
        "## Validation accuracy per epoch (mean over seeds)",
        "",
        *_table(["val acc per epoch", *(str(e + 1) for e in shown)], rows),
    ]


def _problem_section(sweep: Sweep) -> list[str]:
    problems = [job for job in sweep.jobs if job.status != "completed"]
    if not problems:
        return []
    rows = [
        [
            job.name,
            job.config,
            job.seed or "–",
            job.status,
            str(job.results.get("epochs_completed", "–")),
            job.detail,
        ]
        for job in problems
    ]
    return [
        "",
        "## Diverged and failed jobs",
        "",
        *_table(["job", "configuration", "seed", "status", "epochs", "detail"], rows),
    ]


def write_report(
    sweep_dir: Path | str, plots: bool = True, baselines: dict[str, str] | None = None
) -> Path:
    """Write summary.csv, summary.md and (with `plots`) the PNGs; return summary.md's path.
    `baselines` names, per swept axis, the value the others are compared with (default: the
    first value swept)."""
    sweep = load_sweep(Path(sweep_dir))
    write_csv(sweep, sweep.path / "summary.csv")
    written: list[str] = []
    if plots:
        from normlab.report_plots import write_plots  # matplotlib: imported only when plotting

        written = write_plots(sweep, sweep.path)
    md_path = sweep.path / "summary.md"
    with _atomic(md_path) as f:
        f.write(markdown(sweep, written, baselines))
    return md_path


@contextlib.contextmanager
def _atomic(path: Path, **kwargs: Any) -> Iterator[TextIO]:
    """Write `path` via a temporary file that replaces it on success: a reader (or another
    job writing the report at the same moment) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", **kwargs) as f:
            yield f
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m normlab.report",
        description="Write summary.csv, summary.md and plots for a Hydra multirun directory.",
    )
    parser.add_argument("sweep_dir", type=Path, help="e.g. logs/multiruns/<date>_<time>_<pid>")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="AXIS=VALUE",
        help="compare an axis's values with this one (default: the first value swept), "
        "e.g. --baseline model/norm=batch",
    )
    args = parser.parse_args(argv)
    baselines = dict(split_override(b) for b in args.baseline)
    try:
        path = write_report(args.sweep_dir, plots=not args.no_plots, baselines=baselines)
    except NormlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path.read_text())
    print(f"report written to {path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
