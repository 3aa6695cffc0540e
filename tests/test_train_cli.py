"""End-to-end runs of the real `train.py` command line: Hydra CLI, Lightning Trainer,
TensorBoard event files and results.json."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF, run_train, tensorboard_dir
from finished_run import OVERRIDES, digits_run
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from normlab.bench.cifar_files import write_cifar10

pytestmark = pytest.mark.slow  # real training processes

RESULT_FIELDS = {
    "status", "val_acc_best", "val_acc_final", "test_acc", "train_acc_final",
    "train_loss_final", "epochs_completed", "wall_s", "overrides",
}  # fmt: skip


def scalar_tags(run_dir):
    tags = set()
    for events in tensorboard_dir(run_dir).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_digits_run_writes_results_checkpoints_and_tensorboard(tmp_path_factory):
    # The session's shared two-epoch run of model=cnn_bn_dropout (finished_run.py).
    run = digits_run(tmp_path_factory)
    run_dir, results = run.run_dir, run.results
    assert results.keys() >= RESULT_FIELDS
    assert results["status"] == "completed" and results["epochs_completed"] == 2
    assert (
        0.0 <= results["test_acc"] <= 1.0
        and results["val_acc_best"] >= results["val_acc_final"] - 1e-9
    )
    assert results["overrides"][-len(OVERRIDES) :] == list(OVERRIDES)
    assert [row["epoch"] for row in results["history"]] == [0, 1]
    assert {"best.ckpt", "last.ckpt"} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert {
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "test/acc",
        "time/epoch_s",
    } <= scalar_tags(run_dir)
    # the progress output is readable in a captured (non-terminal) log: one line per epoch
    assert run.stdout.count("epoch 1/2") == 1 and "\r" not in run.stdout
    # the last checkpoint is the last epoch's, and loads with weights_only=True
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1
    # the tuned default of model=cnn_bn_dropout
    assert last["hyper_parameters"]["model"]["dropout"]["p"] == 0.1


def test_cifar10_run_on_generated_files_in_the_real_format(tmp_path):
    write_cifar10(tmp_path / "cifar", train_images=200, test_images=60)
    run_dir = tmp_path / "run"
    proc, results = run_train(
        "data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.verify_checksums=false",
        "data.download=false", "data.val_size=50", "data.batch_size=25", "trainer.max_epochs=1",
        run_dir=run_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results["status"] == "completed" and results["test_acc"] is not None
    assert (run_dir / "checkpoints" / "best.ckpt").exists()


def test_missing_cifar10_offline_prints_the_way_out_without_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    proc, results = run_train(
        "model=cnn_bn_dropout", f"data.root={tmp_path / 'empty'}", run_dir=run_dir
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "cifar-10-python.tar.gz" in proc.stderr and "data=digits" in proc.stderr
    assert "CIFAR-10 was not found" in proc.stderr
    # A run stopped by its data never trained: it leaves no run directory behind.
    assert results is None and not run_dir.exists()


def test_batch_norm_learns_digits_at_the_lessons_learning_rate(tmp_path):
    """The lesson's recipe (SGD lr 0.001, momentum 0.9, batch 4) with BN: >= 0.85 in 3 epochs."""
    proc, results = run_train(
        "experiment=seed_lesson",
        "model=cnn_bn",
        "data=digits",
        "trainer.max_epochs=3",
        run_dir=tmp_path / "run",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results["val_acc_best"] >= 0.85, results


def test_a_refused_run_gets_no_hints_about_a_command_line_that_composed(tmp_path):
    # model=mine comes from a folder added with hydra.searchpath: the config composes, and
    # the checks refuse the learning rate. The did-you-mean hints only look at conf/, so
    # computed after this exit they would call model=mine "not an option of model".
    extra = tmp_path / "extra"
    (extra / "model").mkdir(parents=True)
    (extra / "model" / "mine.yaml").write_text((CONF / "model" / "cnn.yaml").read_text())
    proc, results = run_train(
        "data=digits", f"hydra.searchpath=[file://{extra}]", "model=mine", "optimizer.lr=-1",
        run_dir=tmp_path / "run",
    )  # fmt: skip
    assert proc.returncode == 1 and results is None
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: optimizer.lr=-1: "), proc.stderr
    # A command line that does not compose still gets them.
    proc, _ = run_train("data=digits", "model=cnnn", run_dir=tmp_path / "run")
    assert proc.returncode == 1
    assert "did you mean model=cnn?" in proc.stderr
