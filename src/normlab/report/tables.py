"""The report's tables: `summary.csv` (one row per job) and `summary.md` (per configuration,
per epoch, and the jobs that did not complete)."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from normlab.errors import NormlabError
from normlab.files import atomic_open
from normlab.report.best_of import best_of_section
from normlab.report.cells import format_mean_std, markdown_table
from normlab.report.contrasts import (
    contrast_section,
    epoch_contrast_section,
    epoch_family,
    other_tests,
    report_family,
    shown_epochs,
    within_run_section,
)
from normlab.report.sweep import Job, Sweep, split_override

# Per-configuration aggregates in summary.md: (column title, per-job value).
AGGREGATES = (
    ("best val acc", "val_acc_best"),
    ("final val acc", "val_acc_final"),
    ("test acc", "test_acc"),
    ("train − val gap", "train_val_gap"),
)
# summary.csv puts these results.json keys first, then any others it finds.
FIRST_COLUMNS = (
    "val_acc_best", "val_acc_final", "test_acc", "train_val_gap", "lr", "train_acc_eval_final",
    "train_acc_final", "test_acc_batch_stats", "test_acc_bn_recalibrated", "train_loss_final",
    "val_loss_final", "test_loss", "epochs_completed", "wall_s",
)  # fmt: skip
# Not metrics: the per-epoch history goes to the plots, the overrides to their own columns.
NOT_COLUMNS = {"status", "history", "overrides"}


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


def markdown(
    sweep: Sweep,
    plots: Sequence[str],
    baselines: dict[str, str] | None = None,
    best_of: str | None = None,
) -> str:
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
    aggregates = [*AGGREGATES, *((title, key) for key, title, *_ in other_tests(sweep))]
    family = report_family(sweep, baselines)
    lines += [
        "",
        "Seeds folded together: mean ± sample standard deviation over the n runs that were "
        "measured (completed or diverged). Test accuracy uses each run's best checkpoint (by "
        f"validation accuracy). {gap_text(sweep)}",
        "",
        *markdown_table(
            ["configuration", "n", *(title for title, _ in aggregates), "diverged", "failed"],
            [
                [
                    config.label,
                    str(config.measured),
                    *(format_mean_std(config.values(k), config.measured) for _, k in aggregates),
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
    lines += contrast_section(sweep, family)
    lines += within_run_section(sweep, family)
    if best_of is not None:
        lines += best_of_section(sweep, best_of, baselines)
    lines += _epoch_section(sweep)
    lines += epoch_contrast_section(sweep, epoch_family(sweep, baselines))
    lines += _problem_section(sweep)
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem.replace('_', ' ')}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def gap_text(sweep: Sweep) -> str:
    """How the train − val gap was measured, for the jobs of this sweep."""
    measured = [job for job in sweep.jobs if job.measured]
    in_eval = sum(job.value("train_acc_eval_final") is not None for job in measured)
    text = (
        "The gap is the final epoch's training accuracy minus its validation accuracy; the "
        "training accuracy is measured in eval mode (dropout off, BN on running statistics, no "
        "augmentation) on a fixed sample of the training images after the epoch "
        "(train_acc_eval_final)"
    )
    if in_eval == len(measured):
        return text + "."
    return (
        f"{text} for {in_eval} of {len(measured)} runs; the others did not measure it, and "
        "their gap uses the running training accuracy of the epoch (dropout on, weights still "
        "changing: train_acc_final), which understates what the network fits."
    )


def _epoch_section(sweep: Sweep, max_columns: int = 12) -> list[str]:
    """Mean validation accuracy per epoch: how fast each configuration learns."""
    per_config = [(config, config.per_epoch("val/acc")) for config in sweep.configs]
    last = max((max(epochs) for _, epochs in per_config if epochs), default=None)
    if last is None:
        return []
    shown = shown_epochs(last, max_columns)
    rows = [
        [config.label]
        + [f"{statistics.fmean(epochs[e]):.4f}" if e in epochs else "–" for e in shown]
        for config, epochs in per_config
    ]
    return [
        "",
        "## Validation accuracy per epoch (mean over seeds)",
        "",
        *markdown_table(["val acc per epoch", *(str(e + 1) for e in shown)], rows),
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
        *markdown_table(["job", "configuration", "seed", "status", "epochs", "detail"], rows),
    ]
