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
