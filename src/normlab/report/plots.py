"""The sweep report's PNG plots (matplotlib, Agg backend: no display, no pyplot state).

- `val_acc_curves.png`: validation accuracy per epoch, one line per configuration (mean over
  seeds, band ± one standard deviation);
- `final_accuracy.png`: best validation and test accuracy per configuration, error bars over
  seeds;
- `accuracy_vs_<key>.png`, for every override with numeric values that the sweep varies
  (learning rate, batch size, dropout rate): final validation accuracy, test accuracy and the
  train − validation gap against that value, one line per setting of the other overrides
  (e.g. per norm), with diverged runs marked.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from normlab.files import atomic_open
from normlab.report.numbers import as_number, format_number
from normlab.report.sweep import Config, Sweep, mean_std

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DIVERGED_STYLE = {"marker": "x", "color": "crimson", "s": 60, "linewidths": 2, "zorder": 5}


def write_plots(sweep: Sweep, out_dir: Path) -> list[str]:
    """Write every plot that the sweep has data for; return the file names written."""
    measured = [c for c in sweep.configs if any(j.measured for j in c.jobs)]
    if not measured:
        return []
    written = [
        _save(_val_curves(measured), out_dir, "val_acc_curves.png"),
        _save(_final_accuracy(measured), out_dir, "final_accuracy.png"),
    ]
    for key in numeric_axes(measured):
        name = f"accuracy_vs_{key.replace('/', '-')}.png"
        written.append(_save(_accuracy_vs(measured, key), out_dir, name))
    return written


def numeric_axes(configs: list[Config]) -> list[str]:
    """Override keys whose values are all numbers and take at least two values."""
    axes = []
    for key in configs[0].settings:
        values = {c.settings[key] for c in configs}
        if len(values) > 1 and all(as_number(v) is not None for v in values):
            axes.append(key)
    return axes


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_dir: Path, name: str) -> str:
    with atomic_open(out_dir / name, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return name


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax: Axes, n: int) -> None:
    if n > 8:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small")


def _val_curves(configs: list[Config]) -> Figure:
    fig = _figure(9 if len(configs) > 8 else 7, 4.5)
    ax = fig.add_subplot()
    for config, color in zip(configs, _colors(len(configs)), strict=True):
        per_epoch = config.per_epoch("val/acc")
        if not per_epoch:
            continue
        epochs = [e + 1 for e in per_epoch]
        stats = [mean_std(values) for values in per_epoch.values()]
        means = [m for m, _ in stats]
        stds = [s or 0.0 for _, s in stats]
        n = max(len(v) for v in per_epoch.values())
        ax.plot(epochs, means, "o-", ms=3, color=color, label=f"{config.label} (n={n})")
        ax.fill_between(
            epochs,
            [m - s for m, s in zip(means, stds, strict=True)],
            [m + s for m, s in zip(means, stds, strict=True)],
            color=color,
            alpha=0.2,
            linewidth=0,
        )
    ax.set(
        xlabel="epoch",
        ylabel="validation accuracy",
        title="Validation accuracy (mean ± std over seeds)",
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    _legend(ax, len(configs))
    return fig


def _final_accuracy(configs: list[Config]) -> Figure:
    fig = _figure(8, max(2.5, 0.45 * len(configs) + 1.2))
    ax = fig.add_subplot()
    positions = list(range(len(configs)))[::-1]  # first configuration on top
    for offset, key, label, color in (
        (0.15, "val_acc_best", "best val acc", "tab:blue"),
        (-0.15, "test_acc", "test acc", "tab:orange"),
    ):
        for y, config in zip(positions, configs, strict=True):
            mean, std = mean_std(config.values(key))
            if mean is None:
                continue
            ax.errorbar(mean, y + offset, xerr=std or 0.0, fmt="o", color=color, capsize=3,
                        label=label if y == positions[0] else None)  # fmt: skip
    ax.set_yticks(positions, [c.label for c in configs], fontsize="small")
    title = "Accuracy per configuration (mean ± std over seeds)"
    if any(config.count("diverged") for config in configs):
        title += "\nred: some of its runs diverged"
    for tick, config in zip(ax.get_yticklabels(), configs, strict=True):
        if config.count("diverged"):
            tick.set_color("crimson")
    ax.set(xlabel="accuracy", title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def _accuracy_vs(configs: list[Config], axis: str) -> Figure:
    series: dict[str, list[Config]] = defaultdict(list)
    for config in configs:
        others = [f"{k}={v}" for k, v in config.shown.items() if k != axis]
        series[", ".join(others) or "all runs"].append(config)
    values = sorted(float(c.settings[axis]) for c in configs)
    log_x = values[0] > 0 and values[-1] / values[0] >= 20
    panels = (
        ("val_acc_final", "final validation accuracy"),
        ("test_acc", "test accuracy (best checkpoint)"),
        ("train_val_gap", "train − validation accuracy gap"),
    )
    fig = _figure(15, 4.3)
    axes = fig.subplots(1, len(panels))
    colors = _colors(len(series))
    for ax, (key, title) in zip(axes, panels, strict=True):
        diverged_label = "diverged run"
        for (label, members), color in zip(series.items(), colors, strict=True):
            members = sorted(members, key=lambda c: float(c.settings[axis]))
            points = [(float(c.settings[axis]), mean_std(c.values(key))) for c in members]
            points = [(x, m, s) for x, (m, s) in points if m is not None]
            if points:
                ax.errorbar([p[0] for p in points], [p[1] for p in points],
                            yerr=[p[2] or 0.0 for p in points], fmt="o-", ms=4, capsize=3,
                            color=color, label=label)  # fmt: skip
            for config in members:
                for job in config.jobs:
                    value = job.value(key)
                    if job.status == "diverged" and value is not None and math.isfinite(value):
                        x = float(config.settings[axis])
                        ax.scatter([x], [value], label=diverged_label, **DIVERGED_STYLE)
                        diverged_label = None  # one legend entry
        if log_x:
            ax.set_xscale("log")
        distinct = sorted(set(values))
        if len(distinct) <= 10:  # label the swept values themselves (2, 4, ... 128; 0.001 ...)
            ax.set_xticks(distinct, [format_number(v) for v in distinct])
            ax.minorticks_off()
        ax.set(xlabel=axis, title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    _legend(axes[-1], len(series))
    seeds = statistics.median(len(c.values("test_acc")) for c in configs)
    fig.suptitle(f"Against {axis}: mean ± std over the seeds of each point (median n = {seeds:g})")
    return fig
