"""Re-run today's sweep report (Holm-adjusted contrasts) on a study committed as summary.csv.

The first CIFAR-10 studies were committed before the report corrected for multiple
comparisons, and their job folders are gone; summary.csv keeps every job's final figures and
overrides. This rebuilds a results.json per job from it (no per-epoch history: no curves, no
per-epoch contrasts) and writes the report into another folder:

    python tools/reanalyse_summaries.py docs/results/cifar10/bn_learning_rate /tmp/bn_lr
    python tools/reanalyse_summaries.py docs/results/cifar10/bn_batch_size /tmp/bn_bs \
        --baseline model/norm=batch
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from normlab.report import write_report

FIGURES = ("val_acc_best", "val_acc_final", "test_acc", "train_acc_final")


def rebuild(summary_csv: Path, out: Path) -> int:
    """One job folder with a results.json per row of `summary_csv`; returns the job count."""
    rows = list(csv.DictReader(summary_csv.open()))
    for row in rows:
        job = out / row["job"]
        job.mkdir(parents=True, exist_ok=False)
        results = {key: float(row[key]) if row.get(key) else None for key in FIGURES}
        results.update(
            status=row["status"],
            epochs_completed=int(row["epochs_completed"] or 0),
            overrides=row["overrides"].split(" "),
            history=[],
        )
        (job / "results.json").write_text(json.dumps(results))
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a folder holding summary.csv")
    parser.add_argument("out", type=Path, help="a new folder for the rebuilt jobs and report")
    parser.add_argument("--baseline", default=None, help="AXIS=VALUE, as normlab.report takes")
    args = parser.parse_args()
    jobs = rebuild(args.study / "summary.csv", args.out)
    axis, _, value = (args.baseline or "").partition("=")
    report = write_report(args.out, plots=False, baselines={axis: value} if value else None)
    print(f"{jobs} jobs rebuilt; report: {report}")


if __name__ == "__main__":
    main()
