"""Every bad input through the real `train.py`: exit code 1, one message naming the key and
the fix, no traceback, no results.json that claims "completed", nothing already written
lost. The checks run before data is read, so most cases take about a second; they run side
by side in one module fixture.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_names, compose_config, config_options, write_image_folder
from finished_run import write_lightning_checkpoint
from hydra.utils import get_class, get_object
from omegaconf import OmegaConf

from normlab.bench.cifar_files import write_cifar10
from normlab.errors import ConfigError
from normlab.runner import checks, preflight
from normlab.runner.rundir import plan_run


@dataclass(frozen=True)
class Case:
    name: str
    args: str  # command-line overrides, space-separated
    says: tuple[str, ...]  # what the message names: the key (and value), the fix
    # Validation happens before Hydra creates the run directory, so nothing is written,
    # except where the mistake can only show once data is read.
    writes_failed_run: bool = False
    # A data error leaves no run directory behind: the run never trained.
    removes_run_dir: bool = False


CASES = [
    Case("unknown option", "model=resnet999",
         ("Could not find 'model/resnet999'", "Available options in 'model'", "cnn_bn")),
    Case("misspelled key", "trainer.max_epoch=3", ("did you mean trainer.max_epochs?",)),
    Case("misspelled data key", "data.batchsize=4", ("did you mean data.batch_size?",)),
    Case("misspelled key added with +", "+trainer.max_epoch=3",
         ("trainer.max_epoch is not a setting of trainer", "did you mean trainer.max_epochs?")),
    Case("misspelled norm option", "model=cnn_bn model.norm.momentm=0.2",
         ("did you mean model.norm.momentum?",)),
    Case("misspelled norm option added with +",
         "model=cnn model/norm=group +model.norm.num_group=3",
         ("model.norm.num_group is not a setting of model.norm (normlab.nn.GroupNorm)",
          "did you mean model.norm.num_groups?")),
    Case("dropout above 1", "model.dropout.p=1.5", ("model.dropout.p", "between 0 and 1")),
    Case("negative dropout", "model.dropout.p=-0.1", ("model.dropout.p", "between 0 and 1")),
    # One rule for every number, whichever key carries it.
    Case("NaN weight decay", "optimizer.weight_decay=nan",
         ("optimizer.weight_decay=nan", "finite", "optimizer.weight_decay=5e-4")),
    Case("infinite momentum", "optimizer.momentum=inf", ("optimizer.momentum=inf", "finite")),
    Case("NaN dropout", "model.dropout.p=nan", ("model.dropout.p=nan", "finite")),
    Case("NaN gradient clip", "trainer.gradient_clip_val=nan",
         ("trainer.gradient_clip_val=nan", "finite")),
    Case("momentum above 1", "optimizer.momentum=1.5",
         ("optimizer.momentum=1.5", "between 0 and 1", "optimizer.momentum=0.9")),
    Case("negative clip", "trainer.gradient_clip_val=-1",
         ("trainer.gradient_clip_val=-1", "at least 0")),
    Case("a word where a norm declares a float", "model=cnn_bn model.norm.eps=abc",
         ("model.norm.eps='abc'", "float")),
    Case("zero batch size", "data.batch_size=0",
         ("data.batch_size=0", "data.batch_size=32")),
    Case("negative learning rate", "optimizer.lr=-0.01",
         ("optimizer.lr=-0.01", "optimizer.lr=0.05")),
    Case("zero learning rate", "optimizer.lr=0", ("optimizer.lr=0", "optimizer.lr=0.05")),
    Case("zero threads", "threads=0", ("threads=0", "threads=4")),
    Case("threads=auto", "threads=auto", ("threads='auto'", "threads=4", "null")),
    Case("zero epochs", "trainer.max_epochs=0", ("trainer.max_epochs=0", "trainer.max_epochs=10")),
    Case("groups not dividing channels", "model=cnn model/norm=group model.norm.num_groups=4",
         ("model.norm.num_groups=4", "6 channels")),
    Case("zero groups", "model=cnn model/norm=group model.norm.num_groups=0",
         ("model.norm.num_groups=0", "positive number")),
    Case("a norm class that does not take a channel count",
         "model=cnn model/norm=group model.norm._target_=torch.nn.GroupNorm",
         ("normlab.nn.SeedCNN", "cannot be built", "model.norm._target_=torch.nn.GroupNorm")),
    Case("a callback argument its constructor refuses", "callbacks.diagnostics.every_n_steps=-1",
         ("callbacks.diagnostics.every_n_steps=-1", "whole number from 0", "(0: never)")),
    Case("a zero check interval", "callbacks.divergence.check_every_n_steps=0",
         ("callbacks.divergence.check_every_n_steps=0", "positive whole number")),
    Case("statistics for two channels", "data.mean=[0.5,0.5]",
         ("data.mean=[0.5, 0.5]", "data.mean=[0.5,0.5,0.5]")),
    Case("an image size the network cannot take",
         "data=image_folder data.root={images} model.num_classes=2 data.image_size=64",
         ("data.image_size=64", "(SeedCNN)", "64x64", "data.image_size=32")),
    Case("a mean without a std for image folders",
         "data=image_folder data.root={images} model.num_classes=2 data.mean=[0.4,0.4,0.4]",
         ("data.mean is given but data.std is null", "Give both")),
    Case("unknown dropout placement", "model.dropout.placement=sideways",
         ("model.dropout.placement='sideways'", "choose one of")),
    Case("unwritable log folder", "paths.log_dir={file}/logs",
         ("cannot create the run directory", "is a file, not a folder", "paths.log_dir")),
    Case("unwritable data folder", "data=cifar10 data.root={file}/cifar",
         ("data.root=", "cannot create the data folder", "is a file, not a folder")),
    Case("corrupt dataset files",
         "data=cifar10 data.root={corrupt} data.download=false data.verify_checksums=false",
         ("CIFAR-10 files in", "could not be read", "corrupt"), removes_run_dir=True),
    Case("undecodable images", "data=image_folder data.root={bad_images} model.num_classes=2",
         ("cannot be decoded", "is not a readable image"), removes_run_dir=True),
    Case("checkpoint of another architecture", "ckpt_path={cnn_checkpoint}",
         ("different architecture", "SeedCNN with norm=Identity, dropout=Identity",
          "lacks 10 of this network's tensors", "features.0.norm.weight")),
    Case("checkpoint carrying pickled code", "ckpt_path={pickled_checkpoint}",
         ("refused to load", "pickled Python objects (test_errors.Payload)", "weights_only=True")),
    Case("missing checkpoint file", "ckpt_path={missing}/last.ckpt", ("no such file",)),
    Case("empty checkpoint file", "ckpt_path={empty_checkpoint}",
         ("not a readable PyTorch checkpoint",)),
    Case("ckpt_path=last in a new run", "ckpt_path=last", ("resume=<its run dir>",)),
    Case("run directory that does not exist", "resume={missing}", ("no such directory",)),
    Case("resume with overrides that change the run", "resume={saved_run} optimizer.lr=1",
         ("optimizer.lr=1 would change it",)),
    # Batch limits: their form before the run; what the loaded data allows as it starts.
    Case("a validation share of no batch, added with +", "+trainer.limit_val_batches=0.2",
         ("trainer.limit_val_batches=0.2: 0.2 of the 1 validation batch is less than one batch",
          "trainer.limit_val_batches=1.0"), writes_failed_run=True),
    Case("a validation share of a tiny validation set",
         "data.val_size=20 trainer.limit_val_batches=0.5",
         ("trainer.limit_val_batches=0.5: 0.5 of the 1 validation batch",
          "trainer.limit_val_batches=1.0", "data.val_size"), writes_failed_run=True),
    Case("a negative training limit", "trainer.limit_train_batches=-1",
         ("trainer.limit_train_batches=-1", "positive number of batches")),
    Case("a validation share above 1", "trainer.limit_val_batches=1.5",
         ("trainer.limit_val_batches=1.5", "whole number of batches",
          "fraction of them from 0.0 to 1.0")),
    Case("a zero validation interval", "trainer.val_check_interval=0",
         ("trainer.val_check_interval=0", "whole number from 1",
          "trainer.val_check_interval=0.5")),
    Case("a validation interval longer than an epoch", "trainer.val_check_interval=100000",
         ("trainer.val_check_interval=100000: an epoch has only 39 training batches",
          "trainer.val_check_interval=39"), writes_failed_run=True),
    Case("plain DDP inside a sweep", "-m trainer=ddp_cpu seed=0,1",
         ("every process would re-run the whole sweep", "ddp_spawn", "hydra/launcher=slurm")),
]  # fmt: skip
if not torch.cuda.is_available():
    # Lightning refuses it when the Trainer is built, after the run directory exists.
    CASES.append(
        Case("a GPU on a machine without one", "trainer.accelerator=gpu",
             ("trainer.accelerator=gpu", "Use what this machine has", "trainer.accelerator=cpu"),
             writes_failed_run=True)
    )  # fmt: skip


class Payload:
    """Stands for any object whose unpickling would run code."""


def lightning_checkpoint(path: Path, model: str) -> dict:
    """A real checkpoint of `model` (see finished_run), as torch loads it."""
    write_lightning_checkpoint(path, model)
    return torch.load(path, weights_only=True)


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("errors")
    (root / "file").write_text("a file where a folder is expected\n")
    corrupt = root / "corrupt"
    write_cifar10(corrupt, train_images=200, test_images=60)
    batch = corrupt / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:500])  # truncated mid-pickle
    checkpoint = lightning_checkpoint(root / "cnn.ckpt", "cnn")
    torch.save({**checkpoint, "payload": Payload()}, root / "pickled.ckpt")
    (root / "empty.ckpt").write_bytes(b"")
    images = write_image_folder(root / "images")
    bad_images = write_image_folder(root / "bad_images")
    for image in bad_images.rglob("*.*"):
        image.write_bytes(b"not an image")
    saved_run = root / "saved_run"
    (saved_run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(["data=digits"]), saved_run / ".hydra" / "config.yaml")
    (saved_run / "results.json").write_text(json.dumps({"status": "interrupted"}))
    paths = {
        "file": root / "file",
        "corrupt": corrupt,
        "cnn_checkpoint": root / "cnn.ckpt",
        "pickled_checkpoint": root / "pickled.ckpt",
        "empty_checkpoint": root / "empty.ckpt",
        "missing": root / "missing",
        "saved_run": saved_run,
        "images": images,
        "bad_images": bad_images,
    }
    before = tree_digest(saved_run)

    def run(index_case: tuple[int, Case]) -> tuple[subprocess.CompletedProcess, Path]:
        index, case = index_case
        case_dir = root / f"case{index}"
        case_dir.mkdir()
        args = [a.format(**paths) for a in case.args.split()]
        if not any(a.startswith(("data=", "resume=")) for a in args):
            args.append("data=digits")
        if not any(a.startswith("paths.log_dir=") for a in args):
            args.append(f"paths.log_dir={case_dir / 'logs'}")
        proc = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *args],
            cwd=case_dir,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        return proc, case_dir

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(run, enumerate(CASES)))
    return {
        "by_name": {case.name: result for case, result in zip(CASES, done, strict=True)},
        "saved_run": (saved_run, before),
        "missing": paths["missing"],
        "root": root,
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_with_one_clear_message(outcomes, case):
    proc, case_dir = outcomes["by_name"][case.name]
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert_names(proc.stderr, *case.says)
    assert "Traceback" not in proc.stderr + proc.stdout
    results = [json.loads(p.read_text()) for p in case_dir.rglob("results.json")]
    assert all(r["status"] != "completed" for r in results)
    if case.writes_failed_run:
        assert [r["status"] for r in results] == ["failed"] and results[0]["error"]
    elif case.removes_run_dir:
        assert "nothing kept of the run" in proc.stdout + proc.stderr
        assert not list((case_dir / "logs" / "runs").iterdir()), "a run directory was left"
    else:
        assert not (case_dir / "logs").exists(), "a run directory was created"


@pytest.mark.slow
def test_nothing_already_written_is_lost(outcomes):
    saved_run, before = outcomes["saved_run"]
    assert tree_digest(saved_run) == before
    assert not outcomes["missing"].exists()  # resume= does not create the folder it names


GROUPS = ("data", "model", "model/norm", "model/dropout", "optimizer", "scheduler", "trainer")
SHIPPED = [
    f"{g}={o}" for g in (*GROUPS, "logger", "debug", "experiment") for o in config_options(g)
]


@pytest.mark.parametrize("choice", SHIPPED)
def test_every_shipped_config_passes_the_checks(compose_cfg, choice, tmp_path):
    """The checks reject mistakes, not the template's own options."""
    cfg = compose_cfg([choice])
    if hasattr(get_class(cfg.data._target_), "class_names_in"):  # reads class folders
        cfg.data.root = str(write_image_folder(tmp_path / "images", classes=tuple("abcdefghij")))
    net = checks.check_run(plan_run(cfg, []))
    # What the checks looked at is the network the choice describes, on the meta device.
    assert all(p.is_meta for p in net.parameters())
    group = choice.split("=")[0]
    if group in ("model/norm", "model/dropout"):
        target = OmegaConf.select(cfg, group.replace("/", ".") + "._target_")
        layer = get_object(target) if target else None
        if inspect.isclass(layer):
            assert any(isinstance(m, layer) for m in net.modules()), f"no {target} in {net}"


def test_an_unexpected_exception_in_the_checks_stops_the_run(compose_cfg, monkeypatch, capsys):
    """Fail closed: Hydra would turn an exception in a callback into a warning and start the
    run; the preflight exits with one paragraph instead, before the run directory exists."""

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(checks, "check_planned", broken)  # imported by the preflight as it runs
    cfg = compose_cfg(["data=digits"])
    with pytest.raises(SystemExit) as stop:
        preflight.Preflight().on_run_start(cfg)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert_names(err, "failed with ZeroDivisionError: division by zero", "Nothing was started")


def test_image_folder_needs_a_root_and_a_matching_class_count(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^data.root is not set: it has no default"):
        checks.check_run(plan_run(compose_cfg(["data=image_folder"]), []))
    root = write_image_folder(tmp_path / "images", classes=("cat", "dog", "fox"))
    cfg = compose_cfg(["data=image_folder", f"data.root={root}"])
    with pytest.raises(ConfigError) as err:
        checks.check_run(plan_run(cfg, []))
    assert_names(str(err.value), "3 classes (cat, dog, fox)", "model.num_classes=3")
    checks.check_run(
        plan_run(compose_cfg(["data=image_folder", f"data.root={root}", "model.num_classes=3"]), [])
    )
