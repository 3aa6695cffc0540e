"""The report's contrasts, corrected for how many there are.

One sweep report is one study, and every contrast its contrast tables show is one family:
test accuracy and train − val gap between configurations, and the other test accuracies
(BN with batch statistics, BN re-estimated) against test_acc within runs. Their p-values are
Holm-adjusted together; "significant" and the star mean adjusted p < 0.05. The per-epoch
validation contrasts (how fast a configuration learns) are a second family, adjusted within
their own table, and the arms at their best value of one axis (`--best-of`) a third.
contrasts.csv lists them all with raw and adjusted p-values.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from normlab.files import atomic_open
from normlab.report.best_of import best_of_family
from normlab.report.cells import (
    delta_cell,
    format_mean_std,
    interval_cell,
    markdown_table,
    p_cell,
)
from normlab.report.stats import ALPHA, Contrast, adjust_family, contrasts, difference, family_size
from normlab.report.sweep import Sweep

# Test accuracies measured another way beside test_acc (normlab.training.evaluations):
# (results.json key, column title, section title, what it is).
OTHER_TESTS = (
    (
        "test_acc_batch_stats",
        "test acc, BN batch stats",
        "Batch norm with batch statistics",
        "The same weights tested with BN normalizing each test batch by its own statistics, "
        "at the training batch size, dropout off (callbacks.bn_eval.batch_stats): how much of "
        "BN's loss at small batches comes from its running statistics.",
    ),
    (
        "test_acc_bn_recalibrated",
        "test acc, BN re-estimated",
        "Batch norm statistics re-estimated (Li et al. 2019)",
        "The same weights tested after BN's running statistics were re-estimated over the "
        "training images with dropout off and no augmentation (callbacks.bn_eval.recalibrate): "
        "what the variance shift between training and inference costs.",
    ),
)
# Columns of the per-epoch contrast table (evenly spaced epochs, the first and last always).
EPOCH_COLUMNS = 6


def sweep_contrasts(
    sweep: Sweep, key: str, baselines: dict[str, str] | None = None
) -> list[Contrast]:
    """Each swept value against its axis's baseline, per combination of the other axes (not
    adjusted)."""
    runs = [
        (config.settings, job.seed or job.name, value)
        for config in sweep.configs
        for job in config.jobs
        if job.measured and (value := job.value(key)) is not None and math.isfinite(value)
    ]
    axes = [k for k in sweep.varying if k != "seed"]
    return contrasts(runs, axes, baselines, metric=key)


def other_tests(sweep: Sweep) -> list[tuple[str, str, str, str]]:
    """The OTHER_TESTS some job of the sweep recorded."""
    return [t for t in OTHER_TESTS if any(job.value(t[0]) is not None for job in sweep.jobs)]


def within_run_contrasts(sweep: Sweep) -> list[Contrast]:
    """Per configuration: each other test accuracy minus test_acc, paired by seed (the same
    run measured twice)."""
    found = []
    for key, *_ in other_tests(sweep):
        for config in sweep.configs:
            other, test = {}, {}
            for job in config.jobs:
                x, y = job.value(key), job.value("test_acc")
                if job.measured and x is not None and y is not None:
                    other[job.seed or job.name], test[job.seed or job.name] = x, y
            diff = difference(other, test)
            if diff is not None:
                found.append(Contrast("", config.label, "test_acc", {}, diff, key))
    return found


def report_family(sweep: Sweep, baselines: dict[str, str] | None = None) -> list[Contrast]:
    """The report's contrasts, Holm-adjusted as one family."""
    family = sweep_contrasts(sweep, "test_acc", baselines)
    family += sweep_contrasts(sweep, "train_val_gap", baselines)
    family += within_run_contrasts(sweep)
    return adjust_family(family)


CONTRAST_HEADER = [
    "comparison", "where", "n", "Δ test acc", "95% CI", "p (raw)", "p (Holm)",
    "Δ gap [95% CI] p (Holm)",
]  # fmt: skip


def contrast_section(sweep: Sweep, family: list[Contrast]) -> list[str]:
    test = [c for c in family if c.metric == "test_acc"]
    if not test:
        return []
    gap = {c.key: c for c in family if c.metric == "train_val_gap"}
    rows = []
    for c in test:
        g = gap.get(c.key)
        rows.append(
            [
                f"{c.axis}: {sweep.show(c.axis, c.value)} − {sweep.show(c.axis, c.baseline)}",
                ", ".join(f"{k}={sweep.show(k, v)}" for k, v in c.where.items()) or "–",
                f"{c.diff.n}{'' if c.diff.paired else ' (unpaired)'}",
                delta_cell(c),
                interval_cell(c),
                p_cell(c.diff.p_value),
                p_cell(c.p_adjusted),
                "–" if g is None else f"{delta_cell(g)} {interval_cell(g)} {p_cell(g.p_adjusted)}",
            ]
        )
    tested = family_size(family)
    return [
        "",
        "## Contrasts: is the difference real?",
        "",
        "Each swept value against its axis's baseline, the other axes held fixed: the mean "
        "difference in test accuracy over seeds with its 95% confidence interval (paired t "
        "over the seeds both sides ran, else Welch's t) and p-value.",
        "",
        f"**Multiple comparisons: {tested} tests, Holm-adjusted.** This report's family is "
        f"every contrast it tests: {len(family)} contrasts (test accuracy and train − val gap "
        "between configurations, and any within-run contrasts below), of which "
        f"{tested} have a spread to test. Their p-values are adjusted together with Holm's "
        f"step-down method, which keeps the chance of any false claim among them at {ALPHA}. "
        f"* marks a contrast whose Holm-adjusted p is below {ALPHA}; only those are called "
        "significant. The intervals are not adjusted: one that excludes zero has raw p < "
        "0.05, which is not enough here. contrasts.csv has the raw and adjusted p-value of "
        'every contrast. "no spread": the same difference for every seed, from which no '
        "interval can be estimated (and no test made). The last column is the same contrast "
        "in the train − val gap: Δ, 95% CI, Holm-adjusted p.",
        "",
        *markdown_table(CONTRAST_HEADER, rows),
    ]


def within_run_section(sweep: Sweep, family: list[Contrast]) -> list[str]:
    """Other test accuracies beside test_acc, per configuration."""
    lines = []
    for key, title, heading, about in other_tests(sweep):
        found = {c.value: c for c in family if c.metric == key}
        rows = []
        for config in sweep.configs:
            c = found.get(config.label)
            rows.append(
                [
                    config.label,
                    format_mean_std(config.values("test_acc"), config.measured),
                    format_mean_std(config.values(key), config.measured),
                    "–" if c is None else delta_cell(c),
                    "–" if c is None else interval_cell(c),
                    "–" if c is None else p_cell(c.p_adjusted),
                ]
            )
        lines += [
            "",
            f"## {heading}",
            "",
            f"{about} Δ is this minus test acc over the same runs (paired by seed); its "
            f"p-value is Holm-adjusted in the report's family; * marks adjusted p below {ALPHA}.",
            "",
            *markdown_table(["configuration", "test acc", title, "Δ", "95% CI", "p (Holm)"], rows),
        ]
    return lines


def epoch_value(results: dict, epoch: int, key: str = "val/acc") -> float | None:
    """A history metric at one epoch (from 0), from results.json."""
    for row in results.get("history", []):
        value = row.get(key)
        if row.get("epoch") == epoch and isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def shown_epochs(last: int, columns: int) -> list[int]:
    """Evenly spaced epochs from 0 to `last`, at most `columns`, first and last always."""
    if last + 1 <= columns:
        return list(range(last + 1))
    step = last / (columns - 1)
    return sorted({round(i * step) for i in range(columns)})


def epoch_family(
    sweep: Sweep, baselines: dict[str, str] | None = None, columns: int = EPOCH_COLUMNS
) -> list[tuple[int, Contrast]]:
    """(epoch, contrast of validation accuracy at that epoch) at the shown epochs,
    Holm-adjusted as one family of their own; empty for single-epoch sweeps."""
    last = max(
        (int(row["epoch"]) for job in sweep.jobs for row in job.results.get("history", [])),
        default=0,
    )
    if last < 1:
        return []
    axes = [k for k in sweep.varying if k != "seed"]
    found: list[tuple[int, Contrast]] = []
    for epoch in shown_epochs(last, columns):
        runs = [
            (config.settings, job.seed or job.name, value)
            for config in sweep.configs
            for job in config.jobs
            if job.measured and (value := epoch_value(job.results, epoch)) is not None
        ]
        found += [(epoch, c) for c in contrasts(runs, axes, baselines, metric="val/acc")]
    adjusted = adjust_family([c for _, c in found])
    return [(epoch, c) for (epoch, _), c in zip(found, adjusted, strict=True)]


def epoch_contrast_section(sweep: Sweep, family: list[tuple[int, Contrast]]) -> list[str]:
    if not family:
        return []
    epochs = sorted({e for e, _ in family})
    cells: dict[tuple, dict[int, Contrast]] = {}
    for epoch, c in family:
        cells.setdefault(c.key, {})[epoch] = c
    rows = []
    for by_epoch in cells.values():
        c = next(iter(by_epoch.values()))
        label = f"{c.axis}: {sweep.show(c.axis, c.value)} − {sweep.show(c.axis, c.baseline)}"
        where = ", ".join(f"{k}={sweep.show(k, v)}" for k, v in c.where.items()) or "–"
        rows.append(
            [label, where, *(delta_cell(by_epoch[e]) if e in by_epoch else "–" for e in epochs)]
        )
    tested = family_size([c for _, c in family])
    return [
        "",
        "## Validation accuracy contrasts per epoch: which learns faster?",
        "",
        "The same comparisons in validation accuracy after each shown epoch (mean difference "
        f"over seeds). A family of its own: its {tested} tests are Holm-adjusted together "
        f"(not with the contrasts above); * marks adjusted p below {ALPHA}. Intervals and "
        "p-values are in contrasts.csv.",
        "",
        *markdown_table(["comparison", "where", *(f"epoch {e + 1}" for e in epochs)], rows),
    ]


CSV_HEADER = [
    "family", "metric", "epoch", "axis", "value", "baseline", "where", "n", "paired",
    "mean_diff", "ci_low", "ci_high", "p_raw", "p_holm", "significant_holm",
]  # fmt: skip


def write_contrasts_csv(
    sweep: Sweep, path: Path, baselines: dict[str, str] | None, best_of: str | None = None
) -> None:
    """Every contrast of every family, with raw and Holm-adjusted p-values."""
    rows = [("report", None, c) for c in report_family(sweep, baselines)]
    rows += [("per-epoch", e + 1, c) for e, c in epoch_family(sweep, baselines)]
    if best_of is not None:
        rows += [(f"best-of {best_of}", None, c) for c in best_of_family(sweep, best_of, baselines)]
    with atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for family, epoch, c in rows:
            writer.writerow(_csv_row(family, epoch, c))


def _csv_row(family: str, epoch: int | None, c: Contrast) -> list:
    d = c.diff
    where = " ".join(f"{k}={v}" for k, v in c.where.items())
    numbers = [_number(x) for x in (d.low, d.high, d.p_value, c.p_adjusted)]
    head = [family, c.metric, "" if epoch is None else epoch, c.axis, c.value, c.baseline]
    return [*head, where, d.n, d.paired, d.mean, *numbers, c.significant]


def _number(x: float) -> float | str:
    return "" if math.isnan(x) else x
