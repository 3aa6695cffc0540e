"""The report's tables: `summary.csv` (one row per job) and `summary.md` (per configuration,
per epoch, and the jobs that did not complete)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from normlab.errors import NormlabError
from normlab.files import atomic_open
from normlab.report.numbers import format_number
from normlab.report.stats import Contrast, contrasts
from normlab.report.sweep import Job, Sweep, mean_std, split_override

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


def csv_cell(value: Any) -> Any:
    """A results.json value as a CSV cell: lists and mappings (classes, normalization, tags)
    as JSON, which any reader can parse back, not as Python's repr; text as it is (the csv
    module quotes a multi-line error, and reads it back whole)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return value


def write_csv(sweep: Sweep, path: Path) -> None:
    """One row per job; the swept values and overrides as given (full precision), the
    `config` column the report's short label."""
    axes = [k for k in sweep.varying if k != "seed"]
    metrics = csv_columns(sweep.jobs)
    header = ["job", "config", "seed", "status", *axes, *metrics, "overrides"]
    with atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for job in sweep.jobs:
            row: list[Any] = [job.name, job.config, job.seed, job.status]
            row += [job.settings.get(k, "") for k in axes]
            for key in metrics:
                value = job.value(key) if key == "train_val_gap" else job.results.get(key)
                row.append(csv_cell(value))
            row.append(" ".join(job.overrides))
            writer.writerow(row)


def swept_axes(sweep: Sweep) -> dict[str, list[str]]:
    """{axis: its values, in the order swept} for every swept key but the seed."""
    axes = [k for k in sweep.varying if k != "seed"]
    return {
        axis: list(dict.fromkeys(job.settings[axis] for job in sweep.jobs if axis in job.settings))
        for axis in axes
    }


def _baseline_error(given: str, problem: str, sweep: Sweep) -> NormlabError:
    axes = swept_axes(sweep)
    if not axes:
        listing = "This sweep varies nothing but the seed, so there is no axis to compare."
    else:
        listing = "The swept axes and their values: " + "; ".join(
            f"{axis}: {', '.join(values)}" for axis, values in axes.items()
        )
        axis, values = next(iter(axes.items()))
        listing += f". Name one, e.g. --baseline {axis}={values[-1]}."
    return NormlabError(f"--baseline {given}: {problem}. {listing}")


def check_baselines(sweep: Sweep, baselines: Mapping[str, str] | None) -> None:
    """NormlabError unless each baseline names a swept axis and a value it took (a typo
    would otherwise silently drop the axis from the contrasts)."""
    axes = swept_axes(sweep)
    for axis, value in (baselines or {}).items():
        if axis not in axes:
            raise _baseline_error(f"{axis}={value}", f"{axis} is not swept", sweep)
        if value not in axes[axis]:
            problem = f"{axis} never took the value {value!r}"
            raise _baseline_error(f"{axis}={value}", problem, sweep)


def parse_baselines(given: Iterable[str], sweep: Sweep) -> dict[str, str]:
    """`--baseline AXIS=VALUE` arguments as {axis: value}, checked against the sweep."""
    baselines = {}
    for text in given:
        if "=" not in text:
            raise _baseline_error(text, "write AXIS=VALUE", sweep)
        axis, value = split_override(text)
        baselines[axis] = value
    check_baselines(sweep, baselines)
    return baselines


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
                f"{c.axis}: {sweep.show(c.axis, c.value)} − {sweep.show(c.axis, c.baseline)}",
                ", ".join(f"{k}={sweep.show(k, v)}" for k, v in c.where.items()) or "–",
                f"{c.diff.n}{'' if c.diff.paired else ' (unpaired)'}",
                f"{c.diff.mean:+.4f}{' *' if c.diff.significant else ''}",
                _interval_cell(c),
                format_number(c.diff.p_value) if c.diff.has_interval else "–",
                "–" if g is None else f"{g.diff.mean:+.4f} {_interval_cell(g)}",
            ]
        )
    return [
        "",
        "## Contrasts: is the difference real?",
        "",
        "Each swept value against its axis's baseline, the other axes held fixed: the mean "
        "difference in test accuracy over seeds with its 95% confidence interval (paired t "
        "over seeds when both sides ran the same seeds, else Welch's t) and p-value; "
        '* marks an interval that excludes zero; "no spread" marks differences that are the '
        "same for every seed, from which no interval can be estimated. The last column is the "
        "same difference in the train − val gap.",
        "",
        *_table(["comparison", "where", "n", "Δ test acc", "95% CI", "p", "Δ gap [95% CI]"], rows),
    ]


def _interval_cell(contrast: Contrast) -> str:
    diff = contrast.diff
    return f"[{diff.low:+.4f}, {diff.high:+.4f}]" if diff.has_interval else "(no spread)"


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
        "## Diverged, failed and interrupted jobs",
        "",
        *_table(["job", "configuration", "seed", "status", "epochs", "detail"], rows),
    ]
