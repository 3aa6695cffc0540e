"""Cells and tables of summary.md: mean ± sd over seeds, intervals, p-values."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from normlab.report.numbers import format_number
from normlab.report.stats import Contrast
from normlab.report.sweep import mean_std


def format_mean_std(values: Sequence[float], n: int) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    text = f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"
    return text if len(values) == n else f"{text} (n={len(values)})"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table; every column but the first right-aligned (numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return lines


def interval_cell(contrast: Contrast) -> str:
    diff = contrast.diff
    return f"[{diff.low:+.4f}, {diff.high:+.4f}]" if diff.has_interval else "(no spread)"


def p_cell(p: float) -> str:
    return "–" if math.isnan(p) else format_number(p)


def delta_cell(contrast: Contrast) -> str:
    """`+0.0312 *`: the mean difference, starred when significant after adjustment."""
    return f"{contrast.diff.mean:+.4f}{' *' if contrast.significant else ''}"
