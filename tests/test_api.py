"""The Python API (`normlab.train`, `normlab.evaluate`): the configs and runner of train.py,
checked against the real `train.py` command line, with errors raised as normlab's messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, REPO, assert_names, run_train
from omegaconf import OmegaConf

import normlab
from normlab.bench.cifar_files import write_cifar10
from normlab.errors import ConfigError
from normlab.files import FolderLock
from normlab.runner.api import as_override, find_config_dir

OVERRIDES = ("data=digits", "model=cnn_bn", "trainer.max_epochs=1", "debug=fast")


def test_import_normlab_stays_light():
    """`import normlab` must not pull in Lightning (seconds); `normlab.train` is found lazily."""
    code = "import sys, normlab; f = normlab.train; print('lightning' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        normlab.trian  # noqa: B018


def test_keyword_options_become_overrides():
    assert as_override("seed", 3) == "seed=3"
    assert as_override("compile", True) == "compile=true"
    assert as_override("ckpt_path", None) == "ckpt_path=null"
    assert as_override("tags", ["bn", "lesson"]) == "tags=[bn,lesson]"
    assert as_override("optimizer.lr", 0.01) == "optimizer.lr=0.01"


def project(tmp_path: Path) -> Path:
    """A project folder with the repository's configs, and a notebooks/ folder below it."""
    root = tmp_path / "project"
    shutil.copytree(CONF, root / "conf")
    (root / "notebooks").mkdir()
    return root


def test_configs_are_found_from_a_folder_below_the_project(tmp_path, monkeypatch):
    root = project(tmp_path)
    monkeypatch.chdir(root / "notebooks")
    assert find_config_dir() == root / "conf"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no conf/train.yaml in .* or pass config_dir="):
        find_config_dir()
    assert find_config_dir(root / "conf") == root / "conf"
    with pytest.raises(ConfigError, match="holds no train.yaml"):
        find_config_dir(tmp_path)


def test_mistakes_raise_normlab_errors_and_write_nothing(tmp_path, monkeypatch):
    root = project(tmp_path)
    monkeypatch.chdir(root / "notebooks")
    with pytest.raises(ConfigError, match="did you mean trainer.max_epochs"):
        normlab.train("data=digits", "trainer.max_epoch=1")
    with pytest.raises(ConfigError) as err:
        normlab.train("model=cnn_nb")
    assert_names(str(err.value), "model=cnn_nb", "did you mean model=cnn_bn")
    with pytest.raises(ConfigError) as err:
        normlab.train("data=digits", **{"optimizer.lr": -1})
    assert_names(str(err.value), "optimizer.lr=-1", "optimizer.lr=0.05")
    with pytest.raises(ConfigError, match="runs one configuration.*python train.py -m seed=0,1"):
        normlab.train("data=digits", "seed=0,1")
    assert Path.cwd() == root / "notebooks"
    assert not (root / "logs").exists(), "the checks run before anything is written"


def test_a_run_folder_in_use_raises_instead_of_exiting(tmp_path, monkeypatch):
    """The check Preflight does inside Hydra's callbacks (lock the run folder) exits the
    process there; from Python it must raise, and leave the folder to its holder."""
    root = project(tmp_path)
    monkeypatch.chdir(root / "notebooks")
    held = root / "logs" / "held"
    held.mkdir(parents=True)
    lock = FolderLock(held)
    assert lock.acquire()  # as another process running there
    try:
        with pytest.raises(ConfigError, match="another process is using this run directory"):
            normlab.train(*OVERRIDES, "hydra.run.dir=logs/held")
    finally:
        lock.release()
    assert Path.cwd() == root / "notebooks"
    assert list(held.iterdir()) == []  # nothing written into the folder in use


@pytest.mark.slow
def test_train_returns_what_train_py_computes(tmp_path, monkeypatch):
    """Oracle: the real `python train.py` with the same overrides. The API's run lands in the
    project's logs/runs/ even when called from notebooks/, with the CLI's files."""
    (tmp_path / "cli").mkdir()
    # One torch thread on both sides, said in the overrides: the count decides the order of
    # float sums, and normlab's default for this process follows its cores, not the CLI's.
    cli_proc, cli = run_train(*OVERRIDES, "threads=1", run_dir=tmp_path / "cli" / "run")
    assert cli_proc.returncode == 0, cli_proc.stderr[-3000:]

    root = project(tmp_path)
    monkeypatch.chdir(root / "notebooks")
    threads = torch.get_num_threads()
    try:
        results = normlab.train(*OVERRIDES[:-1], debug="fast", threads=1)
    finally:
        torch.set_num_threads(threads)  # the run set this process's count
    assert Path.cwd() == root / "notebooks"
    run_dir = Path(results["run_dir"])
    assert run_dir.parent == root / "logs" / "runs"
    for name in ("results.json", "train.log", ".hydra/config.yaml", "checkpoints/best.ckpt"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    saved = json.loads((run_dir / "results.json").read_text())
    assert {k: v for k, v in results.items() if k != "run_dir"} == saved
    assert results["overrides"] == [*OVERRIDES, "threads=1"]

    assert results["status"] == cli["status"] == "completed"
    for key in ("test_acc", "val_acc_best", "train_loss_final", "epochs_completed"):
        assert results[key] == cli[key], key
    assert [row["val/acc"] for row in results["history"]] == [
        row["val/acc"] for row in cli["history"]
    ]

    evaluated = normlab.evaluate(run_dir)
    assert evaluated["test_acc"] == pytest.approx(results["test_acc"], abs=1e-6)
    assert json.loads((run_dir / "eval.json").read_text())["test_acc"] == evaluated["test_acc"]
    with pytest.raises(ConfigError, match="which=best or which=last"):
        normlab.evaluate(run_dir, which="final")


@pytest.mark.slow
def test_evaluate_reads_relative_data_paths_from_the_project_root(tmp_path, monkeypatch):
    """A saved data.root of ./data means the project's data/ for evaluate as for train, when
    both are called from notebooks/."""
    root = project(tmp_path)
    write_cifar10(root / "data", train_images=200, test_images=60)
    monkeypatch.chdir(root / "notebooks")
    threads = torch.get_num_threads()
    try:
        results = normlab.train(
            "data=cifar10", "data.download=false", "data.verify_checksums=false",
            "data.val_size=40", "data.batch_size=32", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", "logger=none", "callbacks/diagnostics=none",
            "threads=1",
        )  # fmt: skip
        assert results["status"] == "completed"
        saved = OmegaConf.load(Path(results["run_dir"]) / ".hydra" / "config.yaml")
        assert saved.paths.root_dir == "."  # relative: resolved from the project root
        evaluated = normlab.evaluate(results["run_dir"], which="last")
    finally:
        torch.set_num_threads(threads)
    assert Path.cwd() == root / "notebooks"
    assert not (root / "notebooks" / "data").exists()
    assert evaluated["which"] == "last" and evaluated["test_acc"] is not None
