"""Hydra callback: keep a multirun's report (`normlab.report`) up to date while it runs.

Hydra calls `on_multirun_end` only when every job succeeded: one failed job and the sweep
ends with an exception instead. So the report is rewritten after *every* job (`on_job_end`,
which Hydra calls for failed jobs too), and once more when the sweep ends normally. The last
job to finish always leaves a complete report, whatever happened to the others.

With the joblib launcher several jobs end at once in different processes; a lock file makes
their rewrites take turns, so the last writer has read every finished job's results.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from normlab.report import write_report

log = logging.getLogger("normlab.report")


class SweepReport(Callback):
    """Write `summary.csv`, `summary.md` and plots into the sweep directory.

    Args:
        plots_after_each_job: also redraw the PNGs after each job (about a second each), not
            only the tables; without it a sweep whose last job fails keeps plots of an earlier
            state.
    """

    def __init__(self, plots_after_each_job: bool = True) -> None:
        self.plots_after_each_job = plots_after_each_job

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        self._write(sweep_dir_of(config), plots=self.plots_after_each_job)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = self._write(Path(config.hydra.sweep.dir), plots=True)
        if path is not None:
            log.info("sweep report: %s", path)

    def _write(self, sweep_dir: Path, plots: bool) -> Path | None:
        # A report is a by-product: failing to write it must not fail a job that trained.
        try:
            with _locked(sweep_dir / ".report.lock"):
                return write_report(sweep_dir, plots=plots)
        except Exception as err:
            log.warning("could not write the sweep report in %s: %s", sweep_dir, err)
            return None


def sweep_dir_of(config: DictConfig) -> Path:
    """The sweep directory of a job: its output directory minus `hydra.sweep.subdir`.

    Derived from the job's own output directory rather than re-resolving `hydra.sweep.dir`,
    whose `${now:}` could resolve to another second in a launcher's worker process.
    """
    output_dir = Path(config.hydra.runtime.output_dir)
    depth = len(Path(str(config.hydra.sweep.subdir)).parts)
    return output_dir.parents[depth - 1]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; on_multirun_end still rewrites in full
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
