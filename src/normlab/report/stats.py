"""Is a difference between two configurations real? Confidence intervals over seeds.

A sweep repeats each configuration over seeds; a study's answer is a difference between two
of them (BN minus no norm, dropout minus none). With the same seeds on both sides the runs are
paired (same validation split, same batch order and augmentation), so the interval comes from
the per-seed differences over the seeds both sides ran (paired t); only without two such
seeds from Welch's unequal-variance t.

A report makes many such comparisons, and at p < 0.05 one in twenty true nulls would look
real. `holm` adjusts a family's p-values (Holm 1979: step-down Bonferroni, which controls the
chance of any false claim in the family at 0.05 without assuming independence); a contrast
is called significant only by its adjusted p-value.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

# Values differing by less than this (relative to the values) count as equal: the
# differences of accuracies that differ by the same number of images can still differ in the
# last bits (0.7 - 0.6 != 0.6 - 0.5 in floating point), and a t-test would read that as a
# spread of 1e-17 and a p-value of 1e-31.
SAME = 1e-9
# The family-wise error rate the adjusted p-values are compared with.
ALPHA = 0.05


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b), with a two-sided confidence interval and p-value; the interval
    and p-value are NaN when the values have no spread to estimate one from."""

    mean: float
    low: float
    high: float
    p_value: float
    n: int  # pairs (paired) or the smaller group (Welch)
    paired: bool

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)

    @property
    def excludes_zero(self) -> bool:
        """The unadjusted 95% interval excludes zero (p < 0.05 before any correction)."""
        return self.low > 0 or self.high < 0  # False for NaN: no interval, no claim


def difference(
    a: Mapping[str, float], b: Mapping[str, float], level: float = 0.95
) -> Difference | None:
    """Compare two configurations' values, keyed by seed. Paired over the seeds both ran when
    there are two or more (a job missing on one side drops that seed from both: the design
    stays paired, the interval widens); Welch's t otherwise; None when there are too few
    values for an interval."""
    xa, xb = list(a.values()), list(b.values())
    scale = max((abs(x) for x in xa + xb), default=0.0)
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        diffs = [a[seed] - b[seed] for seed in common]
        n = len(diffs)
        mean = statistics.fmean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(n)
        return _interval(mean, se, n - 1, level, n, paired=True, scale=scale)
    if len(xa) < 2 or len(xb) < 2:
        return None
    va, vb = statistics.variance(xa) / len(xa), statistics.variance(xb) / len(xb)
    se = math.sqrt(va + vb)
    # Welch–Satterthwaite degrees of freedom.
    df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1)) if se > 0 else 1.0
    mean = statistics.fmean(xa) - statistics.fmean(xb)
    return _interval(mean, se, df, level, min(len(xa), len(xb)), paired=False, scale=scale)


def _interval(
    mean: float, se: float, df: float, level: float, n: int, paired: bool, scale: float
) -> Difference:
    if se <= SAME * scale:
        # No spread (e.g. every seed moved by the same number of test images): a t interval
        # would have zero width and p = 0, "significant" from two seeds. Zero variance in a
        # handful of runs is not evidence of no uncertainty; there is no interval to give.
        # (scipy's ttest_rel gives p NaN for an all-zero difference, p 0 for a constant one.)
        return Difference(mean, math.nan, math.nan, math.nan, n, paired)
    half = stats.t.ppf(0.5 + level / 2, df) * se
    p = 2 * stats.t.sf(abs(mean) / se, df)
    return Difference(mean, mean - half, mean + half, float(p), n, paired)


@dataclass(frozen=True)
class Contrast:
    """One swept value against the axis's baseline, the other axes held fixed."""

    axis: str
    value: str
    baseline: str
    where: dict[str, str]  # the other axes' values
    diff: Difference
    metric: str = ""  # the results.json key compared, e.g. test_acc
    # Holm-adjusted within the report's family of contrasts (NaN until `adjust_family`).
    p_adjusted: float = math.nan

    @property
    def key(self) -> tuple:
        """The comparison, whatever the metric: (axis, value, the other axes' values)."""
        return (self.axis, self.value, tuple(self.where.items()))

    @property
    def significant(self) -> bool:
        """Significant after the family's Holm adjustment (False without an interval)."""
        return self.p_adjusted < ALPHA  # False for NaN


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given. The k-th smallest of m
    p-values becomes max over j <= k of min(1, (m - j + 1) p_(j)). NaN p-values (differences
    with no spread: no test was made) stay NaN and do not count in m."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(tested)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def adjust_family(family: Sequence[Contrast]) -> list[Contrast]:
    """The contrasts with `p_adjusted` set: Holm over the whole family."""
    adjusted = holm([c.diff.p_value for c in family])
    return [dataclasses.replace(c, p_adjusted=p) for c, p in zip(family, adjusted, strict=True)]


def family_size(family: Sequence[Contrast]) -> int:
    """How many tests the adjustment counted (contrasts with an interval)."""
    return sum(not math.isnan(c.diff.p_value) for c in family)


Run = tuple[Mapping[str, str], str, float]  # (swept settings without seed, seed, value)


def contrasts(
    runs: list[Run],
    axes: list[str],
    baselines: Mapping[str, str] | None = None,
    metric: str = "",
) -> list[Contrast]:
    """Every value of every axis against that axis's baseline (the first value swept, or the
    one `baselines` names), within each combination of the other axes."""
    found: list[Contrast] = []
    for axis in axes:
        values = list(dict.fromkeys(settings[axis] for settings, _, _ in runs if axis in settings))
        baseline = (baselines or {}).get(axis, values[0] if values else None)
        if baseline not in values:
            continue
        groups: dict[tuple, dict[str, dict[str, float]]] = {}
        for settings, seed, value in runs:
            where = tuple((k, settings.get(k, "")) for k in axes if k != axis)
            groups.setdefault(where, {}).setdefault(settings.get(axis, ""), {})[seed] = value
        for where, by_value in groups.items():
            if baseline not in by_value:
                continue
            for value in values:
                if value == baseline or value not in by_value:
                    continue
                diff = difference(by_value[value], by_value[baseline])
                if diff is not None:
                    found.append(Contrast(axis, value, baseline, dict(where), diff, metric))
    return found
