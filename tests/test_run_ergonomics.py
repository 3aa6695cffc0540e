"""What a person meets running normlab: the thread count each run picks (a sweep's jobs too),
readable run names, a short console whose every line is also in train.log, any Trainer
argument without `+`, lightning-hydra-template habits (`eval.py ckpt_path=`, `callbacks=none`,
`tags`, `task_name`, option names) and TensorBoard's HParams record."""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

import lightning as L
import pytest
from conftest import CONF, compose_config, run_cli, run_multirun, run_train, tensorboard_dir
from hydra.core.global_hydra import GlobalHydra

from normlab.runner import threads as threads_module
from normlab.runner.checks import accepted_parameters, check_keys, unknown_override_hints
from normlab.runner.console import ConsoleFormatter
from normlab.runner.names import defining_hparams, run_name
from normlab.runner.threads import parallel_jobs, threads_for_run
from normlab.training.progress import epoch_label, format_duration

# ---------------------------------------------------------------- threads


@pytest.fixture
def quiet_machine(monkeypatch):
    """4 usable cores, none busy, no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads_module, "busy_cores", lambda *a, **k: 0)


def sweep_hydra(*overrides: str):
    overrides = ["hydra/launcher=joblib", "hydra.mode=MULTIRUN", *overrides]
    cfg = compose_config(overrides, output_dir=Path("/tmp/nl-test"))
    GlobalHydra.instance().clear()
    return cfg.hydra


def test_a_joblib_sweep_job_takes_its_share_of_the_cores(quiet_machine):
    hydra_cfg = sweep_hydra("hydra.launcher.n_jobs=2")
    assert parallel_jobs(hydra_cfg) == 2
    threads, why = threads_for_run(None, hydra_cfg)
    assert threads == 2 and "shared by 2 parallel jobs" in why
    # n_jobs=-1: one job per usable core (the count threads use), so one thread each
    assert parallel_jobs(sweep_hydra("hydra.launcher.n_jobs=-1")) == 4
    assert threads_for_run(None, sweep_hydra("hydra.launcher.n_jobs=-1"))[0] == 1


def test_joblibs_own_omp_setting_does_not_count_as_the_users(quiet_machine, monkeypatch):
    hydra_cfg = sweep_hydra("hydra.launcher.n_jobs=2")
    # joblib's workers get OMP_NUM_THREADS = cores // n_jobs when the user set none (joblib's
    # count is usable_cores': here the fixture's 4)
    monkeypatch.setenv("OMP_NUM_THREADS", str(max(1, threads_module.usable_cores() // 2)))
    assert threads_for_run(None, hydra_cfg)[1] != "set by OMP_NUM_THREADS"


def test_threads_setting_overrides_and_single_runs_use_all_free_cores(quiet_machine):
    single = compose_config([], output_dir=Path("/tmp/nl-test")).hydra
    GlobalHydra.instance().clear()
    assert parallel_jobs(single) == 1
    assert threads_for_run(None, single) == (4, "4 usable cores")
    assert threads_for_run(3, sweep_hydra("hydra.launcher.n_jobs=2")) == (3, "set by threads=")
    assert compose_config(["threads=2"]).threads == 2


# ---------------------------------------------------------------- names and HParams


def test_run_names_come_from_the_defining_overrides():
    assert run_name(None, ["model=cnn_bn", "seed=3"]) == "model-cnn_bn+seed-3"
    assert run_name(None, ["hydra.run.dir=/x", "paths.data_dir=/d", "tags=[a,b]"]) == "default"
    # What records or labels a run, and how it runs, names nothing: callbacks=none as
    # logger=none, + forms included.
    where_and_how = ["callbacks=none", "logger=none", "callbacks/diagnostics=none", "threads=2"]
    assert run_name(None, [*where_and_how, "+callbacks.x.y=1", "verbose=true"]) == "default"
    assert run_name(None, ["model/norm=group", "data.root=/very/long/path/to/images"]) == (
        "model.norm-group+data.root-images"
    )
    assert run_name("my study/1", ["seed=3"]) == "my-study-1"
    long = run_name(None, [f"key{i}=value{i}" for i in range(30)])
    assert len(long) <= 120 and long.endswith("..")


def test_run_directories_pass_back_as_hydra_overrides():
    """`eval.py run=<run dir>` and `resume=<run dir>`: nothing in a name is Hydra syntax."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for overrides in (["model=cnn,cnn_bn"], ["compile={mode:x}", "tags=[a,b]"], ["lr=1e-3"]):
        run_dir = f"logs/runs/2026-01-31_12-00-00_{run_name(None, overrides)}_123"
        (parsed,) = OverridesParser.create().parse_overrides([f"run={run_dir}"])
        assert parsed.value() == run_dir


def test_run_directory_ends_with_the_name_and_the_process_id():
    cfg = compose_config(["model=cnn_bn", "seed=3"], output_dir=Path("/tmp/nl-test"))
    GlobalHydra.instance().clear()
    run_dir = Path(cfg.hydra.run.dir).name
    assert run_dir.endswith("_model-cnn_bn+seed-3_" + run_dir.rsplit("_", 1)[1])
    assert run_dir.rsplit("_", 1)[1].isdigit()
    assert compose_config(["name=baseline"]).logger.tensorboard.version == "baseline"


def test_hparams_hold_the_defining_values_not_constants():
    overrides = ["model=cnn_bn", "optimizer.momentum=0.5", "tags=[a,b]"]
    cfg = compose_config(overrides)
    choices = {"model": "cnn_bn", "model/norm": "batch", "model/dropout": "none", "data": "cifar10"}
    hparams = defining_hparams(cfg, "model-cnn_bn", overrides, choices)
    assert hparams["model"] == "cnn_bn" and hparams["model/norm"] == "batch"
    assert hparams["optimizer/lr"] == cfg.optimizer.lr and hparams["seed"] == 0
    assert hparams["optimizer/momentum"] == 0.5  # a key the command line set
    assert hparams["tags"] == "a,b" and hparams["trainer/max_epochs"] == 20
    extra = defining_hparams(cfg, "x", ["+callbacks.history.print_summary=false"], choices)
    assert not any(key.startswith("callbacks") for key in extra)
    assert not {"data/eval_batch_size", "data/mean", "paths/log_dir"} & set(hparams)


# ---------------------------------------------------------------- Trainer arguments, habits


def test_every_trainer_argument_is_a_key_of_the_trainer_config():
    cfg = compose_config(["trainer.gradient_clip_val=0.5", "trainer.fast_dev_run=true"])
    assert cfg.trainer.gradient_clip_val == 0.5 and cfg.trainer.fast_dev_run is True
    check_keys(cfg)
    arguments = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    set_elsewhere = {"logger", "callbacks", "plugins"}
    assert set(cfg.trainer) - {"_target_"} == arguments - set_elsewhere
    assert set(cfg.trainer) - {"_target_"} <= accepted_parameters("trainer", cfg.trainer._target_)


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("trainer.max_epoch=3", "did you mean trainer.max_epochs?"),
        ("trainer.gradient_clip=1", "did you mean trainer.gradient_clip_val?"),
        ("task_name=x", "did you mean name?"),
        ("debug=profiler", "did you mean debug=profile?"),
        ("logger=many_loggers", "did you mean logger=many?"),
        ("trainer=mps", "did you mean trainer=gpu?"),
        ("model=cnn_bn_drop", "did you mean model=cnn_bn_dropout?"),
        # lightning-hydra-template's extras: no counterpart, so no misleading "threads?"
        ("extras.print_config=false", "config_resolved.yaml"),
        # its habits: + on a key that exists, and keys nested under model
        ("+trainer.precision=16-mixed", "drop the +, e.g. trainer.precision=16-mixed"),
        ("+trainer.detect_anomaly=true", "drop the +, e.g. trainer.detect_anomaly=true"),
        ("model.optimizer.lr=0.01", "normlab's is optimizer.lr"),
        ("model.scheduler.T_max=5", "normlab's is scheduler.T_max"),
        ("model.lr=0.001", "normlab's is optimizer.lr"),
        ("model.compile=true", "normlab's is compile"),
        # its keys without a counterpart here: what to do instead
        ("train=false", "python eval.py ckpt_path="),
        ("test=false", "trainer.limit_test_batches=0"),
        ("data.num_workers=4", "no loader workers"),
        ("trainer.tpu_cores=8", "trainer.accelerator=tpu"),
        ("callbacks.early_stopping.patience=3", "+callbacks.early_stopping="),
    ],
)
def test_unknown_keys_and_options_get_a_did_you_mean(override, hint):
    hints = unknown_override_hints([override, "data=digits"], CONF, "train")
    assert len(hints) == 1 and hint in hints[0], hints
    assert "threads" not in hints[0]


@pytest.mark.slow
def test_early_stopping_added_as_the_hint_says_is_recorded_as_what_stopped_the_run(tmp_path):
    early_stopping = (
        "+callbacks.early_stopping={_target_:lightning.pytorch.callbacks.EarlyStopping,"
        "monitor:val/acc,mode:max,patience:1,min_delta:0.5}"  # no epoch gains half a point
    )
    proc, results = run_train(
        "data=digits", "trainer.max_epochs=20", early_stopping, run_dir=tmp_path / "run"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Testing the best checkpoint restores the callback's state from before it fired.
    assert results["epochs_completed"] == 2 and results["stopped_by"] == "early_stopping"


def test_lightning_hydra_templates_debug_and_trainer_names_compose():
    fdr = compose_config(["debug=fdr"])
    assert fdr.trainer.max_epochs == 1 and fdr.trainer.num_sanity_val_steps == 0
    limits = ("limit_train_batches", "limit_val_batches", "limit_test_batches")
    assert [fdr.trainer[key] for key in limits] == [1, 1, 1]
    assert fdr.trainer.fast_dev_run is False  # Lightning's would switch results off
    GlobalHydra.instance().clear()
    ddp_sim = compose_config(["trainer=ddp_sim"])
    GlobalHydra.instance().clear()
    assert ddp_sim.trainer == compose_config(["trainer=ddp_cpu"]).trainer


SRUN_HINT = "The `srun` command is available on your system but is not used"


@pytest.fixture
def srun_on_path(tmp_path, monkeypatch) -> dict[str, str]:
    """SLURM's client installed (an `srun` on PATH), no SLURM job around this process."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_debug_fdr_runs_one_batch_without_lightnings_srun_hint(tmp_path, srun_on_path):
    proc, results = run_train(
        "data=digits", "debug=fdr", run_dir=tmp_path / "run", env=srun_on_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SRUN_HINT not in proc.stdout + proc.stderr
    assert results["status"] == "completed" and results["epochs_completed"] == 1
    assert results["test_acc"] is not None
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()


@pytest.mark.slow
def test_inside_a_slurm_job_the_srun_hint_stays(tmp_path, srun_on_path):
    """Under sbatch/salloc without srun a multi-device run would hang: Lightning's hint is
    the one that says why."""
    env = {**srun_on_path, "SLURM_JOB_ID": "4242"}
    proc, _ = run_train("data=digits", "debug=fdr", run_dir=tmp_path / "run", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SRUN_HINT in proc.stdout + proc.stderr


def test_tags_and_callbacks_none_compose():
    cfg = compose_config(["tags=[baseline,bn]", "callbacks=none"])
    assert list(cfg.tags) == ["baseline", "bn"] and not cfg.callbacks


# ---------------------------------------------------------------- console pieces


def test_console_lines_are_plain_with_warnings_marked():
    formatter = ConsoleFormatter()
    record = logging.LogRecord("normlab", logging.INFO, "", 0, "epoch 1/3", None, None)
    assert formatter.format(record) == "epoch 1/3"
    record = logging.LogRecord("normlab", logging.WARNING, "", 0, "careful", None, None)
    assert formatter.format(record) == "warning: careful"


def test_the_bar_counts_epochs_from_one():
    class FakeTrainer:
        current_epoch, max_epochs = 2, 20

    assert epoch_label(FakeTrainer()) == "epoch 3/20"
    assert format_duration(75) == "1:15" and format_duration(3725) == "1:02:05"


# ---------------------------------------------------------------- real runs


@pytest.mark.slow
def test_a_short_run_prints_a_short_console_that_train_log_holds(tmp_path):
    run_dir = tmp_path / "run"
    proc, results = run_train(
        "data=digits", "trainer.max_epochs=2", "tags=[smoke]", "trainer.gradient_clip_val=0.5",
        run_dir=run_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) <= 30, "\n".join(lines)
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert any(line.startswith("torch threads: 1 (set by OMP_NUM_THREADS") for line in lines)
    log = (run_dir / "train.log").read_text()
    for line in lines:
        assert line in log, line  # train.log holds everything the console shows
    name = "data-digits+trainer.max_epochs-2+trainer.gradient_clip_val-0.5"
    assert results["name"] == name and results["tags"] == ["smoke"] and results["threads"] == 1
    assert tensorboard_dir(run_dir).name == name

    # eval.py from a checkpoint file: the run's config is found from its directory
    proc = run_cli(
        "eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["which"] == "last" and evaluation["checkpoint"] == "checkpoints/last.ckpt"
    assert evaluation["test_acc"] == pytest.approx(results["test_acc"], abs=0.2)


@pytest.mark.slow
def test_a_sweep_prints_one_line_per_job_and_callbacks_none_runs(tmp_path):
    """Also what a run without any logger, or without any callback, still records."""
    sweep_dir = tmp_path / "sweep"
    proc = run_multirun(
        "data=digits", "trainer.max_epochs=2", "trainer.limit_train_batches=5",
        "logger=none", "callbacks=default,none", sweep_dir=sweep_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    # callbacks=... says what a run records, not what it trains: not in the name (as logger=)
    assert [line.split(":")[0] for line in jobs] == [
        "#0 data-digits+trainer.max_epochs-2+trainer.limit_train_batches-5",
        "#1 data-digits+trainer.max_epochs-2+trainer.limit_train_batches-5",
    ]
    # the per-epoch lines stay in each job's train.log
    assert "epoch 2/2" not in proc.stdout
    assert "epoch 2/2" in (sweep_dir / "0" / "train.log").read_text()
    for job in ("0", "1"):
        results = json.loads((sweep_dir / job / "results.json").read_text())
        assert results["status"] == "completed" and results["test_acc"] is not None
        # callbacks=none counts the epochs it trained, as the default callbacks do
        assert results["epochs_completed"] == 2 and results["stopped_by"] == "max_epochs"
        assert "(2 epochs," in (sweep_dir / job / "train.log").read_text()  # the summary line
        # logger=none: results and checkpoints all the same, no TensorBoard folder
        assert not (sweep_dir / job / "tensorboard").exists()
    assert (sweep_dir / "0" / "checkpoints" / "last.ckpt").exists()
