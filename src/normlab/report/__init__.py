"""Sweep report: every job's `results.json` -> `summary.csv`, `summary.md`, `contrasts.csv`
(every contrast with its raw and Holm-adjusted p-value) and PNG plots.

    python -m normlab.report logs/multiruns/<date>_<time>_<pid>

Reads results files only (no torch, no Lightning). Written at the end of a multirun, after a
failed job (`normlab.runner.sweep`), and whenever this command is run.
"""

from __future__ import annotations

from pathlib import Path

from normlab.files import atomic_open
from normlab.report.best_of import check_best_of
from normlab.report.contrasts import write_contrasts_csv
from normlab.report.plots import write_plots
from normlab.report.sweep import Sweep, load_sweep
from normlab.report.tables import check_baselines, markdown, write_csv

__all__ = ["Sweep", "load_sweep", "write_report"]


def write_report(
    sweep_dir: Path | str,
    plots: bool = True,
    baselines: dict[str, str] | None = None,
    sweep: Sweep | None = None,
    best_of: str | None = None,
) -> Path:
    """Write summary.csv, contrasts.csv, summary.md and (with `plots`) the PNGs; return
    summary.md's path.
    `baselines` names, per swept axis, the value the others are compared with (default: the
    first value swept); `sweep` is the sweep already loaded from `sweep_dir`, if it was;
    `best_of` an axis to compare every arm at its own best value of (normlab.report.best_of)."""
    sweep = sweep or load_sweep(Path(sweep_dir))
    check_baselines(sweep, baselines)  # before anything is written
    check_best_of(sweep, best_of)
    write_csv(sweep, sweep.path / "summary.csv")
    write_contrasts_csv(sweep, sweep.path / "contrasts.csv", baselines, best_of)
    written: list[str] = []
    if plots:
        written = write_plots(sweep, sweep.path)
    md_path = sweep.path / "summary.md"
    with atomic_open(md_path) as f:
        f.write(markdown(sweep, written, baselines, best_of))
    return md_path
