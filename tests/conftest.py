"""Shared test helpers: a CIFAR-10 in the real on-disk format, Hydra composition, and the real
`train.py` command line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def write_fake_cifar10(root: Path, per_batch: int = 40, test_size: int = 60, seed: int = 0) -> dict:
    """Write `cifar-10-batches-py/` as the real archive unpacks it: five training batches, a
    test batch and `batches.meta`, each a pickled dict with rows of 3072 uint8 values (1024
    red, 1024 green, 1024 blue, row-major). Returns the arrays written, for comparison."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[np.ndarray, list[int]]] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test_size if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=n)]
        entry = {
            "batch_label": f"{name} of 5",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (data, labels)
    meta = {
        "num_cases_per_batch": per_batch,
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ],
        "num_vis": 3072,
    }
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump(meta, f, protocol=2)
    return written


@pytest.fixture
def fake_cifar10(tmp_path: Path) -> Path:
    """A folder holding a tiny CIFAR-10 (200 train, 60 test images) in the real format."""
    root = tmp_path / "cifar"
    write_fake_cifar10(root)
    return root


@pytest.fixture
def compose_cfg() -> Iterator:
    """Compose `conf/train.yaml` with overrides, as Hydra would for `train.py`, with the
    `hydra:` resolvers usable (output dir set to a temporary folder)."""
    import normlab  # noqa: F401 - registers the ${pid:} resolver

    def _compose(overrides: list[str] | None = None, output_dir: Path | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=overrides or [], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir or "/tmp/normlab-test-output")
            cfg.hydra.runtime.cwd = str(REPO)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(
    script: str, *args: str, cwd: Path, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a repo entry point (`train.py`, `eval.py`) as a user would, from `cwd`.

    One torch thread per process: these runs are tiny, and when the machine is busy (other
    test processes, a DDP pair) spinning OpenMP threads made them up to 10x slower.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_train(*overrides: str, run_dir: Path, timeout: float = 300, env: dict | None = None):
    """`python train.py <overrides>` writing into `run_dir`; returns (process, results or None)."""
    proc = run_cli(
        "train.py",
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={run_dir.parent / 'data'}",
        *overrides,
        cwd=run_dir.parent,
        timeout=timeout,
        env=env,
    )
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    return proc, results


def run_multirun(
    *overrides: str, sweep_dir: Path, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python train.py -m <overrides>` writing its jobs into `sweep_dir/<job number>`."""
    return run_cli(
        "train.py",
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.data_dir={sweep_dir.parent / 'data'}",
        *overrides,
        cwd=sweep_dir.parent,
        timeout=timeout,
        env=env,
    )
