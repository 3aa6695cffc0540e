"""The default thread count: the cores a run may use, shared by parallel jobs, minus the
cores other processes keep busy; a setting or OMP_NUM_THREADS decides instead."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from normlab.runner.threads import busy_cores, choose_threads


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
