"""What the TensorBoard diagnostics cost: epoch time with and without them, same config.

    python -m normlab.bench_diagnostics [--repeats 3] [--epochs 4] [override ...]

Runs each workload (digits, and synthetic CIFAR-sized data with 10k training images; or one
workload given by Hydra overrides) with the diagnostics off, at their defaults, and with no
time budget (`max_overhead=null`: every instrumented step and picture drawn), interleaved
`--repeats` times in one process so that machine noise hits all three alike. Prints the median
and the fastest epoch time of each (first epochs left out: they include warm-up) and their
ratios to "off". On a shared machine trust the fastest epochs: noise only ever adds time.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import normlab  # noqa: F401 - registers the ${pid:} resolver
from normlab.run import train

CONF = Path(__file__).resolve().parents[2] / "conf"
WORKLOADS = {
    "digits": ["data=digits"],
    "synthetic 10k": ["data=synthetic", "data.train_size=10000"],
}
SETTINGS = {
    "off": ["callbacks/diagnostics=none"],
    "default": [],
    "no budget": ["callbacks.diagnostics.max_overhead=null"],
}
# Quiet: no progress bar, no epoch lines; the bench prints its own table.
COMMON = ["callbacks.progress_bar.refresh_rate=0", "callbacks.history.print_summary=false"]


def epoch_times(overrides: list[str], output_dir: Path) -> list[float]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands the config to train.py
    results = train(cfg)
    return [row["time/epoch_s"] for row in results["history"]][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: one workload")
    args = parser.parse_args()
    workloads = {" ".join(args.overrides): args.overrides} if args.overrides else WORKLOADS
    for name in (
        "normlab",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)

    print(f"{'workload':<22}{'diagnostics':<12}{'median s':>9}{'ratio':>7}{'min s':>9}{'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for workload, overrides in workloads.items():
            times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
            for repeat in range(args.repeats):
                for setting, extra in SETTINGS.items():
                    run_dir = Path(tmp) / f"{len(times[setting])}-{setting}-{repeat}"
                    full = [*COMMON, f"trainer.max_epochs={args.epochs}", *overrides, *extra]
                    times[setting] += epoch_times(full, run_dir)
            base_median, base_min = statistics.median(times["off"]), min(times["off"])
            for setting, values in times.items():
                median, fastest = statistics.median(values), min(values)
                print(
                    f"{workload:<22}{setting:<12}{median:>9.3f}{median / base_median:>7.3f}"
                    f"{fastest:>9.3f}{fastest / base_min:>7.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
