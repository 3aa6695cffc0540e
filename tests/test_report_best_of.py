"""`--best-of AXIS` in the sweep report: every arm at its own best value of one axis, chosen on
validation accuracy only, compared on test accuracy with Holm's adjustment within that family
(checked against scipy's paired t-test and the textbook step-down)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import assert_names, md_table_rows
from scipy import stats

from normlab.report.__main__ import main as report_main

SEEDS = ("0", "1", "2")
# (norm, lr) -> (validation, test) accuracy for seed 0; later seeds add a spread. The plain
# network's best validation rate (0.01) is *not* its best test rate (0.1): a choice made on
# the test split would pick 0.1.
ACCURACY = {
    ("none", "0.01"): (0.60, 0.50),
    ("none", "0.1"): (0.55, 0.58),
    ("batch", "0.01"): (0.62, 0.61),
    ("batch", "0.1"): (0.70, 0.68),
    ("group", "0.01"): (0.64, 0.63),
    ("group", "0.1"): (0.58, 0.57),
}


# Per-seed noise on test accuracy, different for each norm: p-values well above 0.001.
NOISE = {"none": (0.0, 0.02, -0.01), "batch": (0.0, -0.01, 0.03), "group": (0.01, 0.0, 0.02)}


def accuracy_on_test(norm: str, lr: str, seed: str) -> float:
    return ACCURACY[norm, lr][1] + NOISE[norm][int(seed)]


def write_sweep(root: Path) -> Path:
    for n, ((norm, lr), (val, _)) in enumerate((k, v) for k, v in ACCURACY.items() for _ in SEEDS):
        seed = SEEDS[n % len(SEEDS)]
        job = root / str(n)
        job.mkdir(parents=True)
        (job / "results.json").write_text(json.dumps({
            "status": "completed", "val_acc_best": val + 0.001 * int(seed),
            "val_acc_final": val, "test_acc": accuracy_on_test(norm, lr, seed),
            "history": [{"epoch": 0, "val/acc": val}],
            "overrides": [f"model/norm={norm}", f"optimizer.lr={lr}", f"seed={seed}"],
        }))  # fmt: skip
    return root


def paired_p(a: list[float], b: list[float]) -> float:
    return float(stats.ttest_rel(a, b).pvalue)


def test_each_arm_is_compared_at_the_rate_validation_chose(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    assert report_main([str(sweep), "--no-plots", "--best-of", "optimizer.lr"]) == 0
    text = (sweep / "summary.md").read_text()

    arms = md_table_rows(text, "| arm | chosen optimizer.lr")
    assert {arm: row[0] for arm, row in arms.items()} == {
        "model/norm=none": "0.01",  # validation's choice, though 0.1 tests higher
        "model/norm=batch": "0.1",
        "model/norm=group": "0.01",
    }
    chosen = {"none": "0.01", "batch": "0.1", "group": "0.01"}
    test = {norm: [accuracy_on_test(norm, lr, s) for s in SEEDS] for norm, lr in chosen.items()}
    raw = [paired_p(test["batch"], test["none"]), paired_p(test["group"], test["none"])]
    low, high = sorted(raw)  # Holm with m = 2: 2 x the smaller, then max(that, the larger)
    holm = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}

    rows = md_table_rows(text, "| comparison at the chosen values")
    assert list(rows) == ["model/norm: batch − none", "model/norm: group − none"]
    for label, p in zip(rows, raw, strict=True):
        assert rows[label][4:6] == [f"{p:.3g}", f"{holm[p]:.3g}"]
    mean_gain = sum(test["batch"]) / 3 - sum(test["none"]) / 3
    assert rows["model/norm: batch − none"][2].startswith(f"{mean_gain:+.4f}")

    with (sweep / "contrasts.csv").open() as f:
        best = [r for r in csv.DictReader(f) if r["family"] == "best-of optimizer.lr"]
    assert [float(r["p_raw"]) for r in best] == pytest.approx(raw)
    assert [float(r["p_holm"]) for r in best] == pytest.approx([holm[p] for p in raw])


def test_best_of_an_axis_the_sweep_does_not_vary_is_refused(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    assert report_main([str(sweep), "--no-plots", "--best-of", "optimizer.momentum"]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert_names(message, "--best-of optimizer.momentum", "model/norm, optimizer.lr")
    assert not (sweep / "summary.md").exists()  # nothing written
