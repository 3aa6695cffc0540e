"""The default thread count: the cores a run may use (affinity and cgroup quota), shared by
parallel jobs and DDP processes, minus this run's share of the cores other processes keep
busy; a setting or OMP_NUM_THREADS decides instead."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import joblib
import pytest
from conftest import REPO, compose_config

from normlab.runner.threads import (
    affinity_cores,
    busy_cores,
    choose_threads,
    ddp_processes,
    threads_kept_for_ranks,
    usable_cores,
)


@pytest.fixture(autouse=True)
def no_omp_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize(
    ("cores", "busy", "jobs", "expected"),
    [
        (2, 0, 1, 2),  # quiet 2-core machine: both cores
        (2, 1, 1, 1),  # one core busy with someone else's work: don't spin on it
        (2, 5, 1, 1),  # never below one
        (16, 0, 4, 4),  # a parallel sweep shares the cores
        (16, 14, 4, 2),
    ],
)
def test_default_takes_the_free_share_of_the_cores(cores, busy, jobs, expected):
    threads, why = choose_threads(None, parallel_jobs=jobs, cores=cores, busy=busy)
    assert threads == expected
    assert f"{cores} usable cores" in why


def test_a_setting_or_the_environment_decides(monkeypatch):
    assert choose_threads(3, cores=2, busy=2) == (3, "set by threads=")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(None, cores=16, busy=0) == (1, "set by OMP_NUM_THREADS")


def test_a_spinning_process_counts_as_a_busy_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores() >= 1
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize(
    ("cores", "busy", "machine", "expected"),
    [
        # /proc/loadavg counts the whole machine: a 4-core cpuset of a 128-core node meets its
        # share of that load, not all of it (before: 64 busy anywhere left it one thread).
        (4, 64, 128, 2),
        (4, 10, 128, 4),  # 0.3 of a core's load here
        (4, 100, 128, 1),  # ~3 of its 4 cores busy
        (4, 3, 4, 1),  # the whole machine: counted as it is
    ],
)
def test_a_small_share_of_a_big_machine_meets_its_share_of_the_load(cores, busy, machine, expected):
    threads, why = choose_threads(None, cores=cores, busy=busy, machine=machine)
    assert threads == expected, why
    if cores < machine:
        assert f"{cores} usable cores of the machine's {machine}" in why


def test_ddp_processes_on_a_machine_share_its_cores():
    threads, why = choose_threads(None, cores=8, busy=0, machine=8, ranks=2)
    assert threads == 4 and "shared by 2 DDP processes" in why
    assert choose_threads(None, parallel_jobs=2, cores=16, busy=0, machine=16, ranks=2)[0] == 4
    assert choose_threads(None, cores=2, busy=0, machine=2, ranks=4)[0] == 1  # never below one
    assert choose_threads(3, cores=8, busy=0, ranks=2) == (3, "set by threads=")


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
        "print(usable_cores(), choose_threads(None, busy=0)[0])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path.cwd()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
