"""logger=mlflow and logger=wandb, offline: one real run logging to both (and TensorBoard),
read back through MLflow's own client and W&B's own inspector of offline runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_train

from normlab.training.trackers import tracker_tags, wandb_mode

OVERRIDES = ["data=digits", "trainer.max_epochs=2", "model=cnn_bn", "seed=3", "tags=[study]"]


def test_wandb_stays_offline_without_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    assert wandb_mode({}) == "offline"
    assert wandb_mode({"WANDB_API_KEY": "x"}) == "online"
    assert wandb_mode({"WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}) == "disabled"
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password key\n")
    netrc.chmod(0o600)  # as `wandb login` writes it (Python refuses a readable one)
    assert wandb_mode({}) == "online"


def test_loggers_combine_as_a_list_of_options(compose_cfg):
    cfg = compose_cfg(["logger=[tensorboard,mlflow,wandb]", "tags=[a,b]"])
    assert set(cfg.logger) == {"tensorboard", "mlflow", "wandb"}
    assert cfg.logger.mlflow.tags == {"a": "true", "b": "true"} == tracker_tags(["a", "b"])
    assert cfg.logger.mlflow.tracking_uri == "sqlite:///./logs/mlflow.db"


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trackers")
    run_dir = root / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc, results = run_train(
        *OVERRIDES, "logger=[tensorboard,mlflow,wandb]", run_dir=run_dir, timeout=600, env=env
    )
    assert proc.returncode == 0 and results["status"] == "completed", proc.stdout[-3000:]
    return run_dir


@pytest.mark.slow
def test_mlflow_holds_the_run_its_curves_params_and_final_metrics(tracked_run):
    from mlflow.tracking import MlflowClient

    results = json.loads((tracked_run / "results.json").read_text())
    client = MlflowClient(f"sqlite:///{tracked_run.parent / 'logs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("normlab")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == results["name"] and run.info.status == "FINISHED"
    assert run.data.tags["study"] == "true"
    params = run.data.params
    assert (params["model"], params["model/norm"], params["seed"]) == ("cnn_bn", "batch", "3")
    assert params["status"] == "completed"
    metrics = run.data.metrics
    assert metrics["test/acc"] == pytest.approx(results["test_acc"])
    assert metrics["val/acc_best"] == pytest.approx(results["val_acc_best"])
    # One point per epoch, then the run's final figure, which is named after the curve it ends.
    curve = [m.value for m in client.get_metric_history(run.info.run_id, "val/acc")]
    epochs = [row["val/acc"] for row in results["history"]]
    assert curve == pytest.approx([*epochs, results["val_acc_final"]])


@pytest.mark.slow
def test_wandb_writes_an_offline_run_with_the_same_record(tracked_run):
    (offline,) = (tracked_run / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))  # the log `wandb sync` uploads later
    results = json.loads((tracked_run / "results.json").read_text())
    # W&B's own reader of a run's log (the CLI of the installed package).
    wandb_cli = Path(sys.executable).parent / "wandb"
    inspect = [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(offline)]
    record = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
    assert record["name"] == results["name"] and record["tags"] == ["study"]
    assert record["state"] == "finished" and record["project"] == "normlab"
    assert record["config"]["model/norm"] == "batch" and record["config"]["seed"] == 3
    assert record["summary"]["test/acc"] == pytest.approx(results["test_acc"])
    assert record["summary"]["val/acc"] == pytest.approx(results["history"][-1]["val/acc"])
