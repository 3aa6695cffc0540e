"""Multi-node DDP without SLURM, for real: two "nodes" of one process each on this machine
(Lightning's MASTER_ADDR / MASTER_PORT / NODE_RANK environment, gloo) train exactly as one
node with two processes at the same global batch (docs/cluster.md gives the recipe)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

COMMON = ["data=digits", "trainer=ddp_cpu", "trainer.max_epochs=2", "data.batch_size=16"]


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for the rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(run_dir: Path, *overrides: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "train.py"),
            f"hydra.run.dir={run_dir}",
            *COMMON,
            *overrides,
            f"paths.data_dir={run_dir.parent / 'data'}",
        ],
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def two_ways(tmp_path_factory) -> dict:
    """Side by side: two nodes x one process (each node its own `python train.py`, as it
    would be typed on two machines) and one node x two processes (trainer=ddp_cpu)."""
    root = tmp_path_factory.mktemp("multinode")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # The processes start in `root`: a relative PYTHONPATH (PYTHONPATH=src) would not reach them.
    paths = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    port = free_port()
    nodes = ["trainer.num_nodes=2", "trainer.devices=1"]
    procs = {
        f"node{rank}": start(
            root / "two_nodes",
            *nodes,
            env={
                **env,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "NODE_RANK": str(rank),
                "WORLD_SIZE": "2",
            },
        )
        for rank in (0, 1)
    }
    procs["one_node"] = start(root / "one_node", env=env)
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}:\n{outputs[name][-3000:]}"
    return {"root": root, "outputs": outputs}


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time/epoch_s"} for row in history]


@pytest.mark.slow
def test_two_nodes_of_one_process_train_as_one_node_of_two(two_ways):
    root, outputs = two_ways["root"], two_ways["outputs"]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs["node0"]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs["node1"]
    two_nodes = json.loads((root / "two_nodes" / "results.json").read_text())
    one_node = json.loads((root / "one_node" / "results.json").read_text())
    assert two_nodes["status"] == one_node["status"] == "completed"
    assert two_nodes["epochs_completed"] == 2
    # The same shards, the same all-reduced gradients: the same training, epoch by epoch.
    for row_nodes, row_one in zip(
        untimed(two_nodes["history"]), untimed(one_node["history"]), strict=True
    ):
        assert row_nodes.keys() == row_one.keys()
        for key, value in row_one.items():
            assert row_nodes[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert two_nodes["test_acc"] == pytest.approx(one_node["test_acc"], abs=1e-6)
