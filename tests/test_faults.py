"""Fault injection through the real `train.py`: SIGKILL at exact checkpoint and results writes
(`NORMLAB_FAULT`, see normlab.files), with `$TMPDIR` on another file system where the machine
has one; `resume=` then finishes bit-identical to an uninterrupted run, also after the run
directory was moved, and no temporary file is left. A malicious run directory never runs its
payload through eval.py, predict or resume.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

CONFIG = ["data=digits", "data.train_size=256", "trainer.max_epochs=5", "logger=none"]
# (name, NORMLAB_FAULT, move the run directory before resuming)
KILL_POINTS = [
    ("after epoch 3's last.ckpt, then moved", "last.ckpt:3:renamed", True),
    ("last.ckpt complete, not yet renamed", "last.ckpt:2:written", False),
    ("best.ckpt just opened", "best.ckpt:2:opened", False),
    ("final results.json complete, not yet renamed", "results.json:2:written", True),
]


def tmpdir_elsewhere(root: Path) -> Path:
    """A temporary folder on another file system than the runs (/dev/shm) when there is one."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(root).st_dev:
        folder = shm / f"normlab-faults-{os.getpid()}"
    else:
        folder = root / "tmp"
    folder.mkdir(exist_ok=True)
    return folder


def train(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd, env=full, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def untimed(results: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time/epoch_s"} for row in results["history"]]


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    tmp = tmpdir_elsewhere(root)
    env = {"TMPDIR": str(tmp)}

    def victim(index: int) -> tuple[subprocess.CompletedProcess, Path]:
        _, fault, move = KILL_POINTS[index]
        run_dir = root / f"kill{index}"
        proc = train(*CONFIG, f"hydra.run.dir={run_dir}", cwd=root,
                     env={**env, "NORMLAB_FAULT": fault})  # fmt: skip
        if move:
            moved = root / "moved" / f"kill{index}"
            moved.parent.mkdir(exist_ok=True)
            shutil.move(run_dir, moved)
            run_dir = moved
        return proc, run_dir

    def reference(_: int) -> subprocess.CompletedProcess:
        return train(*CONFIG, f"hydra.run.dir={root / 'reference'}", cwd=root, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        ref = pool.submit(reference, 0)
        killed = list(pool.map(victim, range(len(KILL_POINTS))))
        resumed = list(pool.map(lambda k: train(f"resume={k[1]}", cwd=root, env=env), killed))
        ref = ref.result()
    assert ref.returncode == 0, ref.stderr[-3000:]
    yield {"root": root, "tmp": tmp, "killed": killed, "resumed": resumed}
    if tmp.parent == Path("/dev/shm"):
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("index", range(len(KILL_POINTS)), ids=[k[0] for k in KILL_POINTS])
def test_killed_at_a_write_resumes_bit_identically(faults, index):
    (victim, run_dir), resumed = faults["killed"][index], faults["resumed"][index]
    assert victim.returncode == -signal.SIGKILL, victim.stderr[-2000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = faults["root"] / "reference"
    for name in ("best.ckpt", "last.ckpt"):
        assert same(state(run_dir / "checkpoints" / name), state(reference / "checkpoints" / name))
    got, expected = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    assert got["status"] == "completed" and got["epochs_completed"] == 5
    for key in ("test_acc", "test_loss", "val_acc_best", "best_checkpoint"):
        assert got[key] == expected[key], key
    assert untimed(got) == untimed(expected)
    assert not list(run_dir.rglob("*.tmp")) and not list(faults["tmp"].rglob("*.tmp"))


def pickled_torch_load(config: dict, marker: Path) -> None:
    """The case found by the fault hunt: `torch.load(weights_only=False)` of a pickle."""
    config["callbacks"]["evil"] = {
        "_target_": "torch.load", "f": str(marker.with_suffix(".pkl")), "weights_only": False,
    }  # fmt: skip


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_run_directory_never_runs_its_payload(faults, tmp_path):
    """eval.py, predict and resume= refuse it before building anything (each other payload,
    builtins.open, os.system in _args_, ..., is refused in test_safety.py)."""
    source = faults["root"] / "reference"
    run = tmp_path / "received"
    shutil.copytree(source, run)
    (run / "results.json").write_text(json.dumps({"status": "interrupted"}))
    marker = tmp_path / "MARKER"
    torch.save(Payload(str(marker)), marker.with_suffix(".pkl"))
    config = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"))
    pickled_torch_load(config, marker)
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = [
        [str(REPO / "eval.py"), f"run={run}"],
        ["-m", "normlab.predict", f"run={run}", str(image)],
        [str(REPO / "train.py"), f"resume={run}"],
    ]
    for command in commands:
        proc = subprocess.run([sys.executable, *command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "refused to open" in proc.stderr and "_target_=" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not marker.exists()
