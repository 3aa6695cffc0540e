"""How many threads torch uses for one run, chosen for the cores it can actually have.

torch's default, one OpenMP thread per core, suits a quiet machine and big tensors. On a
shared machine its threads spin while they wait for a core another process holds, and the
small convolutions of a CIFAR-sized CNN gain little from splitting: there it makes a run many
times slower. So by default a run takes the cores it may use (its CPU affinity), shares them
with the other jobs of a parallel sweep, and leaves out the cores other processes keep busy
(the kernel's count of runnable threads). `threads=<n>` or the OMP_NUM_THREADS environment variable
decide instead.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping
from typing import Any

from hydra.types import RunMode


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask: a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def busy_cores(samples: int = 5, interval_s: float = 0.02) -> int:
    """Cores other processes keep busy right now: the kernel's count of runnable threads
    (/proc/loadavg), minus this one, median of a few samples. The load average would count
    the previous job of an in-process sweep as someone else's work."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            try:
                return int(os.getloadavg()[0] + 0.5)
            except (AttributeError, OSError):
                return 0
        counts.append(running - 1)
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0, statistics.median_low(counts))


def choose_threads(
    setting: int | None, parallel_jobs: int = 1, cores: int | None = None, busy: int | None = None
) -> tuple[int, str]:
    """(threads, why) for one run; `parallel_jobs` runs share the machine's cores."""
    if setting is not None:
        return setting, "set by threads="
    if env := os.environ.get("OMP_NUM_THREADS"):
        try:
            return max(1, int(env)), "set by OMP_NUM_THREADS"
        except ValueError:
            pass
    cores = usable_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    share = max(1, cores // max(1, parallel_jobs))
    free = max(1, cores - busy)
    threads = min(share, free)
    reasons = [f"{cores} usable cores"]
    if parallel_jobs > 1:
        reasons.append(f"shared by {parallel_jobs} parallel jobs")
    if busy:
        reasons.append(f"{busy} busy with other processes")
    return threads, ", ".join(reasons)


def parallel_jobs(hydra_cfg: Mapping[str, Any] | None) -> int:
    """How many jobs of this run's sweep run at once: the joblib launcher's `n_jobs` (-1 = one
    per core, -2 = all but one, as joblib counts), else 1 (one job at a time, or other
    machines' cores under SLURM)."""
    if hydra_cfg is None or hydra_cfg.get("mode") != RunMode.MULTIRUN:
        return 1
    launcher = hydra_cfg.get("launcher") or {}
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    return max(1, n_jobs if n_jobs > 0 else usable_cores() + 1 + n_jobs)


def threads_for_run(setting: int | None, hydra_cfg: Mapping[str, Any] | None) -> tuple[int, str]:
    """`choose_threads` for a run of Hydra config `hydra_cfg` (None outside Hydra).

    joblib's worker processes inherit an OMP_NUM_THREADS that joblib itself set (cores // n_jobs)
    when the user had not: that one is not a user's setting, so the choice is made here, with
    the cores other processes keep busy taken into account.
    """
    jobs = parallel_jobs(hydra_cfg)
    env = os.environ.get("OMP_NUM_THREADS")
    if setting is None and jobs > 1 and env == str(max(1, joblib_cpu_count() // jobs)):
        del os.environ["OMP_NUM_THREADS"]
        try:
            return choose_threads(None, jobs)
        finally:
            os.environ["OMP_NUM_THREADS"] = env
    return choose_threads(setting, jobs)


def joblib_cpu_count() -> int:
    try:
        from joblib import cpu_count
    except ImportError:
        return os.cpu_count() or 1
    return cpu_count()
