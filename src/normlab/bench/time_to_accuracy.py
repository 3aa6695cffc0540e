"""Time to accuracy on real data, a race of three arms to a validation accuracy fixed in advance:

    python -m normlab.bench.time_to_accuracy --data data/cifar10-jpeg

`lesson`: the lesson's loop and recipe as written (`normlab.bench.race_loop`).
`normlab`: normlab's recipe through the real `train.py` (Lightning), stopped by
`normlab.bench.race_trace.RaceTrace`.
`lesson_loop_normlab_recipe`: the lesson's hand-written loop running normlab's recipe, so that
lesson / this arm is the recipe's share and this arm / normlab the framework's.

The race's settings are a committed file, time_to_accuracy.yaml beside this module (--config):
the target validation accuracy, the seeds, the threads, the validation split, the lesson's
epoch cap and normlab's recipe. Every arm trains on the same 45,000 training images, checks
correct / total on the same held-out validation images after every epoch, and stops at the
first epoch that reaches the target (or at its cap: then it never reached it). Each arm is a
process of its own, timed from its launch (start-up and data loading included) to the end of
that epoch's validation; the test-set accuracy recorded after each epoch is timed apart and
left out. Arms run interleaved by seed (seed 1: lesson, normlab, lesson loop with normlab's
recipe; then seed 2 ...), so the machine's drift hits them alike.

Writes per arm `first_cross_s` (a time per seed; null: never reached), the crossing epochs,
the test accuracy there and every epoch's accuracies and times, and `ratio` = median lesson /
median normlab with its two factors, to --output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from normlab.bench.lesson import lesson_transform
from normlab.errors import ConfigError

if TYPE_CHECKING:
    from normlab.data.base import ImageSplit

CONFIG = Path(__file__).with_suffix(".yaml")
ARMS = ("lesson", "normlab", "lesson_loop_normlab_recipe")


class LessonCNN(nn.Module):
    """The lesson's network, cell 5, as written.

    `normlab.nn.SeedCNN()` is the same network (same layers, the same initial weights from the
    same seed, the same outputs: tests/test_bench.py checks it), but its block structure adds
    eleven module calls (Identity norms and dropouts, Sequentials) to every forward: about 1%
    of a batch-4 CPU step, which would slow the lesson's side of the race. The lesson's time is
    measured on the lesson's code.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


class ArrayImages(Dataset):
    """torchvision's `CIFAR10.__getitem__` over an in-memory uint8 [N, H, W, 3] array."""

    def __init__(
        self,
        images: np.ndarray,
        labels: list[int],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.data, self.targets, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def array_images(split: ImageSplit) -> ArrayImages:
    """A split as torchvision's `CIFAR10` holds its images: the [N, H, W, 3] transpose of
    a contiguous [N, 3, H, W] array (`data.transpose((0, 2, 3, 1))` in torchvision), not a
    contiguous copy. Each sample is then a strided view that `Image.fromarray` copies via
    `tobytes()`, as it does in the lesson, so this side pays what the lesson pays."""
    images = split.images.permute(0, 2, 3, 1).numpy()
    return ArrayImages(images, split.labels.tolist(), lesson_transform())


def _config_error(path: Path, key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{path}: {key} {problem}. {fix}")


def load_race_config(path: Path = CONFIG) -> dict[str, Any]:
    """The race's settings, checked before anything runs (see time_to_accuracy.yaml)."""
    race = yaml.safe_load(Path(path).read_text()) or {}
    target = race.get("target_acc")
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
        raise _config_error(
            path, "target_acc", f"is {target!r}", "Set a validation accuracy in (0, 1], e.g. 0.58."
        )
    seeds = race.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise _config_error(
            path, "seeds", f"is {seeds!r}", "List one whole number per run, e.g. seeds: [1, 2, 3]."
        )
    for key, value in (
        ("threads", race.get("threads")),
        ("lesson.max_epochs", (race.get("lesson") or {}).get("max_epochs")),
    ):
        if type(value) is not int or value < 1:
            raise _config_error(path, key, f"is {value!r}", "Set a whole number from 1.")
    recipe = race.get("normlab_recipe")
    if not isinstance(recipe, list) or not all(isinstance(o, str) and "=" in o for o in recipe):
        raise _config_error(
            path,
            "normlab_recipe",
            f"is {recipe!r}",
            "List train.py overrides, e.g. [model=cnn_bn, trainer.max_epochs=3].",
        )
    data = race.get("data") or {}
    if not {"val_size", "split_seed"} <= set(data):
        raise _config_error(path, "data", f"is {data!r}", "Give data.val_size and data.split_seed.")
    return race


class RacePaths:
    """Where one race reads and writes: the data, normlab's image cache, the repository
    (train.py and conf/), the config and a scratch folder for the arms' traces and runs."""

    def __init__(
        self, data: Path, repo: Path, config: Path, workdir: Path, cache_dir: Path
    ) -> None:
        self.data, self.repo, self.config, self.workdir = data, repo, config, workdir
        self.cache_dir = cache_dir


def build_cache(data_root: Path, cache_dir: Path) -> None:
    """Decode the images into normlab's cache (or find them there) before any arm runs."""
    from normlab.data.image_folder import ImageFolderDataModule

    ImageFolderDataModule(
        str(data_root), mean=(0.5,) * 3, std=(0.5,) * 3, cache_dir=str(cache_dir)
    ).load()


def arm_command(arm: str, seed: int, race: dict, paths: RacePaths, trace: Path) -> list[str]:
    """The process that runs one arm for one seed."""
    if arm == "normlab":
        return [
            sys.executable,
            str(paths.repo / "train.py"),
            "data=cifar10_jpeg",
            f"data.root={paths.data}",
            f"data.cache_dir={paths.cache_dir}",
            f"data.val_size={race['data']['val_size']}",
            f"data.split_seed={race['data']['split_seed']}",
            *race["normlab_recipe"],
            f"seed={seed}",
            f"threads={race['threads']}",
            f"hydra.run.dir={paths.workdir / f'normlab-seed{seed}'}",
            "+callbacks.race_trace._target_=normlab.bench.race_trace.RaceTrace",
            f"+callbacks.race_trace.target={race['target_acc']}",
            f"+callbacks.race_trace.path={trace}",
        ]
    return [
        sys.executable,
        "-m",
        "normlab.bench.race_loop",
        f"--arm={arm}",
        f"--seed={seed}",
        f"--config={paths.config}",
        f"--data={paths.data}",
        f"--cache-dir={paths.cache_dir}",
        f"--repo={paths.repo}",
        f"--trace={trace}",
        f"--workdir={paths.workdir}",
    ]


def crossing(epochs: list[dict], target: float, launched: float) -> dict[str, Any]:
    """An arm's per-epoch record as the race reads it: each epoch's time since the launch,
    less the test evaluations before it, and the first epoch whose validation accuracy
    reaches `target` (None: none did)."""
    epoch_s, tested = [], 0.0
    for epoch in epochs:
        epoch_s.append(epoch["time"] - launched - tested)
        tested += epoch["test_s"]
    val_acc = [epoch["val_acc"] for epoch in epochs]
    first = next((i for i, acc in enumerate(val_acc) if acc >= target), None)
    return {
        "val_acc": val_acc,
        "test_acc": [epoch["test_acc"] for epoch in epochs],
        "epoch_s": epoch_s,
        "first_cross_s": None if first is None else epoch_s[first],
        "cross_epoch": None if first is None else first + 1,
        "test_acc_at_cross": None if first is None else epochs[first]["test_acc"],
    }


def run_arm(arm: str, seed: int, race: dict, paths: RacePaths) -> dict[str, Any]:
    """Launch one arm's process and read its per-epoch trace."""
    trace = paths.workdir / f"{arm}-seed{seed}.jsonl"
    log = paths.workdir / f"{arm}-seed{seed}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(race["threads"])}
    command = arm_command(arm, seed, race, paths, trace)
    with open(log, "w") as out:
        launched = time.time()
        done = subprocess.run(command, cwd=paths.repo, env=env, stdout=out, stderr=out)
        wall_s = time.time() - launched
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"error: the {arm} arm (seed {seed}) failed:\n{tail}")
    epochs = [json.loads(line) for line in trace.read_text().splitlines()]
    return {"seed": seed, **crossing(epochs, race["target_acc"], launched), "process_s": wall_s}


def median_or_none(times: list[float | None]) -> float | None:
    """The median crossing time, a run that never crossed counting as slower than any that
    did; None when that median is a run that never crossed (or there is no run yet)."""
    if not times:
        return None
    middle = statistics.median(math.inf if t is None else t for t in times)
    return None if math.isinf(middle) else middle


def summarize(race: dict, runs: dict[str, list[dict]]) -> dict[str, Any]:
    result: dict[str, Any] = {"target_acc": race["target_acc"], "seeds": race["seeds"]}
    medians = {}
    for arm in ARMS:
        rows = runs[arm]
        medians[arm] = median_or_none([row["first_cross_s"] for row in rows])
        result[arm] = {
            "first_cross_s": [row["first_cross_s"] for row in rows],
            "cross_epoch": [row["cross_epoch"] for row in rows],
            "test_acc_at_cross": [row["test_acc_at_cross"] for row in rows],
            "median_first_cross_s": medians[arm],
            "runs": rows,
        }

    def ratio(slow: str, fast: str) -> float | None:
        if medians[slow] is None or medians[fast] is None:
            return None
        return medians[slow] / medians[fast]

    result["ratio"] = ratio("lesson", "normlab")
    result["ratio_recipe"] = ratio("lesson", "lesson_loop_normlab_recipe")
    result["ratio_framework"] = ratio("lesson_loop_normlab_recipe", "normlab")
    return result


def race_table(result: dict) -> str:
    lines = [f"target: validation accuracy {result['target_acc']}"]
    for arm in ARMS:
        cells = []
        for t, epoch, acc in zip(
            result[arm]["first_cross_s"],
            result[arm]["cross_epoch"],
            result[arm]["test_acc_at_cross"],
            strict=True,
        ):
            cells.append("never" if t is None else f"{t:.0f} s (epoch {epoch}, test {acc:.3f})")
        lines.append(f"{arm:>27}: " + ", ".join(cells))
    for key in ("ratio", "ratio_recipe", "ratio_framework"):
        value = result[key]
        lines.append(
            f"{key}: " + ("n/a (a median arm never crossed)" if value is None else f"{value:.1f}x")
        )
    return "\n".join(lines)


def race_result(race: dict, runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    """The summary of the arms run so far; `complete` once every seed has run every arm."""
    result = summarize(race, runs)
    result.update(
        complete=all(len(rows) == len(race["seeds"]) for rows in runs.values()),
        threads=race["threads"],
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        data=str(args.data),
        config=race,
        order="interleaved by seed: " + ", ".join(ARMS) + " for each seed in turn",
    )
    return result


def race_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m normlab.bench.time_to_accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("data/cifar10-jpeg"),
        help="CIFAR-10 in class folders: <data>/{train,test}/<class>/*",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="normlab's decoded-image cache, shared by every arm (default: <data>/../cache, as "
        "data=cifar10_jpeg puts it). Built before the first arm starts, so no arm's time "
        "includes decoding the JPEGs.",
    )
    parser.add_argument("--config", type=Path, default=CONFIG, help="the race's settings")
    parser.add_argument(
        "--output", type=Path, default=Path("docs/results/cifar10/time_to_accuracy.json")
    )
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path.cwd(),
        help="the folder holding train.py and conf/ (default: here)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = race_parser()
    args = parser.parse_args(argv)
    from normlab.bench.suite import checked_repo

    data_root = args.data.expanduser().resolve()
    # All checked before the race, which takes most of an hour on a CPU.
    repo = checked_repo(args.repo)
    if not (data_root / "train").is_dir() or not (data_root / "test").is_dir():
        parser.error(
            f"--data {args.data}: no train/ and test/ folders in {data_root}. Point --data at "
            "CIFAR-10 in class folders, <data>/{train,test}/<class>/<image>, e.g. "
            "data/cifar10-jpeg as conf/data/cifar10_jpeg.yaml describes."
        )
    try:
        race = load_race_config(args.config)
    except (ConfigError, OSError, yaml.YAMLError) as err:
        parser.error(f"--config: {err}")
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="normlab-tta-") as tmp:
        cache_dir = (args.cache_dir or data_root.parent / "cache").expanduser().resolve()
        paths = RacePaths(data_root, repo, args.config.resolve(), Path(tmp), cache_dir)
        build_cache(data_root, cache_dir)
        for seed in race["seeds"]:  # interleaved: every arm once per seed, then the next
            for arm in ARMS:
                row = run_arm(arm, seed, race, paths)
                runs[arm].append(row)
                when = row["first_cross_s"]
                print(
                    f"seed {seed} {arm}: val acc {[round(a, 4) for a in row['val_acc']]} -> "
                    + ("never reached" if when is None else f"{when:.1f} s"),
                    file=sys.stderr,
                )
                # Written after every arm: an interrupted race leaves what it measured.
                result = race_result(race, runs, args)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(race_table(result) + f"\n-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
