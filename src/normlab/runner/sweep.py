"""Hydra callback: the multirun's report (`normlab.report`) in its sweep directory.

Written once when the sweep ends. Hydra skips `on_multirun_end` when any job failed, so a
failed job writes the report itself, and from then on every job that ends rewrites it: the
last job to finish leaves a complete report whatever happened to the others.

With the joblib launcher several jobs end at once in different processes; a lock makes their
rewrites take turns, so the last writer has read every finished job's results. The lock file
lives in the temporary folder, not in the sweep directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from normlab.runner.console import in_multirun

log = logging.getLogger("normlab.report")


class SweepReport(Callback):
    """Write `summary.csv`, `summary.md` and plots into the sweep directory."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not in_multirun(config.hydra):
            return
        failed = job_return.status == JobStatus.FAILED
        # summary.md exists mid-sweep only once a failed job has written it. Asked inside the
        # lock: a job that ends while a failed job is still writing the first report would
        # find no summary.md yet, skip its rewrite, and leave itself listed as running.
        self._write(sweep_dir_of(config), only_if_started=not failed)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = self._write(Path(config.hydra.sweep.dir))
        if path is not None:
            log.info("sweep report: %s", path)

    def _write(self, sweep_dir: Path, only_if_started: bool = False) -> Path | None:
        # A report is a by-product: failing to write it must not fail a job that trained.
        try:
            with FileLock(lock_path(sweep_dir)):
                if only_if_started and not (sweep_dir / "summary.md").exists():
                    return None
                # Imported here: the report's scipy takes seconds, every run loads this
                # callback, and a mistake must be answered before that (values.py).
                from normlab.report import write_report

                return write_report(sweep_dir)
        except Exception as err:
            log.warning("could not write the sweep report in %s: %s", sweep_dir, err)
            return None


def lock_path(sweep_dir: Path) -> Path:
    """One lock per sweep directory, outside it."""
    digest = hashlib.sha1(str(sweep_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"normlab-report-{digest}.lock"


def sweep_dir_of(config: DictConfig) -> Path:
    """The sweep directory of a job: its output directory minus `hydra.sweep.subdir`.

    Derived from the job's own output directory rather than re-resolving `hydra.sweep.dir`,
    whose `${now:}` could resolve to another second in a launcher's worker process.
    """
    output_dir = Path(config.hydra.runtime.output_dir)
    depth = len(Path(str(config.hydra.sweep.subdir)).parts)
    return output_dir.parents[depth - 1]


def report_interrupted_sweep() -> None:
    """Rewrite the report of the sweep this job belongs to. A sweep stopped by Ctrl-C or
    SIGTERM ends without `on_multirun_end`; its interrupted job writes the report instead, so
    the report lists it."""
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    depth = len(Path(str(hydra_cfg.sweep.subdir)).parts)
    SweepReport()._write(output_dir.parents[depth - 1])


def leave_the_worker_pool() -> None:
    """End this joblib worker once its job has recorded itself as interrupted.

    Kept alive, the worker would take the next job the sweep had already queued (joblib
    hands out 2 x n_jobs jobs ahead), so a stopped sweep would go on training until those
    ended. The sweep's own process (basic launcher, n_jobs=1) exits by itself.
    """
    if multiprocessing.parent_process() is None:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)  # as a run stopped by SIGTERM; the parent is waiting for it to end


def forward_sigterm_to_workers() -> None:
    """SIGTERM to a sweep reaches the processes that run its jobs.

    The joblib launcher runs jobs in worker processes; killed, the parent would leave them
    training with nobody waiting for them. Here the parent passes SIGTERM on to its child
    processes (each job then records itself as interrupted, rewrites the sweep report and
    ends its worker: `leave_the_worker_pool`), waits for them, and exits with code 130; no
    queued job starts (tests/test_continue_sweep.py).
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        children = child_processes()
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while children and time.monotonic() < deadline:
            children = [pid for pid in children if alive(pid)]
            time.sleep(0.05)
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        print(f"sweep stopped by {signal.Signals(signum).name}", file=sys.stderr)
        sys.exit(130)  # as a single run stopped by SIGTERM

    signal.signal(signal.SIGTERM, stop)


def child_processes() -> list[int]:
    """Process ids whose parent is this process (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = entry.read_text().rsplit(")", 1)[1].split()
            cmdline = (entry.parent / "cmdline").read_bytes()
            # Resource trackers clean up after the workers and end with this process.
            if int(fields[1]) == os.getpid() and b"resource_tracker" not in cmdline:
                found.append(int(entry.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
