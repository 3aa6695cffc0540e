"""The default thread count: the cores a run may use (affinity and cgroup quota), shared by
parallel jobs and DDP processes, never the momentary load (which only warns); a setting or
OMP_NUM_THREADS decides instead."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest
import torch
from conftest import REPO, compose_config, run_train

from normlab.runner.threads import (
    affinity_cores,
    busy_cores,
    choose_threads,
    ddp_processes,
    load_warning,
    threads_kept_for_ranks,
    usable_cores,
)


@pytest.fixture(autouse=True)
def no_omp_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize(
    ("cores", "jobs", "expected"),
    [
        (2, 1, 2),  # a single run: every usable core
        (16, 4, 4),  # a parallel sweep shares the cores
        (2, 4, 1),  # never below one
    ],
)
def test_default_depends_on_the_cores_and_who_shares_them(cores, jobs, expected):
    threads, why = choose_threads(None, parallel_jobs=jobs, cores=cores)
    assert threads == expected
    assert f"{cores} usable cores" in why


def test_the_machines_load_changes_no_count_only_says_so():
    """The same command gives the same count (and so the same numbers) however busy the
    machine; the load only produces a warning that names a smaller threads= setting."""
    assert choose_threads(None, cores=2)[0] == 2
    warning = load_warning(2, cores=2, busy=1, machine=2)
    assert warning is not None and "threads=1" in warning
    assert load_warning(2, cores=2, busy=0, machine=2) is None
    assert load_warning(1, cores=2, busy=5, machine=2) is None  # one thread waits on nobody


def test_a_setting_or_the_environment_decides(monkeypatch):
    assert choose_threads(3, cores=2) == (3, "set by threads=")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(None, cores=16) == (1, "set by OMP_NUM_THREADS")


@contextlib.contextmanager
def spinning_core() -> Iterator[None]:
    """Another process keeping one core busy, running by the time the block starts."""
    spinner = subprocess.Popen(
        [sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert spinner.stdout.readline().strip() == "spinning"
        yield
    finally:
        spinner.kill()
        spinner.wait()


def test_a_spinning_process_counts_as_a_busy_core():
    with spinning_core():
        assert busy_cores() >= 1


@pytest.mark.slow
def test_a_busy_machine_gives_the_same_numbers_and_weights(tmp_path):
    """The issue's reproduction: the same command and seed, once on a quiet machine and once
    with a core kept busy, must train the same weights (a load-following thread count gave a
    max weight difference of 3.1)."""
    args = ["data=digits", "trainer.max_epochs=2", "data.batch_size=16", "seed=3"]
    no_setting = {"OMP_NUM_THREADS": ""}  # the default choice, not the test helpers' 1
    _, quiet = run_train(*args, run_dir=tmp_path / "quiet", env=no_setting)
    with spinning_core():
        proc, busy = run_train(*args, run_dir=tmp_path / "busy", env=no_setting)
    assert quiet and busy, proc.stderr[-2000:]
    assert busy["threads"] == quiet["threads"] == usable_cores()
    untimed = [
        [{k: v for k, v in epoch.items() if not k.startswith("time/")} for epoch in run["history"]]
        for run in (quiet, busy)
    ]
    assert untimed[0] == untimed[1]
    assert busy["test_acc"] == quiet["test_acc"]
    weights = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for run in ("quiet", "busy")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize(
    ("busy", "machine", "warned"),
    [
        # /proc/loadavg counts the whole machine: a 4-core cpuset of a 128-core node meets its
        # share of that load, not all of it.
        (64, 128, True),  # ~2 of its 4 cores busy
        (10, 128, False),  # 0.3 of a core's load here
        (3, 4, True),  # the whole machine: counted as it is
    ],
)
def test_a_small_share_of_a_big_machine_is_warned_of_its_share_of_the_load(busy, machine, warned):
    assert (load_warning(4, cores=4, busy=busy, machine=machine) is not None) is warned


def test_ddp_processes_on_a_machine_share_its_cores():
    threads, why = choose_threads(None, cores=8, ranks=2)
    assert threads == 4 and "shared by 2 DDP processes" in why
    assert choose_threads(None, parallel_jobs=2, cores=16, ranks=2)[0] == 4
    assert choose_threads(None, cores=2, ranks=4)[0] == 1  # never below one
    assert choose_threads(3, cores=8, ranks=2) == (3, "set by threads=")


@pytest.mark.parametrize(
    ("trainer", "ranks"),
    [
        ({"strategy": "ddp", "accelerator": "cpu", "devices": 2}, 2),
        ({"strategy": "ddp_spawn", "accelerator": "cpu", "devices": 3}, 3),
        ({"strategy": "ddp", "accelerator": "gpu", "devices": [0, 1, 2]}, 3),
        ({"strategy": "ddp", "accelerator": "gpu", "devices": "0,1"}, 2),
        ({"strategy": "ddp", "accelerator": "cpu", "devices": "2"}, 2),
        ({"strategy": "auto", "accelerator": "cpu", "devices": 2}, 2),  # Lightning picks DDP
        ({"strategy": "auto", "accelerator": "cpu", "devices": 1}, 1),
        ({"strategy": "ddp", "accelerator": "cpu", "devices": "auto"}, 1),
        ({"strategy": "single_device", "accelerator": "cpu", "devices": 1}, 1),
        ({"strategy": "deepspeed", "accelerator": "gpu", "devices": 4}, 1),
        (None, 1),
    ],
)
def test_ddp_processes_per_machine_from_the_trainer_config(trainer, ranks):
    assert ddp_processes(trainer) == ranks


def test_the_shipped_trainer_configs_start_their_processes():
    assert ddp_processes(compose_config(["trainer=ddp_cpu"]).trainer) == 2
    assert ddp_processes(compose_config(["trainer=cpu"]).trainer) == 1
    assert ddp_processes(compose_config([]).trainer) == 1


def test_the_chosen_count_is_kept_for_every_rank(monkeypatch):
    """Lightning's DDP launchers replace torch's threads unless OMP_NUM_THREADS is set, and
    the ranks they start inherit the environment: set for the run, restored after it."""
    with threads_kept_for_ranks(3, ranks=2):
        assert os.environ["OMP_NUM_THREADS"] == "3"
        # what the other ranks then choose, and say
        assert choose_threads(None, ranks=2) == (3, "chosen by the first of 2 DDP processes")
    assert "OMP_NUM_THREADS" not in os.environ and "NORMLAB_RANK_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    with threads_kept_for_ranks(2, ranks=2):
        assert os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["OMP_NUM_THREADS"] == "5"
    with threads_kept_for_ranks(2, ranks=1):  # no DDP: nothing to keep
        assert os.environ["OMP_NUM_THREADS"] == "5"


def test_usable_cores_follow_the_affinity_mask_and_joblibs_count():
    """One count for threads and for a joblib sweep's n_jobs=-1: joblib's (affinity, cgroup
    quota). Checked for real in a process pinned to one core."""
    assert usable_cores() == joblib.cpu_count() <= affinity_cores()
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from normlab.runner.threads import usable_cores, choose_threads\n"
        "print(usable_cores(), choose_threads(None)[0])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path.cwd()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
