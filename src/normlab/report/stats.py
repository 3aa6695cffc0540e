"""Is a difference between two configurations real? Confidence intervals over seeds.

A sweep repeats each configuration over seeds; a study's answer is a difference between two
of them (BN minus no norm, dropout minus none). With the same seeds on both sides the runs are
paired (same validation split, same batch order and augmentation), so the interval comes from
the per-seed differences (paired t); otherwise from Welch's unequal-variance t.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats

# Values differing by less than this (relative to the values) count as equal: the
# differences of accuracies that differ by the same number of images can still differ in the
# last bits (0.7 - 0.6 != 0.6 - 0.5 in floating point), and a t-test would read that as a
# spread of 1e-17 and a p-value of 1e-31.
SAME = 1e-9


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
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0  # False for NaN: no interval, no claim


def difference(
    a: Mapping[str, float], b: Mapping[str, float], level: float = 0.95
) -> Difference | None:
    """Compare two configurations' values, keyed by seed. Paired when both have the same
    seeds; None when there are too few values for an interval."""
    xa, xb = list(a.values()), list(b.values())
    scale = max((abs(x) for x in xa + xb), default=0.0)
    if set(a) == set(b) and len(a) >= 2:
        diffs = [a[seed] - b[seed] for seed in sorted(a)]
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


Run = tuple[Mapping[str, str], str, float]  # (swept settings without seed, seed, value)


def contrasts(
    runs: list[Run], axes: list[str], baselines: Mapping[str, str] | None = None
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
                    found.append(Contrast(axis, value, baseline, dict(where), diff))
    return found
