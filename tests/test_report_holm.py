"""Multiple comparisons in the sweep report: Holm's adjustment against hand-computed values,
applied over the whole report as one family, with the raw and adjusted p-values in
contrasts.csv, per-epoch contrasts as a family of their own, the within-run test accuracies
(BN batch statistics, BN re-estimated) and the learning rate each job used."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import md_table_rows
from scipy import stats

from normlab.report import write_report
from normlab.report.stats import holm


def test_holm_matches_the_textbook_step_down():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(1 x 0.04,
    # previous) = 0.02, 0.03, 0.06, 0.06, returned in the order given.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_never_lowers_a_larger_p():
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.001, 0.02, 0.021]) == pytest.approx([0.003, 0.04, 0.04])


def test_holm_leaves_untested_contrasts_out_of_the_count():
    adjusted = holm([0.02, math.nan, 0.01])
    assert math.isnan(adjusted[1])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)


# Test accuracy per norm and seed: BN gains ~0.10 everywhere (p tiny), GroupNorm a small but
# consistent 0.03 (raw p about 0.035: significant alone, not among this many tests).
TEST_ACC = {
    "none": {"0": 0.50, "1": 0.52, "2": 0.51},
    "batch": {"0": 0.60, "1": 0.63, "2": 0.61},
    "group": {"0": 0.53, "1": 0.54, "2": 0.55},
}


def write_sweep(root: Path) -> None:
    for n, (norm, seed) in enumerate((k, s) for k in TEST_ACC for s in TEST_ACC[k]):
        acc = TEST_ACC[norm][seed]
        job = root / str(n)
        job.mkdir()
        history = [
            {"epoch": 0, "val/acc": acc - 0.1 + 0.001 * int(seed)},
            {"epoch": 1, "val/acc": acc + 0.002 * int(seed)},
        ]
        results = {
            "status": "completed",
            "val_acc_best": acc,
            "val_acc_final": acc,
            "test_acc": acc,
            "train_acc_final": acc,
            "train_acc_eval_final": acc + 0.1 + 0.01 * int(seed) * (norm == "batch"),
            "lr": 0.01 * (n + 1),
            "history": history,
            "overrides": [f"model/norm={norm}", f"seed={seed}"],
        }
        if norm != "none":  # only the BN-like layers are re-estimated
            results["test_acc_bn_recalibrated"] = acc + 0.02 + 0.003 * int(seed)
        (job / "results.json").write_text(json.dumps(results))


def paired_p(a: dict[str, float], b: dict[str, float]) -> float:
    return float(stats.ttest_rel([a[s] for s in sorted(a)], [b[s] for s in sorted(b)]).pvalue)


def test_report_adjusts_every_contrast_as_one_family(tmp_path):
    write_sweep(tmp_path)
    text = write_report(tmp_path, plots=False).read_text()
    none, batch, group = (TEST_ACC[k] for k in ("none", "batch", "group"))
    raw_test = [paired_p(batch, none), paired_p(group, none)]
    # The family: 2 test-accuracy contrasts, 1 gap contrast with a spread (BN; GroupNorm's gap
    # moves by the same amount for every seed: no test), 2 within-run contrasts (the
    # recalibrated test accuracy of batch and group).
    gap = {s: 0.1 + 0.01 * int(s) for s in none}
    raw_gap = paired_p({s: gap[s] for s in none}, {s: 0.1 for s in none})
    recal = {s: 0.02 + 0.003 * int(s) for s in none}
    raw_recal = paired_p({s: batch[s] + recal[s] for s in none}, batch)
    raw_recal_group = paired_p({s: group[s] + recal[s] for s in none}, group)
    expected = holm([*raw_test, raw_gap, raw_recal, raw_recal_group])
    assert raw_test[1] < 0.05 <= expected[1], "the scenario: significant alone, not after Holm"
    assert "Multiple comparisons: 5 tests, Holm-adjusted" in text

    rows = md_table_rows(text, "| comparison")
    bn, gn = rows["model/norm: batch − none"], rows["model/norm: group − none"]
    assert bn[2].endswith(" *") and bn[4:6] == [f"{raw_test[0]:.3g}", f"{expected[0]:.3g}"]
    assert not gn[2].endswith("*"), "no star before the adjustment says so"
    assert gn[4:6] == [f"{raw_test[1]:.3g}", f"{expected[1]:.3g}"]

    with (tmp_path / "contrasts.csv").open() as f:
        report = [r for r in csv.DictReader(f) if r["family"] == "report"]
    assert len(report) == 6  # GroupNorm's gap contrast is listed, untested
    by = {(r["metric"], r["value"]): r for r in report}
    group_test = by[("test_acc", "group")]
    assert float(group_test["p_raw"]) == pytest.approx(raw_test[1])
    assert float(group_test["p_holm"]) == pytest.approx(expected[1])
    assert group_test["significant_holm"] == "False"
    assert by[("train_val_gap", "group")]["p_holm"] == ""


def test_recalibrated_accuracy_sits_beside_test_accuracy(tmp_path):
    write_sweep(tmp_path)
    text = write_report(tmp_path, plots=False).read_text()
    table = md_table_rows(text, "| configuration | n |")
    assert table["model/norm=batch"][-3].startswith(f"{0.6133 + 0.023:.4f}")  # mean + 0.02..
    section = md_table_rows(text, "| configuration | test acc | test acc, BN re-estimated")
    assert section["model/norm=batch"][2].startswith("+0.0230")
    assert section["model/norm=none"][1:] == ["–", "–", "–", "–"]
    assert "Li et al. 2019" in text


def test_per_epoch_contrasts_are_their_own_family(tmp_path):
    write_sweep(tmp_path)
    text = write_report(tmp_path, plots=False).read_text()
    rows = md_table_rows(text, "| comparison | where | epoch 1")
    assert list(rows) == ["model/norm: batch − none", "model/norm: group − none"]
    with (tmp_path / "contrasts.csv").open() as f:
        epochs = [r for r in csv.DictReader(f) if r["family"] == "per-epoch"]
    assert sorted({r["epoch"] for r in epochs}) == ["1", "2"]
    raw = [float(r["p_raw"]) for r in epochs]
    assert [float(r["p_holm"]) for r in epochs] == pytest.approx(holm(raw))
    assert "4 tests are Holm-adjusted together" in text


def test_summary_csv_shows_the_learning_rate_each_job_used(tmp_path):
    write_sweep(tmp_path)
    write_report(tmp_path, plots=False)
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01 * (n + 1) for n in range(9)])
    assert float(rows[0]["train_val_gap"]) == pytest.approx(0.1)  # from the eval-mode accuracy
