"""`python -m normlab.report <sweep dir>`: write the sweep report again, e.g. for a sweep
that was stopped, or after deleting jobs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from normlab.errors import NormlabError
from normlab.report import load_sweep, write_report
from normlab.report.tables import parse_baselines


def main(argv: Sequence[str] | None = None) -> int:
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
    parser.add_argument(
        "--best-of",
        metavar="AXIS",
        help="also compare every combination of the other axes at its own best value of AXIS, "
        "chosen on validation accuracy, e.g. --best-of optimizer.lr",
    )
    args = parser.parse_args(argv)
    # Jobs left out of the figures (an unreadable results.json) are named on the console too.
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        sweep = load_sweep(args.sweep_dir)  # once: its warnings are said once
        baselines = parse_baselines(args.baseline, sweep)
        path = write_report(args.sweep_dir, not args.no_plots, baselines, sweep, args.best_of)
    except NormlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path.read_text())
    print(f"report written to {path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
