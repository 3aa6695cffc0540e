"""Run directories are data, not code; checks fail closed; nothing written is lost.

Fast tests call the runner's functions on small files; the slow ones run the real `train.py`,
`eval.py` and predict on a malicious run directory and on a moved one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_names
from omegaconf import OmegaConf

from normlab.errors import ConfigError
from normlab.files import DiskFullError, folder_in_use, write_json
from normlab.runner import checks, preflight, rundir, trust
from normlab.runner.rundir import allowlisted, claim_run_dir, plan_run, release_folder
from normlab.training.checkpoints import reroot

MARKER_CODE = "open({marker!r}, 'w')"


def saved_run(folder: Path, compose_cfg, edit=None, data: str = "digits") -> Path:
    """A run directory holding a saved config (data=digits) and optionally edited."""
    cfg = compose_cfg([f"data={data}"])
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    if edit:
        edit(container)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(container), folder / ".hydra" / "config.yaml")
    return folder


MALICIOUS = {
    "builtins.open in the norm": lambda c: c["model"].update(
        norm={"_target_": "builtins.open", "_partial_": True}
    ),
    "torch.load with weights_only false": lambda c: c["callbacks"].update(
        evil={"_target_": "torch.load", "f": "x.pt", "weights_only": False}
    ),
    "os.system nested in _args_": lambda c: c["optimizer"].update(
        _args_=[{"_target_": "os.system", "_args_": ["touch marker"]}]
    ),
    "subprocess.run deep in a list": lambda c: c["callbacks"].update(
        x={
            "_target_": "normlab.training.MetricHistory",
            "y": [{"z": {"_target_": "subprocess.run"}}],
        }
    ),
    "a trusted prefix reaching torch.load": lambda c: c["callbacks"].update(
        evil={"_target_": "torch.nn.functional.torch.load"}
    ),
    "normlab's own file writer": lambda c: c["callbacks"].update(
        evil={"_target_": "normlab.files.write_json"}
    ),
    "an interpolation to builtins.exec": lambda c: c.update(
        payload="builtins.exec", model={**c["model"], "norm": {"_target_": "${payload}"}}
    ),
}


@pytest.mark.parametrize("name", MALICIOUS)
def test_untrusted_targets_are_refused_naming_the_key(name, compose_cfg, tmp_path):
    run = saved_run(tmp_path / "run", compose_cfg, MALICIOUS[name])
    with pytest.raises(ConfigError, match="refused to open") as err:
        rundir.saved_config(run, "run")
    message = " ".join(str(err.value).split())
    assert "_target_=" in message and "add a YAML under conf/" in message


def test_the_shipped_configs_and_a_norm_that_conf_names_are_trusted(compose_cfg, tmp_path):
    run = saved_run(tmp_path / "run", compose_cfg)
    assert rundir.saved_config(run, "run").model._target_ == "normlab.nn.SeedCNN"
    # A researcher's own norm class, registered by a YAML in the checkout's conf/.
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "model" / "norm" / "mine.yaml").write_text("_target_: mylab.MyNorm\n_partial_: true\n")
    mine = saved_run(
        tmp_path / "mine",
        compose_cfg,
        lambda c: c["model"].update(norm={"_target_": "mylab.MyNorm", "_partial_": True}),
    )
    with pytest.raises(ConfigError, match=r"model.norm._target_=mylab.MyNorm"):
        rundir.saved_config(mine, "run")
    original = trust.config_dirs
    trust.config_dirs = lambda: [conf]
    try:
        assert rundir.saved_config(mine, "run").model.norm._target_ == "mylab.MyNorm"
    finally:
        trust.config_dirs = original


def test_allowlist_follows_the_object_not_the_spelling():
    for good in ("torch.nn.Conv2d", "torch.optim.SGD", "normlab.nn.GroupNorm",
                 "lightning.pytorch.Trainer", "lightning.pytorch.callbacks.ModelCheckpoint",
                 "lightning.pytorch.loggers.CSVLogger", "torch.nn.ReLU"):  # fmt: skip
        assert allowlisted(good), good
    for bad in ("builtins.open", "torch.load", "torch.nn.functional.torch.load",
                "torch.nn.modules.module.os.system", "normlab.runner.rundir.torch.load",
                "torch.nn.Module.__init__", "normlabx.y", "normlab.files.write_json"):  # fmt: skip
        assert not allowlisted(bad), bad


def test_damaged_saved_configs_get_a_clear_error(tmp_path):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    path = tmp_path / "run" / ".hydra" / "config.yaml"
    for text, says in (("", "is empty or not a normlab training config"),
                       ("a: [\n", "cannot be read (ParserError")):  # fmt: skip
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"resume=.*" + says.replace("(", r"\(")):
            rundir.saved_config(tmp_path / "run", "resume")


def test_empty_resume_is_an_error(compose_cfg):
    cfg = compose_cfg(["data=digits", "resume="])
    with pytest.raises(ConfigError, match="resume= is empty"):
        plan_run(cfg, ["resume="])


def test_resume_applies_where_and_how_settings_and_refuses_the_rest(compose_cfg, tmp_path):
    """`paths.*`, `threads=` and `verbose=` reach the resumed run (they were accepted and then
    dropped); what would change the run, or move it out of its directory, is refused."""
    run = saved_run(tmp_path / "run", compose_cfg, data="cifar10")
    overrides = [f"resume={run}", "paths.data_dir=/scratch/data", "threads=1", "verbose=true"]
    plan = plan_run(compose_cfg(["data=cifar10", *overrides]), overrides)
    assert plan.resumed and plan.config.threads == 1 and plan.config.verbose is True
    # The saved data.root is ${paths.data_dir}: it follows the data to its new place.
    assert OmegaConf.select(plan.config, "data.root") == "/scratch/data"
    assert plan.config.paths.output_dir == str(run)
    root = ["paths.root_dir=/elsewhere"]  # an interpolation's source, resolved in the run
    plan = plan_run(compose_cfg(["data=cifar10", f"resume={run}", *root]), [f"resume={run}", *root])
    assert OmegaConf.select(plan.config, "data.root") == "/elsewhere/data"
    for extra, says in (
        ("optimizer.lr=1", "optimizer.lr=1 would change it"),
        ("callbacks.divergence.max_loss=10", "would change it"),
        ("tags=[x]", "would change it"),
        (f"hydra.run.dir={tmp_path / 'else'}", "continues the run in its own directory"),
        ("paths.output_dir=/else", "paths.output_dir=/else would put it"),
    ):
        overrides = [f"resume={run}", extra]
        with pytest.raises(ConfigError, match=says):
            plan_run(compose_cfg(["data=cifar10", *overrides]), overrides)


def test_damaged_saved_overrides_get_a_clear_error_or_none(compose_cfg, tmp_path):
    run = saved_run(tmp_path / "run", compose_cfg)
    cfg = compose_cfg(["data=digits", f"resume={run}"])
    path = run / ".hydra" / "overrides.yaml"
    path.write_text("- model=cnn_bn\n- seed=3\n")
    assert plan_run(cfg, [f"resume={run}"]).overrides == ["model=cnn_bn", "seed=3"]
    path.write_text("a: [\n")
    with pytest.raises(ConfigError, match=r"its saved overrides .* cannot be read \(ParserError"):
        plan_run(cfg, [f"resume={run}"])
    path.write_text("model: cnn_bn\n")  # not the list Hydra writes: no overrides, not a crash
    assert plan_run(cfg, [f"resume={run}"]).overrides == []


def write_checkpoint(path: Path, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": epoch, "global_step": 10 * epoch}, path)


def test_resume_falls_back_to_the_newest_readable_checkpoint(compose_cfg, tmp_path):
    run = saved_run(tmp_path / "run", compose_cfg)
    write_checkpoint(run / "checkpoints" / "best.ckpt", 1)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    cfg = compose_cfg(["data=digits", f"resume={run}"])
    plan = plan_run(cfg, [f"resume={run}"])
    assert plan.checkpoint == run / "checkpoints" / "best.ckpt"
    assert_names(plan.note, "last.ckpt cannot be read", "newest readable")
    (run / "checkpoints" / "best.ckpt").write_bytes(b"PK\x03")
    with pytest.raises(ConfigError, match="none of its checkpoints can be read"):
        plan_run(cfg, [f"resume={run}"])
    write_json(run / "results.json", {"status": "completed"})
    with pytest.raises(ConfigError, match="this run has completed"):
        plan_run(cfg, [f"resume={run}"])


def test_history_from_a_damaged_last_checkpoint_is_empty_not_an_error(tmp_path):
    """Read while a failed run records its results: the run's own error must stay the one
    reported."""
    folder = tmp_path / "checkpoints"
    epochs = [{"val/acc": 0.5}, {"val/acc": 0.6}]
    write_checkpoint(folder / "last.ckpt", 1)
    state = torch.load(folder / "last.ckpt", weights_only=True)
    torch.save({**state, "callbacks": {"MetricHistory": {"epochs": epochs}}}, folder / "last.ckpt")
    assert rundir.history_from_last_checkpoint([folder]) == epochs
    (folder / "last.ckpt").write_bytes(b"PK\x03 truncated")
    assert rundir.history_from_last_checkpoint([folder]) == []


def test_a_run_folder_is_locked_and_an_existing_run_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    claim_run_dir(run, resumed=False)
    assert folder_in_use(run)
    # The second process imports the claim alone (not torch with the rest of the runner).
    code = (
        "from normlab.runner.claims import claim_run_dir\n"
        f"claim_run_dir({str(run)!r}, resumed=True)\n"
    )
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert_names(proc.stderr, f"resume={run}", "another process is using", "Wait for it")
    release_folder(run)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    (run / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_run_dir(run, resumed=False)


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("seed=-1", ("seed=-1", "0 to 4294967295", "seed=0")),
        (f"seed={2**40}", (f"seed={2**40}", "0 to 4294967295", "seed=0")),
        ("optimizer.lr=nan", ("optimizer.lr=nan", "optimizer.lr=0.05")),
        ("optimizer.lr=inf", ("optimizer.lr=inf", "optimizer.lr=0.05")),
        ("data.std=[0.5,0,0.5]", ("data.std=[0.5, 0, 0.5]", "data.std=[0.5,0.5,0.5]")),
        ("threads=-1", ("threads=-1", "threads=4", "null")),
        ("threads=true", ("threads=True", "threads=4", "null")),
        ("threads=2.5", ("threads=2.5", "threads=4", "null")),
        ("data.train_size=0", ("data.train_size=0", "data.train_size=10000")),
        ("+trainer.limit_train_batches=0",
         ("trainer.limit_train_batches=0", "e.g. 10", "e.g. 0.1")),
    ],
)  # fmt: skip
def test_out_of_range_and_no_batch_values_are_refused(compose_cfg, override, names):
    with pytest.raises(ConfigError) as err:
        checks.check_settings(compose_cfg(["data=digits", override]))
    assert_names(str(err.value), *names)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["data.mean=[0.5,0.5]"], ("data.mean=[0.5, 0.5]", "data.mean=[0.5,0.5,0.5]")),
        (["data.std=0.5"], ("data.std=[0.5]", "data.std=[0.5,0.5,0.5]")),
        (["data=cifar10", "data.mean=null"],
         ("data.mean=null", "CIFAR10DataModule", "data.mean=[0.5,0.5,0.5]")),
        # image_folder computes both from the images when null, and used a lone one for nothing
        (["data=image_folder", "data.root=images", "data.std=[0.2,0.2,0.2]"],
         ("data.std is given", "data.mean is null", "Give both")),
        (["data=image_folder", "data.root=images", "data.mean=[0.5,0.5]", "data.std=[0.2,0.2]"],
         ("data.mean=[0.5, 0.5]", "data.mean=[0.5,0.5,0.5]")),
        (["data=image_folder", "data.root=images", "data.image_size=0"],
         ("data.image_size=0", "data.image_size=32")),
    ],
)  # fmt: skip
def test_normalization_statistics_fit_the_images(compose_cfg, overrides, names):
    with pytest.raises(ConfigError) as err:
        checks.check_settings(compose_cfg(["data=digits", *overrides]))
    assert_names(str(err.value), *names)


def test_statistics_may_be_computed_where_the_data_module_computes_them(compose_cfg, tmp_path):
    """Both null (computed from the images) and both given pass the checks, and the data
    module then normalizes with the given pair, or with statistics of its own."""
    from conftest import write_image_folder
    from hydra.utils import instantiate

    root = write_image_folder(tmp_path / "images")
    given = ["data.mean=[0.4,0.4,0.4]", "data.std=[0.2,0.2,0.2]"]
    used = []
    for stats in ([], given):
        cfg = compose_cfg(["data=image_folder", f"data.root={root}", "model.num_classes=2", *stats])
        checks.check_settings(cfg)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        used.append([round(float(v), 4) for v in datamodule.eval_transform.mean])
    computed, chosen = used
    assert chosen == [0.4, 0.4, 0.4]
    assert computed != chosen and all(0 <= v <= 1 for v in computed)


def test_image_sizes_the_network_cannot_take_are_refused(compose_cfg, tmp_path):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "images", classes=tuple("abcdefghij"))

    def check(*overrides: str) -> None:
        cfg = compose_cfg(["data=image_folder", f"data.root={root}", *overrides])
        checks.check_run(plan_run(cfg, []))

    check("data.image_size=32")
    check("data.image_size=35")  # SeedCNN: still 5x5 maps after its two pools
    check("model=vgg11_slim", "data.image_size=48")  # VGG: 1x1 after five pools up to 63
    with pytest.raises(ConfigError, match=r"data.image_size=64: the network \(SeedCNN\)"):
        check("data.image_size=64")
    with pytest.raises(ConfigError, match=r"data.image_size=16: the network \(VGG\)"):
        check("model=vgg11_slim", "data.image_size=16")
    synthetic = compose_cfg(["data=synthetic", "+data.image_size=64"])
    with pytest.raises(ConfigError, match="data.image_size=64"):
        checks.check_run(plan_run(synthetic, []))


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (
            "callbacks.divergence.check_every_n_steps=0",
            "callbacks.divergence.check_every_n_steps=0: ",
        ),
        ("callbacks.diagnostics.every_n_epochs=-2", "callbacks.diagnostics.every_n_epochs=-2: use"),
        (
            "callbacks.lr_monitor.logging_interval=hourly",
            "callbacks.lr_monitor.logging_interval='hourly': ",
        ),
        (
            "callbacks.last_checkpoint.every_n_epochs=-1",
            "callbacks.last_checkpoint.every_n_epochs=-1",
        ),
    ],
)
def test_callback_arguments_their_constructors_refuse_are_named(compose_cfg, override, says):
    with pytest.raises(ConfigError) as err:
        checks.check_run(plan_run(compose_cfg(["data=digits", override]), []))
    assert says in str(err.value)


def test_results_are_strict_json(tmp_path):
    write_json(
        tmp_path / "r.json", {"a": math.nan, "b": [math.inf, 1.0], "c": torch.tensor(-math.inf)}
    )
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "a": None, "b": [None, 1.0], "c": None,
    }  # fmt: skip


def test_a_full_disk_names_the_folder_and_keeps_the_old_file(tmp_path, monkeypatch):
    write_json(tmp_path / "results.json", {"status": "running"})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match=f"no space left on the device holding {tmp_path}"):
        write_json(tmp_path / "results.json", {"status": "completed"})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads((tmp_path / "results.json").read_text()) == {"status": "running"}
    assert not list(tmp_path.glob("*.tmp"))


def test_preflight_refuses_a_disk_without_room(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(ConfigError, match=r"no space left for the run in .*needs about"):
        preflight.check_space(tmp_path / "run", None)


def test_checkpoint_paths_follow_a_moved_run():
    state = {
        "dirpath": "/old/run/checkpoints",
        "best_model_path": "/old/run/checkpoints/best.ckpt",
        "best_k_models": {"/old/run/checkpoints/best.ckpt": torch.tensor(0.9)},
        "monitor": "val/acc",
    }
    moved = reroot(state, "/old/run/checkpoints", "/new/place/checkpoints")
    assert moved["best_model_path"] == "/new/place/checkpoints/best.ckpt"
    assert list(moved["best_k_models"]) == ["/new/place/checkpoints/best.ckpt"]
    assert moved["monitor"] == "val/acc"


def test_a_job_killed_while_running_is_reported_as_interrupted(tmp_path):
    from normlab.files import FolderLock
    from normlab.report.sweep import load_job

    job = tmp_path / "0"
    job.mkdir()
    write_json(job / "results.json", {"status": "running", "overrides": ["seed=0"]})
    assert load_job(job).status == "interrupted"  # nobody holds its lock: it was killed
    lock = FolderLock(job)
    assert lock.acquire()
    try:
        assert load_job(job).status == "running"  # still training
    finally:
        lock.release()
