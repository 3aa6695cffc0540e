"""What the TensorBoard diagnostics cost: epoch time with and without them, same config.

    python -m normlab.bench.diagnostics [--repeats 3] [--epochs 4] [--threads N] [override ...]

Fits each workload (digits; synthetic CIFAR-sized data with 10k training images; or the one
workload given as Hydra overrides) with the diagnostics off, at their defaults, instrumenting
every step, and off once more (the noise floor), interleaved `--repeats` times in one process
so that machine noise hits all alike. Prints, per setting, the median epoch time (validation
included, first epoch left out: warm-up) in wall seconds and in CPU seconds of this process,
and their ratios to "off". On a machine shared with other jobs trust the CPU seconds (waiting
for a core is not counted). Run from the repository root, or pass --repo.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from normlab.bench.suite import checked_repo, compose_config
from normlab.runner.build import build_module, build_network, build_trainer
from normlab.runner.cli import quiet_lightning

WORKLOADS = {
    "digits": ["data=digits"],
    "synthetic 10k": ["data=synthetic", "data.train_size=10000"],
}
SETTINGS = {
    "off": ["callbacks/diagnostics=none"],
    "default": [],
    "every step": ["callbacks.diagnostics.every_n_steps=1"],
    # The same as "off": how far apart two identical settings land, i.e. the noise.
    "off again": ["callbacks/diagnostics=none"],
}
# Quiet: no progress bar, no epoch lines; the bench prints its own table.
COMMON = ["callbacks.progress_bar.refresh_rate=0", "callbacks.history.print_summary=false"]


class EpochTimer(L.Callback):
    """Wall and process CPU seconds of each training epoch, its validation included."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)


def fit(repo: Path, overrides: list[str], output_dir: Path) -> EpochTimer:
    """Fit as train.py would (no test); returns the epoch times."""
    cfg = compose_config(repo, [*overrides, f"paths.output_dir={output_dir}"])
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg, build_network(cfg.model))
    timer = EpochTimer()
    trainer = build_trainer(cfg)
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=instantiate(cfg.data))
    return timer


def at_least(smallest: int, why: str) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `smallest`."""

    def parse(text: str) -> int:
        value = int(text)
        if value < smallest:
            raise argparse.ArgumentTypeError(f"{value}: must be {smallest} or more ({why})")
        return value

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=at_least(1, "runs per setting"), default=3)
    parser.add_argument(
        "--epochs",
        type=at_least(2, "the first epoch is warm-up and left out of the times"),
        default=4,
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: one workload")
    args = parser.parse_args(argv)
    repo = checked_repo(args.repo)
    if args.threads:
        torch.set_num_threads(args.threads)
    workloads = {" ".join(args.overrides): args.overrides} if args.overrides else WORKLOADS
    quiet_lightning()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"torch threads: {torch.get_num_threads()}, device: {device}")
    header = ("workload", "diagnostics", "wall s", "ratio", "cpu s", "ratio")
    print("{:<16}{:<12}{:>8}{:>7}{:>8}{:>7}".format(*header))
    with tempfile.TemporaryDirectory() as tmp:
        for workload, overrides in workloads.items():
            wall = {setting: [] for setting in SETTINGS}
            cpu = {setting: [] for setting in SETTINGS}
            for repeat in range(args.repeats):
                for setting, extra in SETTINGS.items():
                    label = re.sub(r"\W+", "_", f"{workload}-{setting}-{repeat}")
                    run_dir = Path(tmp) / label  # a plain name: it goes into an override
                    full = [*COMMON, f"trainer.max_epochs={args.epochs}", *overrides, *extra]
                    timer = fit(repo, full, run_dir)
                    wall[setting] += timer.wall[1:]
                    cpu[setting] += timer.cpu[1:]
            base_wall, base_cpu = statistics.median(wall["off"]), statistics.median(cpu["off"])
            for setting in SETTINGS:
                w, c = statistics.median(wall[setting]), statistics.median(cpu[setting])
                print(
                    f"{workload:<16}{setting:<12}{w:>8.3f}{w / base_wall:>7.3f}"
                    f"{c:>8.3f}{c / base_cpu:>7.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
