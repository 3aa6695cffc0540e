"""Lightning's own DDP, for real: a two-process CPU fit through `train.py`, the SyncBatchNorm
conversion `trainer=ddp` asks for, and the SLURM launcher config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from helpers.ddp_probe import image_digest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from normlab.errors import ConfigError
from normlab.nn import ScratchBatchNorm2d
from normlab.runner.build import build_network
from normlab.runner.checks import check_run
from normlab.runner.rundir import plan_run

HELPERS = Path(__file__).parent / "helpers"


def evaluate(net: torch.nn.Module, datamodule, split: str) -> tuple[float, float]:
    """Accuracy and mean loss of `net` over a whole split, in this one process."""
    split_set = getattr(datamodule, f"{split}_set")
    net.eval()
    with torch.no_grad():
        logits = net(datamodule.eval_transform(split_set.images))
    loss = F.cross_entropy(logits, split_set.labels).item()
    return (logits.argmax(1) == split_set.labels).float().mean().item(), loss


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict:
    """Two-process CPU fits, side by side: Lightning's `ddp` (re-runs the command line per
    rank; what trainer=ddp uses on GPUs) with a probe recording each rank's data, and
    `ddp_spawn` (the strategy for local sweeps)."""
    root = tmp_path_factory.mktemp("ddp")
    common = ["data=digits", "trainer=ddp_cpu", "trainer.max_epochs=2"]
    probe = ["+callbacks.probe._target_=ddp_probe.ShardProbe", f"+callbacks.probe.out_dir={root}"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={root / name}"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in (
            ("ddp", [*common, *probe]),
            ("spawn", [*common, "trainer.strategy=ddp_spawn"]),
        )
    }
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name][-3000:]
    return {"root": root, "outputs": outputs}


@pytest.mark.slow
def test_two_process_cpu_fit_shards_the_data_and_reduces_metrics_across_ranks(ddp_runs):
    run_dir = ddp_runs["root"] / "ddp"
    results = json.loads((run_dir / "results.json").read_text())
    assert "Starting with 2 processes" in ddp_runs["outputs"]["ddp"]
    assert results["status"] == "completed" and results["epochs_completed"] == 2
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")

    # The data each rank trained on in epoch 0, against the training split built here.
    datamodule = instantiate(config.data)
    datamodule.setup()
    shards = [json.loads((ddp_runs["root"] / f"shard_rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["rank"] for s in shards] == [0, 1] and {s["world_size"] for s in shards} == {2}
    n_train, batch = len(datamodule.train_set), datamodule.batch_size
    per_rank = (n_train // 2) // batch * batch  # equal shards, ragged last batch dropped
    assert [len(s["digests"]) for s in shards] == [per_rank, per_rank]
    everything = Counter(image_digest(image) for image in datamodule.train_set.images)
    seen = Counter(shards[0]["digests"]) + Counter(shards[1]["digests"])
    # Disjoint shards: together the ranks saw each training image at most as often as it
    # occurs in the split (unsharded ranks would each have seen all of it).
    assert not seen - everything, "ranks trained on overlapping images"

    # Logged validation metrics are reduced over both ranks' halves of the validation set:
    # they equal a single-process evaluation of the final weights on the whole set.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    net = build_network(config.model)
    net.load_state_dict({k[4:]: v for k, v in checkpoint["state_dict"].items() if k[:4] == "net."})
    val_acc, val_loss = evaluate(net, datamodule, "val")
    final = results["history"][-1]
    assert final["val/acc"] == pytest.approx(val_acc, abs=1e-6)
    assert final["val/loss"] == pytest.approx(val_loss, rel=1e-4)
    assert results["val_acc_final"] == final["val/acc"]


@pytest.mark.slow
def test_ddp_spawn_for_sweeps_writes_the_same_results_as_ddp(ddp_runs):
    """With ddp_spawn the epochs run in child processes; results.json (written by the parent)
    still holds the full history, equal to the ddp run's."""
    ddp, spawn = (
        json.loads((ddp_runs["root"] / name / "results.json").read_text())
        for name in ("ddp", "spawn")
    )
    assert spawn["status"] == "completed" and spawn["epochs_completed"] == 2

    def untimed(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "time/epoch_s"} for row in history]

    # The same computation, but the two launchers may sum a cross-rank mean in a different
    # order: equal up to float32 rounding, not necessarily to the bit.
    assert untimed(spawn["history"]) == [
        pytest.approx(row, rel=1e-6) for row in untimed(ddp["history"])
    ]
    for key in ("val_acc_best", "val_acc_final", "test_acc", "train_loss_final"):
        assert spawn[key] == pytest.approx(ddp[key], rel=1e-6), key


def test_ddp_trainer_synchronizes_torch_batch_norm_but_not_the_scratch_layer(compose_cfg):
    """trainer=ddp turns on Lightning's SyncBatchNorm conversion. It converts subclasses of
    torch's _BatchNorm only, so model/norm=scratch_batch keeps per-process statistics."""
    from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm

    cfg = compose_cfg(["trainer=ddp", "model=cnn_bn"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True
    synced = TorchSyncBatchNorm().apply(build_network(cfg.model))
    kinds = {type(m) for m in synced.modules()}
    assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm2d not in kinds
    cfg = compose_cfg(["trainer=ddp", "model=cnn_bn", "model/norm=scratch_batch"])
    scratch = TorchSyncBatchNorm().apply(build_network(cfg.model))
    kinds = {type(m) for m in scratch.modules()}
    assert ScratchBatchNorm2d in kinds and torch.nn.SyncBatchNorm not in kinds


def test_slurm_launcher_composes_into_a_two_node_four_gpu_job(compose_cfg, tmp_path):
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    cfg = compose_cfg(
        ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    )
    launcher = instantiate(cfg.hydra.launcher)  # the real submitit plugin class
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    # The sbatch script submitit would write for these resources.
    names = SlurmExecutor._equivalence_dict()
    resources = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "timeout_min")
    sbatch = _make_sbatch_string(
        command="python train.py", folder=tmp_path, **{names[k]: params[k] for k in resources}
    )
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"):
        assert f"#SBATCH {line}" in sbatch
    check_run(plan_run(cfg, []), multirun=True, launcher=params_target(cfg))  # a safe combination


def test_slurm_launcher_needs_a_device_count_and_plain_ddp_refuses_local_sweeps(compose_cfg):
    cfg = compose_cfg(["hydra/launcher=slurm", "trainer=ddp"])  # devices: auto
    with pytest.raises(ConfigError, match="trainer.devices=4"):
        check_run(plan_run(cfg, []), multirun=True, launcher=params_target(cfg))
    cfg = compose_cfg(["trainer=ddp_cpu"])
    with pytest.raises(ConfigError, match="every process would re-run the whole sweep"):
        check_run(plan_run(cfg, []), multirun=True, launcher=params_target(cfg))
    check_run(
        plan_run(cfg, []), multirun=False, launcher=params_target(cfg)
    )  # a single run is fine
    cfg = compose_cfg(["trainer=ddp_cpu", "trainer.strategy=ddp_spawn"])
    check_run(plan_run(cfg, []), multirun=True, launcher=params_target(cfg))


def params_target(cfg) -> str:
    return str(cfg.hydra.launcher._target_)
