"""Each arm at its own best value of one axis, chosen on validation (`--best-of AXIS`).

A study that sweeps the learning rate asks "BN against no norm, each at the rate that suits
it": comparing both at one shared rate favours whichever norm that rate happens to suit. For
every combination of the other axes (an arm), the value of AXIS with the highest mean best
validation accuracy over seeds is chosen; the arms are then compared on test accuracy at
their chosen values, paired by seed. The test split plays no part in the choice. These
contrasts are a family of their own, Holm-adjusted within it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from normlab.errors import NormlabError
from normlab.report.cells import delta_cell, format_mean_std, interval_cell, markdown_table, p_cell
from normlab.report.stats import ALPHA, Contrast, adjust_family, contrasts, family_size
from normlab.report.sweep import Config, Sweep

CHOSEN_BY = "val_acc_best"


def check_best_of(sweep: Sweep, axis: str | None) -> None:
    """NormlabError unless `axis` is one the sweep varies (besides the seed)."""
    axes = [k for k in sweep.varying if k != "seed"]
    if axis is None or axis in axes:
        return
    if not axes:
        fix = "This sweep varies nothing but the seed, so there is nothing to choose."
    else:
        fix = f"The swept axes: {', '.join(axes)}. Name one, e.g. --best-of {axes[-1]}."
    raise NormlabError(f"--best-of {axis}: {axis} is not swept. {fix}")


def arm_of(config: Config, axis: str) -> tuple:
    """The configuration's settings but `axis`: the arm it belongs to."""
    return tuple((k, v) for k, v in config.settings.items() if k != axis)


def chosen_configs(sweep: Sweep, axis: str) -> list[Config]:
    """Per arm, the configuration whose `axis` value has the highest mean validation accuracy
    (arms where no run was measured are left out)."""
    best: dict[tuple, tuple[float, Config]] = {}
    for config in sweep.configs:
        values = config.values(CHOSEN_BY)
        if not values:
            continue
        score = statistics.fmean(values)
        arm = arm_of(config, axis)
        if arm not in best or score > best[arm][0]:
            best[arm] = (score, config)
    return [config for _, config in best.values()]


def best_of_family(
    sweep: Sweep, axis: str, baselines: Mapping[str, str] | None = None
) -> list[Contrast]:
    """Test-accuracy contrasts between arms at their chosen values, Holm-adjusted together."""
    runs = [
        (dict(arm_of(config, axis)), job.seed or job.name, value)
        for config in chosen_configs(sweep, axis)
        for job in config.jobs
        if job.measured and (value := job.value("test_acc")) is not None
    ]
    axes = [k for k in sweep.varying if k not in ("seed", axis)]
    return adjust_family(contrasts(runs, axes, baselines, metric="test_acc"))


def best_of_section(
    sweep: Sweep, axis: str, baselines: Mapping[str, str] | None = None
) -> list[str]:
    chosen = chosen_configs(sweep, axis)
    arms = [
        [
            ", ".join(f"{k}={config.shown[k]}" for k, _ in arm_of(config, axis)) or "all runs",
            config.shown.get(axis, "–"),
            str(config.measured),
            format_mean_std(config.values(CHOSEN_BY), config.measured),
            format_mean_std(config.values("test_acc"), config.measured),
        ]
        for config in chosen
    ]
    family = best_of_family(sweep, axis, baselines)
    rows = [
        [
            f"{c.axis}: {sweep.show(c.axis, c.value)} − {sweep.show(c.axis, c.baseline)}",
            ", ".join(f"{k}={sweep.show(k, v)}" for k, v in c.where.items()) or "–",
            f"{c.diff.n}{'' if c.diff.paired else ' (unpaired)'}",
            delta_cell(c),
            interval_cell(c),
            p_cell(c.diff.p_value),
            p_cell(c.p_adjusted),
        ]
        for c in family
    ]
    lines = [
        "",
        f"## Each arm at its best {axis} (chosen on validation)",
        "",
        f"For each combination of the other axes, the {axis} with the highest mean best "
        "validation accuracy over seeds; test accuracy at that value. The test split plays no "
        "part in the choice.",
        "",
        *markdown_table(["arm", f"chosen {axis}", "n", "best val acc", "test acc"], arms),
    ]
    if rows:
        lines += [
            "",
            f"The arms compared at their chosen values, paired by seed: a family of its own, "
            f"{family_size(family)} tests Holm-adjusted together; * marks adjusted p below "
            f"{ALPHA}.",
            "",
            *markdown_table(
                [
                    "comparison at the chosen values",
                    "where",
                    "n",
                    "Δ test acc",
                    "95% CI",
                    "p (raw)",
                    "p (Holm)",
                ],
                rows,
            ),
        ]
    return lines
