"""Resume and reproducibility through the real `train.py`: a run killed with SIGKILL after its
first checkpoint, resumed with `resume=<run dir>`, ends bit-identical to the same run done
without interruption; the same seed gives the same run; concurrent runs get their own
directories.

One set of processes serves every test here (a module fixture); each `train.py` costs
seconds of imports, so they run side by side.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import hparams_records, run_train
from conftest import start_train as start_from_conftest
from omegaconf import OmegaConf

# Three epochs with dropout, so epochs after the kill draw dropout masks; not the default
# model and optimizer, so that a resumed run labelled with the defaults would show.
CONFIG = [
    "data=digits", "data.train_size=600", "trainer.max_epochs=3",
    "model=cnn_dropout", "optimizer=adamw",
]  # fmt: skip
EPOCHS = 3
SAME_SECOND = "2025-01-31_12-00-00"


def start_train(*args: str, cwd: Path) -> subprocess.Popen:
    return start_from_conftest(*args, cwd=cwd, merge_stderr=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time/epoch_s"} for row in history]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    # Two identical uninterrupted runs whose directories differ only by the `${pid:}` suffix
    # of the default pattern (as two runs started in the same second), and a third run that
    # is killed once its first checkpoint exists.
    same_second = f"hydra.run.dir=logs/runs/{SAME_SECOND}_${{pid:}}"
    uninterrupted = [start_train(*CONFIG, same_second, cwd=root) for _ in range(2)]
    killed_dir = root / "killed"
    victim = start_train(*CONFIG, f"hydra.run.dir={killed_dir}", cwd=root)
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    output = victim.communicate()[0]
    assert last.exists(), output[-3000:]
    killed_epoch = torch.load(last, weights_only=True)["epoch"]
    killed_config = (killed_dir / ".hydra" / "config.yaml").read_text()
    outputs = [finish(p) for p in uninterrupted]
    run_dirs = sorted((root / "logs" / "runs").iterdir())

    # Control: the same interrupted run resumed without the RNG callback.
    no_rng_dir = root / "killed_without_rng_state"
    shutil.copytree(killed_dir, no_rng_dir)
    config = OmegaConf.load(no_rng_dir / ".hydra" / "config.yaml")
    del config.callbacks["rng_state"]
    OmegaConf.save(config, no_rng_dir / ".hydra" / "config.yaml")
    # A run killed after Hydra saved its config but before its first checkpoint.
    early_dir = root / "killed_before_first_checkpoint"
    shutil.copytree(run_dirs[0] / ".hydra", early_dir / ".hydra")

    # An evaluation of the interrupted run's best checkpoint, which the resume will replace.
    (killed_dir / "eval.json").write_text(json.dumps({"which": "best", "test_acc": 0.5}))
    # verbose= says how the run reports, not what it trains: it may accompany resume=.
    resumes = [
        start_train(f"resume={killed_dir}", cwd=root),
        start_train(f"resume={no_rng_dir}", cwd=root),
        start_train(f"resume={early_dir}", "verbose=true", cwd=root),
    ]
    resume_outputs = [finish(p) for p in resumes]
    return {
        "root": root,
        "uninterrupted": run_dirs,
        "outputs": outputs,
        "killed": killed_dir,
        "killed_epoch": killed_epoch,
        "killed_config": killed_config,
        "no_rng": no_rng_dir,
        "early": early_dir,
        "resume_outputs": resume_outputs,
    }


@pytest.mark.slow
def test_sigkilled_run_resumes_in_its_directory_to_identical_weights_and_metrics(runs):
    reference, resumed = runs["uninterrupted"][0], runs["killed"]
    assert runs["killed_epoch"] < EPOCHS - 1, "the run finished before it could be killed"
    assert f"resuming {resumed}" in runs["resume_outputs"][0]
    assert same_weights(weights(resumed), weights(reference))
    expected, got = results(reference), results(resumed)
    assert got["status"] == "completed" and got["epochs_completed"] == EPOCHS
    assert without_timings(got["history"]) == without_timings(expected["history"])
    for key in ("val_acc_best", "val_acc_final", "test_acc", "test_loss", "train_loss_final"):
        assert got[key] == expected[key], key
    # Same directory, original config and overrides kept; no new run directory appeared.
    assert (resumed / ".hydra" / "config.yaml").read_text() == runs["killed_config"]
    assert got["overrides"] == CONFIG
    assert len(list((runs["root"] / "logs" / "runs").iterdir())) == 2


@pytest.mark.slow
def test_a_resumed_run_is_labelled_with_its_own_choices(runs):
    """Its console header and TensorBoard HParams name what it trains (data=digits,
    model=cnn_dropout, adamw), as the uninterrupted run's do, not the resume command's
    defaults (cifar10, cnn_bn_dropout, sgd)."""
    header = runs["resume_outputs"][0]
    assert "model cnn_dropout (" in header and "data digits," in header
    assert "; adamw lr" in header
    resumed, _ = hparams_records(runs["killed"])
    uninterrupted, _ = hparams_records(runs["uninterrupted"][0])
    assert resumed == uninterrupted
    assert resumed["data"] == "digits" and resumed["optimizer"] == "adamw"


@pytest.mark.slow
def test_resuming_retires_an_evaluation_of_the_checkpoints_it_replaces(runs):
    """Never two "best checkpoint" figures in one folder: the stale eval.json moves aside."""
    assert not (runs["killed"] / "eval.json").exists()
    retired = json.loads((runs["killed"] / "eval.superseded.json").read_text())
    assert retired["test_acc"] == 0.5 and "resumed" in retired["superseded"]


@pytest.mark.slow
def test_without_the_rng_callback_the_resumed_run_diverges(runs):
    """The control: Lightning alone restores weights, optimizer and loops, yet the dropout
    masks after the resume differ, and so do the final weights."""
    assert not same_weights(weights(runs["no_rng"]), weights(runs["uninterrupted"][0]))


@pytest.mark.slow
def test_run_killed_before_its_first_checkpoint_resumes_from_the_start(runs):
    assert "from the start (no checkpoint)" in runs["resume_outputs"][2]
    assert "model summary (model_summary.txt)" in runs["resume_outputs"][2]  # verbose=true
    assert same_weights(weights(runs["early"]), weights(runs["uninterrupted"][0]))
    assert results(runs["early"])["epochs_completed"] == EPOCHS


@pytest.mark.slow
def test_same_config_and_seed_give_identical_runs(runs):
    first, second = runs["uninterrupted"]
    assert without_timings(results(first)["history"]) == without_timings(results(second)["history"])
    assert results(first)["test_acc"] == results(second)["test_acc"]
    assert same_weights(weights(first), weights(second))


@pytest.mark.slow
def test_runs_started_in_the_same_second_get_their_own_directories(runs, compose_cfg):
    default = compose_cfg().hydra.run._get_node("dir")._value()
    # <date>_<time>_<run name>_<pid>
    assert "${now:%Y-%m-%d_%H-%M-%S}_${run_name:" in default and default.endswith("_${pid:}}")
    first, second = runs["uninterrupted"]
    assert first.name.startswith(SAME_SECOND) and second.name.startswith(SAME_SECOND)
    assert first != second
    for run_dir, output in zip(runs["uninterrupted"], runs["outputs"], strict=True):
        assert results(run_dir)["status"] == "completed" and str(run_dir.name) in output


SIGNALS = {"SIGTERM": signal.SIGTERM, "Ctrl-C": signal.SIGINT}


@pytest.fixture(scope="module")
def stopped_sweeps(tmp_path_factory) -> dict:
    """One three-job sweep per signal, side by side, each signalled while its second job
    trains."""
    root = tmp_path_factory.mktemp("sweeps")
    sweep = ["-m", "data=digits", "data.train_size=200", "trainer.max_epochs=10", "seed=0,1,2"]
    procs = {
        name: start_train(*sweep, f"hydra.sweep.dir={root / name}", cwd=root) for name in SIGNALS
    }
    finished, waiting = {}, set(SIGNALS)
    # Generous: each sweep waits for a file, and a loaded 2-core machine runs both slowly.
    deadline = time.monotonic() + 900
    while waiting and time.monotonic() < deadline:
        for name in list(waiting):
            if (root / name / "1" / "checkpoints" / "last.ckpt").exists():
                finished[name] = (root / name / "0" / "results.json").read_bytes()
                procs[name].send_signal(SIGNALS[name])
                waiting.discard(name)
            elif procs[name].poll() is not None:
                waiting.discard(name)
        time.sleep(0.01)
    for name, proc in procs.items():
        if name not in finished and proc.poll() is None:
            proc.kill()  # never reached its second job: the test reports its output
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    return {"root": root, "procs": procs, "outputs": outputs, "finished": finished}


@pytest.mark.slow
@pytest.mark.parametrize("name", SIGNALS)
def test_stopped_sweep_keeps_finished_jobs_and_marks_the_interrupted_one(stopped_sweeps, name):
    sweep, output = stopped_sweeps["root"] / name, stopped_sweeps["outputs"][name]
    assert name in stopped_sweeps["finished"], output[-3000:]
    assert stopped_sweeps["procs"][name].returncode == 130, output[-3000:]
    finished = stopped_sweeps["finished"][name]
    assert (sweep / "0" / "results.json").read_bytes() == finished
    assert json.loads(finished)["status"] == "completed"
    stopped = results(sweep / "1")
    assert stopped["status"] == "interrupted", stopped
    assert 1 <= stopped["epochs_completed"] < 10 and len(stopped["history"]) >= 1
    assert not (sweep / "2").exists()  # the sweep stopped
    assert f"resume={sweep / '1'}" in output


@pytest.mark.slow
def test_continuing_from_another_runs_checkpoint_tests_a_best_checkpoint_of_its_own(tmp_path):
    """`ckpt_path=<run>/checkpoints/last.ckpt` with changes, the habit from
    lightning-hydra-template: whether or not the new run beats the old best validation
    accuracy, it ends with a best.ckpt in its own folder and tests it (it used to look for the
    old best under the new folder and crash after training)."""
    _, first = run_train("data=digits", "trainer.max_epochs=2", run_dir=tmp_path / "first")
    assert first and first["status"] == "completed"
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    before = (tmp_path / "first" / "checkpoints" / "best.ckpt").read_bytes()
    for name, overrides in {
        "stalled": ("trainer.max_epochs=3", "optimizer.lr=1e-9"),  # cannot beat the old best
        "improved": ("trainer.max_epochs=5",),
    }.items():
        proc, continued = run_train(
            "data=digits", f"ckpt_path={last}", *overrides, run_dir=tmp_path / name
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert continued["status"] == "completed" and continued["epochs_completed"] > 2
        assert continued["best_checkpoint"] == "checkpoints/best.ckpt"
        assert (tmp_path / name / "checkpoints" / "best.ckpt").is_file()
        if name == "stalled":  # the restored best, copied in and tested
            assert continued["val_acc_best"] == first["val_acc_best"]
            assert continued["test_acc"] == first["test_acc"]
    assert (tmp_path / "first" / "checkpoints" / "best.ckpt").read_bytes() == before
