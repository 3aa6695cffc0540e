"""The fixtures every test shares: Hydra composition of the real configs, a CIFAR-10 in the real
on-disk format (the benchmark's writer), and the real `train.py` / `eval.py` command lines.

Two tiers: tests marked `slow` start real training processes (`make test`); the rest run in
this process (`make test-fast`).
"""

from __future__ import annotations

import copy
import json
import os
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
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

import normlab  # noqa: F401 - registers the resolvers the configs use
from normlab.bench.cifar_files import write_cifar10

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def config_options(group: str) -> list[str]:
    """The choices of a config group: its YAML files."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# Composed configs by (overrides, config name): Hydra takes about a second a composition on a
# busy machine, and the tests compose the same few command lines hundreds of times. The conf/
# files do not change during a session; every caller gets its own deep copy.
_composed: dict[tuple[tuple[str, ...], str], DictConfig] = {}


def _compose_once(overrides: tuple[str, ...], config_name: str) -> DictConfig:
    key = (overrides, config_name)
    if key not in _composed:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                _composed[key] = compose(
                    config_name, overrides=list(overrides), return_hydra_config=True
                )
        finally:
            GlobalHydra.instance().clear()
    return copy.deepcopy(_composed[key])


def compose_config(
    overrides: list[str] | tuple[str, ...] = (),
    config_name: str = "train",
    output_dir: Path | None = None,
) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with overrides, as Hydra would for the entry point.

    With `output_dir` the `hydra` node is kept and made current (so `${hydra:...}` and
    `${paths.output_dir}` resolve); without it, the config is the task's alone.
    """
    cfg = _compose_once(tuple(overrides), config_name)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir or "/tmp/normlab-test-output")
        cfg.hydra.runtime.cwd = str(REPO)
        cfg.hydra.job.num = 0
    if output_dir is not None:
        HydraConfig.instance().set_config(cfg)
        return cfg
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_cfg() -> Iterator:
    """`compose_config` with the `hydra` node set, reset after the test."""

    def _compose(overrides: list[str] | None = None, output_dir: Path | None = None) -> DictConfig:
        return compose_config(overrides or [], output_dir=output_dir or Path("/tmp/normlab-test"))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def fake_cifar10(tmp_path: Path) -> Path:
    """A folder holding a tiny CIFAR-10 (200 train, 60 test images) in the real format."""
    return write_cifar10(tmp_path / "cifar", train_images=200, test_images=60)


def assert_names(message: str, *parts: str) -> None:
    """A user-facing message names each of `parts` (the key and its value, the fix it
    suggests), whatever sentence carries them; line wrapping is ignored. Tests assert on
    these, not on whole sentences, so rewording a message fails no test, losing its key or
    its fix does."""
    flat = " ".join(message.split())
    missing = [part for part in parts if part not in flat]
    assert not missing, f"{missing} not in the message: {flat}"


def run_cli(
    script: str, *args: str, cwd: Path, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a repo entry point (`train.py`, `eval.py`) as a user would, from `cwd`.

    One torch thread per process: these runs are tiny, and when the machine is busy (other
    test processes, a DDP pair) spinning OpenMP threads made them many times slower.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    command = (
        [sys.executable, str(REPO / script)]
        if script.endswith(".py")
        else [sys.executable, "-m", script]
    )
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tensorboard_dir(run_dir: Path) -> Path:
    """The run's TensorBoard folder: `<run dir>/tensorboard/<run name>`."""
    folders = [p for p in (run_dir / "tensorboard").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


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


# Class-folder images for data=image_folder (shared by its tests and the config tests).
SIZE = 32


def write_image(path: Path, image: Image.Image | np.ndarray, **save_args) -> Path:
    """Save `image` (a PIL image or a uint8/uint16 array) at `path`; the suffix picks the
    format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **save_args)
    return path


def solid(value: int, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """A uniform RGB image whose value identifies it (any format and resize keep it)."""
    return np.full((size[1], size[0], 3), value, dtype=np.uint8)


def write_classes(
    split_dir: Path, per_class: dict[str, int], start: int = 0, suffix: str = ".png"
) -> dict[int, str]:
    """`split_dir/<class>/<i><suffix>`, each image a distinct uniform value. Returns
    {value: class name} so a decoded image tells which folder it came from."""
    origin: dict[int, str] = {}
    value = start
    for name, count in per_class.items():
        for i in range(count):
            write_image(split_dir / name / f"{i:03d}{suffix}", solid(value))
            origin[value] = name
            value += 1
    return origin


def write_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 4
) -> Path:
    """`root/train/<class>/*.png` and `root/test/<class>/*.png`, a few uniform images each."""
    write_classes(root / "train", dict.fromkeys(classes, per_class))
    write_classes(root / "test", dict.fromkeys(classes, 2), start=100)
    return root


def hparams_records(run_dir: Path) -> tuple[dict, dict]:
    """(hyperparameters, last value of each scalar tag) as TensorBoard reads them from the
    run's HParams entry (the sub-run `final`)."""
    acc = EventAccumulator(str(tensorboard_dir(run_dir) / "final"))
    acc.Reload()
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    starts = [k for k in content if k == hparams_metadata.SESSION_START_INFO_TAG]
    assert len(starts) == 1, content.keys()
    start = hparams_metadata.parse_session_start_info_plugin_data(content[starts[0]])
    # No experiment record: TensorBoard then lists the columns from all the runs shown, those
    # that differ between them first (one run's record would fix the columns, none differing).
    assert hparams_metadata.EXPERIMENT_TAG not in content
    hparams = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[key] = getattr(value, kind)
    scalars = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    return hparams, scalars


def md_table_rows(markdown: str, header_start: str) -> dict[str, list[str]]:
    """The rows of the markdown table whose header starts with `header_start`, by first cell."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def start_train(*args: str, cwd: Path, merge_stderr: bool = False) -> subprocess.Popen:
    """`python train.py <args>` started in the background (to be stopped, or waited on), one
    torch thread per process as run_cli; stderr merged into stdout with `merge_stderr`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
    )
