"""What the TensorBoard diagnostics cost: epoch time with and without them, same config.

    python -m normlab.bench_diagnostics [--repeats 3] [--epochs 4] [--threads N] [override ...]

Fits each workload (digits; synthetic CIFAR-sized data with 10k training images; or the one
workload given as Hydra overrides) with the diagnostics off, at their defaults, with no time
budget (`max_overhead=null`: every instrumented step and picture), and off once more (the
noise floor), interleaved `--repeats` times in one process so that machine noise hits all
alike. Prints, per setting, the median epoch time (validation included, first epoch left out:
warm-up) in wall seconds and in CPU seconds of this process, their ratios to "off", and the
diagnostics' own count of the time they took, as a share of the rest. On a machine shared
with other jobs trust the CPU seconds (waiting for a core is not counted) and the own share.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

import normlab  # noqa: F401 - registers the ${pid:} resolver
from normlab.callbacks import NetworkDiagnostics
from normlab.quiet import quiet_lightning
from normlab.run import build_module, build_network, instantiate_all

CONF = Path(__file__).resolve().parents[2] / "conf"
WORKLOADS = {
    "digits": ["data=digits"],
    "synthetic 10k": ["data=synthetic", "data.train_size=10000"],
}
SETTINGS = {
    "off": ["callbacks/diagnostics=none"],
    "default": [],
    "no budget": ["callbacks.diagnostics.max_overhead=null"],
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


def fit(overrides: list[str], output_dir: Path) -> tuple[EpochTimer, float | None]:
    """Fit as train.py would (no test); returns the epoch times and the diagnostics' own
    count of the seconds they took."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg, build_network(cfg.model))
    timer = EpochTimer()
    callbacks = [*instantiate_all(cfg.callbacks), timer]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_all(cfg.logger))
    trainer.fit(module, datamodule=instantiate(cfg.data))
    spent = [c.budget.spent for c in callbacks if isinstance(c, NetworkDiagnostics)]
    return timer, spent[0] if spent else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: one workload")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workloads = {" ".join(args.overrides): args.overrides} if args.overrides else WORKLOADS
    quiet_lightning()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"torch threads: {torch.get_num_threads()}, device: {device}")
    header = ("workload", "diagnostics", "wall s", "ratio", "cpu s", "ratio", "own share")
    print("{:<16}{:<12}{:>8}{:>7}{:>8}{:>7}{:>11}".format(*header))
    with tempfile.TemporaryDirectory() as tmp:
        for workload, overrides in workloads.items():
            wall = {setting: [] for setting in SETTINGS}
            cpu = {setting: [] for setting in SETTINGS}
            own = {setting: [] for setting in SETTINGS}
            for repeat in range(args.repeats):
                for setting, extra in SETTINGS.items():
                    run_dir = Path(tmp) / f"{workload}-{setting}-{repeat}".replace(" ", "_")
                    full = [*COMMON, f"trainer.max_epochs={args.epochs}", *overrides, *extra]
                    timer, spent = fit(full, run_dir)
                    wall[setting] += timer.wall[1:]
                    cpu[setting] += timer.cpu[1:]
                    if spent is not None:
                        own[setting].append(spent / (sum(timer.wall) - spent))
            base_wall, base_cpu = statistics.median(wall["off"]), statistics.median(cpu["off"])
            for setting in SETTINGS:
                w, c = statistics.median(wall[setting]), statistics.median(cpu[setting])
                share = f"{statistics.median(own[setting]):.1%}" if own[setting] else "-"
                print(
                    f"{workload:<16}{setting:<12}{w:>8.3f}{w / base_wall:>7.3f}"
                    f"{c:>8.3f}{c / base_cpu:>7.3f}{share:>11}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
