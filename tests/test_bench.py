"""The benchmark's code paths at a tiny size: that both sides of each comparison do the same
work on the same data, that its clocks and memory readings mean what they say, and that
`python -m normlab.bench` produces every row. Timings themselves are not asserted."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, write_image_folder
from PIL import Image

from normlab.bench import __main__ as bench_main
from normlab.bench import diagnostics as bench_diagnostics
from normlab.bench import probes, suite
from normlab.bench import time_to_accuracy as tta
from normlab.bench.cifar_files import write_cifar10
from normlab.bench.lesson import lesson_loaders, train_and_validate
from normlab.data import CIFAR10DataModule
from normlab.data.cifar10 import _CIFAR10Files
from normlab.data.image_folder import ImageFolderDataModule
from normlab.data.synthetic import make_synthetic
from normlab.nn import SeedCNN


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"), train_images=150, test_images=60)


def test_synthetic_files_are_cifar10_format_with_the_synthetic_images(cifar_root):
    # torchvision's own parser (md5 checks off) reads them as it reads the real archive
    train = _CIFAR10Files(str(cifar_root), train=True)
    test = _CIFAR10Files(str(cifar_root), train=False)
    source = make_synthetic(150, 10, 32, seed=1)
    assert train.data.shape == (150, 32, 32, 3) and train.data.dtype == np.uint8
    assert np.array_equal(train.data, source.images.permute(0, 2, 3, 1).numpy())
    assert train.targets == source.labels.tolist() and len(test) == 60
    assert train.classes[0] == "airplane"
    # and normlab's data=cifar10 reads the same pixels
    datamodule = CIFAR10DataModule(str(cifar_root), download=False, verify_checksums=False)
    full_train, _ = datamodule.load()
    assert torch.equal(full_train.images, source.images)


def test_lesson_pipeline_and_normlab_batches_hold_the_same_images(cifar_root):
    # Without augmentation (the test split) both pipelines must produce the same tensors:
    # the loader comparison is then a comparison of two ways to compute one thing.
    _, lesson_test = lesson_loaders(cifar_root, batch_size=4)
    datamodule = CIFAR10DataModule(
        str(cifar_root), download=False, verify_checksums=False, val_size=10,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), eval_batch_size=4,
    )  # fmt: skip
    datamodule.setup()
    ours = list(datamodule.test_dataloader())
    theirs = list(lesson_test)
    assert len(ours) == len(theirs) == 15
    for (x, y), (x_ref, y_ref) in zip(ours, theirs, strict=True):
        torch.testing.assert_close(x, x_ref, atol=1e-6, rtol=0)
        assert torch.equal(y, y_ref)


def test_lesson_loop_stops_after_the_measured_part_and_reports_its_phases(cifar_root, tmp_path):
    torch.manual_seed(0)
    model = suite.build_network(suite.compose_config(REPO, ["model=cnn_bn_dropout"]).model)
    trainloader, testloader = lesson_loaders(cifar_root, batch_size=4)
    clock = probes.PhaseClock(warmup=2)
    history = train_and_validate(
        model,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9),
        trainloader,
        testloader,
        tmp_path,
        train_steps=7,
        eval_images=10,
        clock=clock,
    )
    summary = clock.summary()
    assert summary["steps"] == 7 and summary["eval_images"] == 12  # whole batches of 4
    assert summary["per_step_s"] > 0 and summary["eval_per_image_s"] > 0
    assert (tmp_path / "cifar10_model_0.pt").exists()  # the lesson's torch.save, timed
    assert len(history) == 1 and len(history[0]) == 4


def test_phase_clock_extrapolates_an_epoch_from_its_parts(monkeypatch):
    # Scripted clock: 2 warm-up steps of 5 s, then steps of 1 s, 4 s of evaluation (8 images)
    # and 3 s at the end of the epoch.
    times = iter([0.0, 5.0, 10.0, 11.0, 12.0, 13.0, 13.5, 17.5, 20.5])
    monkeypatch.setattr(probes.time, "perf_counter", lambda: next(times))
    clock = probes.PhaseClock(warmup=2)
    clock.start()
    for _ in range(5):
        clock.step_done()
    clock.mark("train")
    clock.mark("eval", images=8)
    clock.mark("end")
    summary = clock.summary()
    assert summary["per_step_s"] == 1.0 and summary["eval_per_image_s"] == 0.5
    assert summary["per_step_median_s"] == 1.0
    # fixed: warm-up excess (10 - 2 * 1) + gap after the last step (0.5) + end (3)
    assert summary["fixed_s"] == 8 + 0.5 + 3
    assert probes.epoch_seconds(summary, steps=100, eval_images=20) == 11.5 + 100 + 10


def test_plain_loop_trains_the_configured_network(cifar_root):
    sizes = dataclasses.replace(suite.QUICK, val_size=50)
    cfg = suite.compose_config(
        REPO, [*suite.data_overrides(cifar_root, 8, sizes), "paths.output_dir=unused"]
    )
    summary = suite.plain_loop(cfg, steps=6, warmup=2)
    assert summary["steps"] == 6 and np.isfinite(summary["train_loss"])


def test_child_peak_memory_is_the_childs_own(tmp_path):
    # This test process holds torch (hundreds of MB); a child forked from it must not
    # inherit that figure, and a child that touches 200 MB must show it.
    small = suite.run_child([sys.executable, "-c", "pass"], tmp_path / "small.json", tmp_path)
    big = suite.run_child(
        [sys.executable, "-c", "b = bytearray(200 * 2**20)"], tmp_path / "big.json", tmp_path
    )
    assert small["peak_rss_mb"] < 60
    assert 190 < big["peak_rss_mb"] - small["peak_rss_mb"] < 260
    with pytest.raises(RuntimeError, match="failed"):
        suite.run_child(
            [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "x.json", tmp_path
        )


def test_thread_settings_leave_the_default_run_to_normlab(monkeypatch, tmp_path):
    # the benchmark's own OMP_NUM_THREADS must not decide the "default" run
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (label, overrides, env), *manual = suite.thread_settings(REPO, (1, 2))
    assert (label, overrides) == ("default", []) and "OMP_NUM_THREADS" not in env
    # this config has the `threads` setting: the manual runs set it, not the environment
    for (label, overrides, env), n in zip(manual, (1, 2), strict=True):
        assert (label, overrides) == (f"threads={n}", [f"threads={n}"])
        assert "OMP_NUM_THREADS" not in env
    # a checkout from before the setting (its train.yaml without `threads`): the environment
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    train_yaml = tmp_path / "conf" / "train.yaml"
    lines = train_yaml.read_text().splitlines(keepends=True)
    train_yaml.write_text("".join(line for line in lines if not line.startswith("threads:")))
    (label, overrides, env), *manual = suite.thread_settings(tmp_path, (1, 2))
    assert (label, overrides) == ("default", []) and "OMP_NUM_THREADS" not in env
    for (label, overrides, env), n in zip(manual, (1, 2), strict=True):
        assert (label, overrides) == (f"OMP_NUM_THREADS={n}", [])
        assert env["OMP_NUM_THREADS"] == str(n)


@pytest.mark.slow
def test_quick_benchmark_writes_every_row(tmp_path, capsys, monkeypatch):
    # --quick with one batch size: every code path, including the train.py child process
    tiny = dataclasses.replace(
        suite.QUICK, batch_sizes=(4,), loader_images={4: 100}, train_steps={4: 6}, warmup={4: 2}
    )
    monkeypatch.setattr(bench_main, "QUICK", tiny)
    output = tmp_path / "bench.json"
    assert bench_main.main(["--quick", "--output", str(output), "--repo", str(REPO)]) == 0
    results = json.loads(output.read_text())
    names = [row["comparison"] for row in results["rows"]]
    assert names == [
        "loader, batch 4 (images/s)",
        "training epoch*, batch 4 (s)",
        "framework overhead, batch 4 (ms/step, median)",
        "start-up: train.py to first step (s)",
        "peak memory, CIFAR-10-sized run (MB)",
        "busy machine: digits, 1 epoch, default threads (s)",
    ]
    no_target = [row["met"] is None for row in results["rows"]]
    # The busy-machine row has no target: the default thread count ignores the load by design.
    assert no_target == [False, True, False, False, False, True]
    threads = results["threads"]
    assert threads["default"]["train_s"] > 0 and len(threads["manual"]) == 2
    assert threads["ratio"] == threads["default"]["train_s"] / min(
        run["train_s"] for run in threads["manual"].values()
    )
    startup = results["startup"]
    assert startup["bare_import_s"] > 0 and startup["train_py_to_first_step_s"] > 0
    # a training run holds more than the bare imports (its data, network, loggers)
    assert startup["peak_rss_mb"] > startup["bare_import_peak_rss_mb"]
    (row,) = results["training"]
    # each side really ran the measured steps: the fit through Lightning and normlab.runner
    assert row["lesson"]["steps"] == row["normlab"]["steps"] == row["plain"]["steps"] == 6
    table = capsys.readouterr().out
    assert "framework overhead, batch 4 (ms/step, median)" in table and "machine: " in table


# ---------------------------------------------------------------------------------------------
# Command lines: a typo stops them before anything is measured.


@pytest.mark.parametrize("only", ["trainig", "loader,bogus", "", " , "])
def test_bench_only_accepts_the_parts_it_measures(only, capsys):
    with pytest.raises(SystemExit) as info:
        bench_main.main(["--only", only, "--repo", str(REPO)])
    assert info.value.code == 2  # argparse's usage error: nothing measured, no bench.json
    assert "name one or more of loader, training, startup, threads" in capsys.readouterr().err


def test_bench_only_parses_the_parts_named():
    assert bench_main.parts("training, threads") == ["training", "threads"]


@pytest.mark.parametrize("argv,why", [(["--epochs", "1"], "warm-up"), (["--repeats", "0"], "")])
def test_diagnostics_bench_refuses_sizes_that_leave_no_epoch_to_time(argv, why, capsys):
    # --epochs 1 left no epoch after the warm-up one: statistics.median([]) crashed at the end.
    with pytest.raises(SystemExit) as info:
        bench_diagnostics.main([*argv, "--repo", str(REPO)])
    assert info.value.code == 2 and why in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Time to accuracy: the lesson's side is the lesson's network, data layout and loop.


def test_the_lesson_cnn_is_seed_cnn_in_all_but_its_module_structure():
    torch.manual_seed(0)
    lesson = tta.LessonCNN()
    torch.manual_seed(0)
    seed_cnn = SeedCNN()
    ours, theirs = list(lesson.parameters()), list(seed_cnn.parameters())
    assert len(ours) == len(theirs) == 10
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(lesson(images), seed_cnn(images))


def test_the_lesson_images_are_laid_out_as_torchvisions_cifar10_array(tmp_path, cifar_root):
    root = write_image_folder(tmp_path / "images")
    train, _ = ImageFolderDataModule(str(root), mean=(0.5,) * 3, std=(0.5,) * 3).load()
    dataset = tta.array_images(train)
    torchvision_data = _CIFAR10Files(root=str(cifar_root), train=True, download=False).data
    # The same strided (not contiguous) [N, H, W, 3] view: PIL copies each sample alike.
    assert dataset.data.strides == torchvision_data.strides
    assert not dataset.data.flags.c_contiguous and not torchvision_data.flags.c_contiguous
    image, label = dataset[3]
    expected = Image.fromarray(train.images[3].permute(1, 2, 0).contiguous().numpy())
    expected = (torch.from_numpy(np.asarray(expected)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(image, expected)
    assert label == int(train.labels[3])


def test_time_to_accuracy_checks_repo_and_data_before_the_lesson_runs(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images")
    with pytest.raises(SystemExit, match="holds no conf/train.yaml and train.py"):
        tta.main(["--data", str(data), "--repo", str(tmp_path), "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as info:
        tta.main(["--data", str(tmp_path / "nowhere"), "--repo", str(REPO)])
    assert info.value.code == 2 and "no train/ and test/ folders" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()
