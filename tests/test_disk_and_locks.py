"""Faults a long study meets for real: a disk that fills up while a run trains, and two
`train.py resume=` of one run started at once."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import run_cli, start_train

from normlab.files import folder_in_use

pytestmark = pytest.mark.slow

RUN = ("data=digits", "data.train_size=600", "trainer.max_epochs=8")


def wait_until(condition, proc: subprocess.Popen, what: str, deadline_s: float = 900) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert proc.poll() is None, f"ended before {what}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 20 MB tmpfs: a real file system that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_up_mid_run_stops_it_with_one_message_and_it_resumes(
    tmp_path, small_disk
):
    run_dir = small_disk / "run"
    proc = start_train(*RUN, f"hydra.run.dir={run_dir}", f"paths.data_dir={tmp_path}", cwd=tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_until(last.exists, proc, "the first checkpoint")
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    subprocess.run(["fallocate", "-l", str(free - 4096), str(filler)], check=True)
    out, err = proc.communicate(timeout=900)

    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    assert f"no space left on the device holding {run_dir}" in err
    assert "Traceback" not in err, err[-3000:]
    checkpoint = torch.load(last, weights_only=True)  # the last whole checkpoint survives
    assert checkpoint["epoch"] >= 0
    assert not list(run_dir.rglob(".*.tmp")), "a half-written file was left behind"

    filler.unlink()
    resumed = run_cli(
        "train.py", f"resume={run_dir}", f"paths.data_dir={tmp_path}", cwd=tmp_path, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs_completed"] == 8


def test_two_resumes_of_one_run_started_together_train_it_once(tmp_path):
    """While one `resume=` trains the run (many epochs left), a second is refused by the
    run's lock; the first is then stopped with SIGTERM and records itself as interrupted."""
    run_dir = tmp_path / "run"
    long_run = ("data=digits", "data.train_size=600", "trainer.max_epochs=300")
    victim = start_train(*long_run, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_until((run_dir / "checkpoints" / "last.ckpt").exists, victim, "the first checkpoint")
    victim.send_signal(signal.SIGKILL)
    victim.communicate()

    first = start_train(f"resume={run_dir}", cwd=tmp_path)
    wait_until(lambda: folder_in_use(run_dir), first, "the first resume holding the run")
    second = run_cli("train.py", f"resume={run_dir}", cwd=tmp_path, timeout=900)
    assert second.returncode == 1
    assert "another process is using this run directory" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.poll() is None, "the first resume ended before the second was refused"
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=900)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and results["epochs_completed"] >= 1
