"""The report's confidence intervals against SciPy's own t-tests and a hand calculation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from normlab.report import write_report
from normlab.report.stats import contrasts, difference

# Test accuracies of two configurations over seeds 0, 1, 2 (fixed numbers).
WITH_BN = {"0": 0.612, "1": 0.598, "2": 0.621}
WITHOUT = {"0": 0.541, "1": 0.552, "2": 0.530}


def test_paired_interval_matches_scipy_ttest_rel():
    seeds = sorted(WITH_BN)
    result = stats.ttest_rel([WITH_BN[s] for s in seeds], [WITHOUT[s] for s in seeds])
    ci = result.confidence_interval(0.95)
    diff = difference(WITH_BN, WITHOUT)
    assert diff.paired and diff.n == 3
    assert diff.low == pytest.approx(ci.low, abs=1e-12)
    assert diff.high == pytest.approx(ci.high, abs=1e-12)
    assert diff.p_value == pytest.approx(result.pvalue, abs=1e-12)
    assert diff.excludes_zero


def test_paired_interval_by_hand():
    # per-seed differences 0.071, 0.046, 0.091: mean 0.0693..., sd 0.02255, t(0.975, 2) 4.3027
    d = [0.612 - 0.541, 0.598 - 0.552, 0.621 - 0.530]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)
    diff = difference(WITH_BN, WITHOUT)
    assert diff.mean == pytest.approx(0.0693333, abs=1e-6)
    assert (diff.low, diff.high) == pytest.approx((mean - half, mean + half), abs=1e-9)


def test_unpaired_interval_matches_scipy_welch():
    a = {"0": 0.61, "1": 0.60, "2": 0.63, "3": 0.58}
    b = {"5": 0.55, "6": 0.57, "7": 0.50}
    result = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    ci = result.confidence_interval(0.95)
    diff = difference(a, b)
    assert not diff.paired
    assert (diff.low, diff.high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert diff.p_value == pytest.approx(result.pvalue, abs=1e-12)


def test_no_interval_from_a_single_seed():
    assert difference({"0": 0.5}, {"0": 0.4}) is None


def test_contrasts_hold_the_other_axes_fixed_and_honour_baselines():
    runs = []
    for lr, shift in (("0.01", 0.0), ("0.1", 0.3)):
        for seed, (a, b) in enumerate(zip(WITH_BN.values(), WITHOUT.values(), strict=True)):
            runs.append(({"norm": "none", "lr": lr}, str(seed), b - shift))
            runs.append(({"norm": "batch", "lr": lr}, str(seed), a))
    found = contrasts(runs, ["norm", "lr"])
    by_norm = {c.where["lr"]: c for c in found if c.axis == "norm"}
    assert set(by_norm) == {"0.01", "0.1"}
    assert all(c.value == "batch" and c.baseline == "none" for c in by_norm.values())
    assert by_norm["0.1"].diff.mean == pytest.approx(by_norm["0.01"].diff.mean + 0.3)
    flipped = [c for c in contrasts(runs, ["norm"], {"norm": "batch"}) if c.axis == "norm"]
    assert flipped and all(c.value == "none" and c.diff.mean < 0 for c in flipped)


def write_job(sweep: Path, name: str, overrides: list[str], test_acc: float) -> None:
    job = sweep / name
    job.mkdir(parents=True)
    results = {
        "status": "completed",
        "val_acc_best": test_acc,
        "val_acc_final": test_acc,
        "test_acc": test_acc,
        "train_acc_final": test_acc + 0.05,
        "overrides": overrides,
    }
    (job / "results.json").write_text(json.dumps(results))


def test_summary_md_reports_the_interval_of_the_swept_contrast(tmp_path):
    n = 0
    for norm, accs in (("none", WITHOUT), ("batch", WITH_BN)):
        for seed, acc in accs.items():
            write_job(tmp_path, str(n), [f"model/norm={norm}", f"seed={seed}"], acc)
            n += 1
    text = write_report(tmp_path, plots=False).read_text()
    seeds = sorted(WITH_BN)
    ci = stats.ttest_rel([WITH_BN[s] for s in seeds], [WITHOUT[s] for s in seeds])
    ci = ci.confidence_interval(0.95)
    row = next(line for line in text.splitlines() if line.startswith("| model/norm: batch − none"))
    assert f"[{ci.low:+.4f}, {ci.high:+.4f}]" in row
    assert "+0.0693 *" in row


# ---------------------------------------------------------------------------------------------
# No spread: the same difference for every seed.


def test_identical_configurations_give_no_interval_like_scipy():
    same = {"0": 0.61, "1": 0.57}
    result = stats.ttest_rel(list(same.values()), list(same.values()))
    diff = difference(same, dict(same))
    assert math.isnan(result.pvalue) and math.isnan(diff.p_value)
    assert diff.mean == 0 and not diff.has_interval and not diff.excludes_zero


# scipy itself warns here: "catastrophic cancellation ... Results may be unreliable".
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_a_constant_difference_over_two_seeds_is_not_significant():
    # Both seeds gain exactly 1 of 8 test images (exact in binary). scipy's ttest_rel returns
    # t = inf and p = 0 with a zero-width interval, which the report used to star as
    # significant: two runs with the same gain are no evidence that the gain is certain.
    a, b = {"0": 5 / 8, "1": 6 / 8}, {"0": 4 / 8, "1": 5 / 8}
    result = stats.ttest_rel(list(a.values()), list(b.values()))
    assert result.pvalue == 0.0 and math.isinf(result.statistic)
    diff = difference(a, b)
    assert diff.mean == 1 / 8
    assert math.isnan(diff.p_value) and not diff.has_interval and not diff.excludes_zero


# scipy itself warns here: "catastrophic cancellation ... Results may be unreliable".
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_a_spread_of_rounding_errors_is_no_spread():
    # 0.7 - 0.6, 0.6 - 0.5 and 0.8 - 0.7 differ in their last bits: scipy finds a spread of
    # about 1e-16 and p ~ 1e-31; the report finds the same difference three times.
    a, b = {"0": 0.7, "1": 0.6, "2": 0.8}, {"0": 0.6, "1": 0.5, "2": 0.7}
    assert stats.ttest_rel(list(a.values()), list(b.values())).pvalue < 1e-20
    diff = difference(a, b)
    assert diff.mean == pytest.approx(0.1) and not diff.has_interval and not diff.excludes_zero


def test_a_seed_missing_on_one_side_leaves_the_rest_paired():
    """A job that did not finish drops its seed from the contrast; the others stay paired
    (a switch to Welch's t on unequal groups would discard the pairing the design has)."""
    a = {"0": 0.64, "1": 0.65}
    b = {"0": 0.61, "1": 0.61, "2": 0.60}
    result = stats.ttest_rel([0.64, 0.65], [0.61, 0.61])
    diff = difference(a, b)
    assert diff.paired and diff.n == 2
    assert diff.p_value == pytest.approx(result.pvalue, abs=1e-12)


def test_unpaired_groups_without_spread_give_no_interval():
    diff = difference({"0": 0.6, "1": 0.6}, {"5": 0.5, "6": 0.5})
    assert not diff.paired and not diff.has_interval and not diff.excludes_zero


def test_a_real_spread_still_gets_scipys_interval():
    # A spread far above the rounding noise: unchanged (cf. the tests at the top).
    a, b = {"0": 0.7, "1": 0.6, "2": 0.8}, {"0": 0.6, "1": 0.5, "2": 0.69}
    result = stats.ttest_rel(list(a.values()), list(b.values()))
    diff = difference(a, b)
    assert diff.has_interval and diff.p_value == pytest.approx(result.pvalue, abs=1e-12)


def test_summary_md_shows_no_interval_and_no_star_without_spread(tmp_path):
    n = 0
    for norm, accs in (
        ("none", {"0": 197 / 360, "1": 207 / 360}),
        ("batch", {"0": 200 / 360, "1": 210 / 360}),
    ):
        for seed, acc in accs.items():
            write_job(tmp_path, str(n), [f"model/norm={norm}", f"seed={seed}"], acc)
            n += 1
    text = write_report(tmp_path, plots=False).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| model/norm: batch − none"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3:6] == ["+0.0083", "(no spread)", "–"], cells
