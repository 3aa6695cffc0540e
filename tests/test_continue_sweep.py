"""`python train.py resume=<sweep dir>`: a sweep stopped by SIGKILL or SIGTERM continues, and
every job ends with the numbers and weights of the same sweep run without interruption."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, run_multirun

pytestmark = pytest.mark.slow

SWEEP = ("data=digits", "model=cnn_bn_dropout", "trainer.max_epochs=3", "data.batch_size=16")
SEEDS = "seed=0,1,2"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("whole") / "sweep"
    proc = run_multirun(*SWEEP, SEEDS, sweep_dir=sweep_dir, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


def start_sweep(sweep_dir: Path, *extra: str) -> subprocess.Popen:
    """The sweep in its own session, so that the test can stop it and everything it started."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "train.py"), "-m", f"hydra.sweep.dir={sweep_dir}"]
    command += [f"paths.data_dir={sweep_dir.parent / 'data'}", *SWEEP, SEEDS, *extra]
    return subprocess.Popen(
        command,
        cwd=sweep_dir.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(paths: list[Path], proc: subprocess.Popen, deadline_s: float = 900) -> None:
    """Until every path exists (a job's first checkpoint): the moment to stop the sweep."""
    deadline = time.monotonic() + deadline_s
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, f"the sweep ended first: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"never appeared: {paths}"
        time.sleep(0.05)


def session_processes(session: int) -> list[int]:
    """Processes still alive in a session (the sweep's workers, if any were left)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def fingerprint(job_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(job_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(job_dir.rglob("*"))
        if p.is_file()
    }


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]


def assert_same_jobs(continued: Path, whole: Path) -> None:
    for job in ("0", "1", "2"):
        mine = json.loads((continued / job / "results.json").read_text())
        theirs = json.loads((whole / job / "results.json").read_text())
        assert mine["status"] == theirs["status"] == "completed", (job, mine.get("error"))
        assert defining(mine["overrides"]) == defining(theirs["overrides"])
        assert untimed(mine["history"]) == untimed(theirs["history"]), job
        assert mine["test_acc"] == theirs["test_acc"], job
        weights = [
            torch.load(d / job / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
            for d in (continued, whole)
        ]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1]), job


def defining(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("paths.")]  # each test has its own data


def continue_sweep(sweep_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", f"resume={sweep_dir}", *extra, cwd=sweep_dir.parent, timeout=900)


def test_a_killed_sweep_continues_to_the_numbers_of_an_uninterrupted_one(tmp_path, uninterrupted):
    """SIGKILL (a closed laptop, an out-of-memory kill) while job 1 trains: job 0 is kept
    untouched, job 1 continues from its last checkpoint, job 2 runs."""
    sweep_dir = tmp_path / "sweep"
    proc = start_sweep(sweep_dir)
    wait_for([sweep_dir / "1" / "checkpoints" / "last.ckpt"], proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((sweep_dir / "1" / "results.json").read_text())["status"] == "running"
    assert not (sweep_dir / "2").exists()
    finished = fingerprint(sweep_dir / "0")

    done = continue_sweep(sweep_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "#0" in done.stdout and "kept as it was" in done.stdout
    assert fingerprint(sweep_dir / "0") == finished, "a finished job's files were rewritten"
    assert_same_jobs(sweep_dir, uninterrupted)
    markdown = (sweep_dir / "summary.md").read_text()
    assert "3 jobs in 1 configurations: 3 completed." in markdown


def test_sigterm_to_a_joblib_sweep_leaves_no_worker_and_the_sweep_continues(
    tmp_path, uninterrupted
):
    sweep_dir = tmp_path / "sweep"
    proc = start_sweep(sweep_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    wait_for([sweep_dir / j / "checkpoints" / "last.ckpt" for j in ("0", "1")], proc)
    stopped_at = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=600) != 0
    # joblib had already handed out job 2; before, a worker freed by its interrupted job
    # started it, and the stopped sweep trained on until it ended.
    started = {
        record.parent.parent.name: record.stat().st_mtime
        for record in sweep_dir.glob("*/.hydra/overrides.yaml")  # written as a job starts
    }
    assert started and all(t <= stopped_at for t in started.values()), (stopped_at, started)
    # joblib's workers and loky's resource tracker exit just after the sweep: give them a
    # bounded moment, then none may be left.
    deadline = time.monotonic() + 300
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_processes(proc.pid) == [], "a worker outlived the sweep"
    statuses = {
        j: json.loads((sweep_dir / j / "results.json").read_text())["status"]
        for j in ("0", "1")
        if (sweep_dir / j / "results.json").exists()
    }
    assert "interrupted" in statuses.values(), statuses

    done = continue_sweep(sweep_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_jobs(sweep_dir, uninterrupted)


def test_what_cannot_be_continued_is_one_paragraph(tmp_path, uninterrupted):
    # A changed setting would make the jobs another study.
    changed = continue_sweep(uninterrupted, "optimizer.lr=0.5")
    assert changed.returncode == 1
    assert "optimizer.lr=0.5 would change its jobs" in changed.stderr
    assert "Traceback" not in changed.stderr
    # A sweep whose jobs this checkout's configs would build differently.
    other = tmp_path / "other"
    subprocess.run(["cp", "-r", str(uninterrupted), str(other)], check=True)
    config = other / "0" / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("momentum: 0.9", "momentum: 0.5"))
    refused = continue_sweep(other)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "job 0 was configured differently" in refused.stderr
    assert "optimizer.momentum" in refused.stderr
    # A folder that is neither a run nor a sweep.
    (tmp_path / "empty").mkdir()
    neither = continue_sweep(tmp_path / "empty")
    assert neither.returncode == 1 and "Traceback" not in neither.stderr
    assert "resume=" in neither.stderr and "sweep" in neither.stderr
