"""The time-to-accuracy race (`python -m normlab.bench.time_to_accuracy`) on tiny image folders:
its three arms end to end, the crossing it reads from each arm's per-epoch record, an arm
that never reaches the target, and a race config that cannot work. Timings are not asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import REPO, solid, write_image, write_image_folder

from normlab.bench import time_to_accuracy as tta
from normlab.data.image_folder import ImageFolderDataModule
from normlab.errors import ConfigError

# normlab's recipe at the tiny data's size: batches of 4, two classes, no logger to start.
TINY_RECIPE = [
    "model=cnn_bn",
    "model.num_classes=2",
    "data.batch_size=4",
    "optimizer.lr=0.1",
    "scheduler=onecycle",
    "trainer.max_epochs=3",
    "data.hflip=true",
    "logger=none",
]


def write_race_config(path: Path, target: float, seeds: list[int], val_size: int = 4) -> Path:
    race = {
        "target_acc": target,
        "seeds": seeds,
        "threads": 1,
        "data": {"val_size": val_size, "split_seed": 0},
        "lesson": {"max_epochs": 3},
        "normlab_recipe": TINY_RECIPE,
    }
    path.write_text(yaml.safe_dump(race))
    return path


def assert_first_crossing(run: dict, target: float, cap: int) -> None:
    """The oracle: the arm's time is its recorded time at the first epoch whose validation
    accuracy reaches the target, where it stopped; or it never did, ran to its cap and has
    no time."""
    first = next((i for i, acc in enumerate(run["val_acc"]) if acc >= target), None)
    assert len(run["val_acc"]) == len(run["test_acc"]) == len(run["epoch_s"])
    assert all(0 <= acc <= 1 for acc in run["val_acc"] + run["test_acc"])
    assert all(a < b for a, b in zip(run["epoch_s"], run["epoch_s"][1:], strict=False))
    assert 0 < run["epoch_s"][-1] < run["process_s"]
    if first is None:
        assert run["first_cross_s"] is None and run["cross_epoch"] is None
        assert run["test_acc_at_cross"] is None and len(run["val_acc"]) == cap
    else:
        assert run["first_cross_s"] == run["epoch_s"][first]
        assert run["cross_epoch"] == first + 1 == len(run["val_acc"])  # stopped there
        assert run["test_acc_at_cross"] == run["test_acc"][first]


@pytest.mark.slow
def test_the_race_runs_every_arm_and_times_each_to_its_first_crossing(tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=8)  # 12 train, 4 val, 4 test
    target = 0.5
    config = write_race_config(tmp_path / "race.yaml", target, seeds=[1])
    output = tmp_path / "out" / "time_to_accuracy.json"
    argv = ["--data", str(data), "--config", str(config), "--output", str(output)]
    assert tta.main([*argv, "--repo", str(REPO), "--cache-dir", str(tmp_path / "cache")]) == 0
    result = json.loads(output.read_text())
    assert result["target_acc"] == target and result["seeds"] == [1]
    for arm in tta.ARMS:
        entry = result[arm]
        assert len(entry["first_cross_s"]) == len(entry["runs"]) == 1
        run = entry["runs"][0]
        assert run["seed"] == 1 and entry["first_cross_s"] == [run["first_cross_s"]]
        assert_first_crossing(run, target, cap=3)
    medians = {arm: result[arm]["median_first_cross_s"] for arm in tta.ARMS}
    if None not in medians.values():
        assert math.isclose(result["ratio"], medians["lesson"] / medians["normlab"])
        assert math.isclose(
            result["ratio"], result["ratio_recipe"] * result["ratio_framework"], rel_tol=1e-9
        )


def write_indistinguishable_images(root: Path) -> Path:
    """Two classes of one identical image: any network predicts one class for all of them."""
    for split, count in (("train", 8), ("test", 2)):
        for name in ("cat", "dog"):
            for i in range(count):
                write_image(root / split / name / f"{i:03d}.png", solid(77))
    return root


@pytest.mark.slow
def test_an_arm_that_never_reaches_the_target_has_no_time(tmp_path):
    data = write_indistinguishable_images(tmp_path / "images")
    config = write_race_config(tmp_path / "race.yaml", target=1.0, seeds=[1], val_size=6)
    race = tta.load_race_config(config)
    cache = tmp_path / "cache"
    dm = ImageFolderDataModule(str(data), mean=(0.5,) * 3, std=(0.5,) * 3, val_size=6)
    dm.setup()
    assert set(dm.val_set.labels.tolist()) == {0, 1}  # so no prediction gets all six right
    paths = tta.RacePaths(data, REPO, config, tmp_path, cache)
    run = tta.run_arm("lesson", 1, race, paths)
    assert_first_crossing(run, 1.0, cap=3)
    assert run["first_cross_s"] is None and len(run["val_acc"]) == 3
    crossed = {"first_cross_s": 5.0, "cross_epoch": 1, "test_acc_at_cross": 0.5}
    summary = tta.summarize(
        race, {"lesson": [run], "normlab": [crossed], "lesson_loop_normlab_recipe": [crossed]}
    )
    assert summary["lesson"]["first_cross_s"] == [None]
    assert summary["lesson"]["median_first_cross_s"] is None and summary["ratio"] is None
    assert "never" in tta.race_table(summary)


def test_crossing_subtracts_the_test_evaluations_before_the_crossing_epoch():
    epochs = [
        {"epoch": 1, "val_acc": 0.40, "test_acc": 0.41, "time": 110.0, "test_s": 3.0},
        {"epoch": 2, "val_acc": 0.58, "test_acc": 0.57, "time": 125.0, "test_s": 4.0},
        {"epoch": 3, "val_acc": 0.61, "test_acc": 0.60, "time": 140.0, "test_s": 4.0},
    ]
    seen = tta.crossing(epochs, target=0.58, launched=100.0)
    assert seen["epoch_s"] == [10.0, 22.0, 33.0]
    assert seen["first_cross_s"] == 22.0 and seen["cross_epoch"] == 2
    assert seen["test_acc_at_cross"] == 0.57
    never = tta.crossing(epochs, target=0.62, launched=100.0)
    assert never["first_cross_s"] is None and never["cross_epoch"] is None


def test_a_seed_that_never_crosses_counts_as_the_slowest_in_the_median():
    assert tta.median_or_none([30.0, None, 10.0]) == 30.0
    assert tta.median_or_none([30.0, None, None]) is None


def test_the_committed_race_config_is_valid_and_fixes_the_target():
    race = tta.load_race_config()
    assert race["target_acc"] == 0.58 and race["seeds"] == [1, 2, 3] and race["threads"] == 1
    assert race["lesson"]["max_epochs"] == 10


@pytest.mark.parametrize(
    "key,value,fix",
    [
        ("target_acc", 58, "(0, 1]"),
        ("seeds", [], "seeds: [1, 2, 3]"),
        ("threads", 0, "whole number from 1"),
        ("normlab_recipe", ["model"], "train.py overrides"),
    ],
)
def test_a_race_config_that_cannot_work_is_refused_before_any_arm_runs(
    tmp_path, capsys, key, value, fix
):
    race = yaml.safe_load(tta.CONFIG.read_text())
    race[key] = value
    config = tmp_path / "race.yaml"
    config.write_text(yaml.safe_dump(race))
    with pytest.raises(ConfigError, match=key) as info:
        tta.load_race_config(config)
    assert fix in str(info.value)
    data = write_image_folder(tmp_path / "images")
    output = tmp_path / "out.json"
    with pytest.raises(SystemExit) as exit_info:
        argv = ["--data", str(data), "--config", str(config), "--output", str(output)]
        tta.main([*argv, "--repo", str(REPO)])
    assert exit_info.value.code == 2 and key in capsys.readouterr().err
    assert not output.exists() and not (tmp_path / "cache").exists()
