"""How many threads torch uses for one run: a count that depends on the command and the
machine only, so the same command gives the same numbers however busy the machine is.

A run takes the cores it may use (its CPU affinity and any cgroup CPU quota) and shares them
with the other jobs of a parallel sweep and the other DDP processes on its machine: two torch
jobs that each took every core would spin against each other and run 3-30x slower. It does
not follow the momentary load: the thread count changes the order of floating-point sums,
so a count that followed the load made the same command and seed give other weights on a
busy machine. When other processes keep cores busy, the run says so (`load_warning`) and
suggests `threads=<n>`. `threads=<n>` or the OMP_NUM_THREADS environment variable decide
instead; a resumed run keeps the count it started with.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator, Mapping
from typing import Any

from normlab.runner.console import in_multirun

# Set beside OMP_NUM_THREADS by `threads_kept_for_ranks`: the other DDP ranks then know the
# variable holds rank 0's choice, not a user's setting, and say so.
RANK_THREADS = "NORMLAB_RANK_THREADS"


def usable_cores() -> int:
    """Cores this process may use: its affinity mask (a container's cpuset, taskset) and its
    cgroup CPU quota (`docker --cpus`, a Kubernetes limit), whichever is smaller. joblib's
    count, so that a joblib sweep's `n_jobs=-1` and its workers' threads use the same one."""
    try:
        from joblib import cpu_count
    except ImportError:
        return affinity_cores()
    return max(1, cpu_count())


def affinity_cores() -> int:
    """Cores in this process's affinity mask (all of them where there is none: macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def busy_cores(samples: int = 5, interval_s: float = 0.02) -> int:
    """Cores other processes keep busy right now, on the whole machine: the kernel's count of
    runnable threads (/proc/loadavg), minus this one, median of a few samples. The load
    average would count the previous job of an in-process sweep as someone else's work."""
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
    setting: int | None,
    parallel_jobs: int = 1,
    cores: int | None = None,
    ranks: int = 1,
) -> tuple[int, str]:
    """(threads, why) for one process of a run.

    `parallel_jobs` runs of a sweep, each of `ranks` DDP processes on this machine, share the
    `cores` this process may use (measured when not given). The count depends only on the
    command and the machine, never on what else is running: thread count changes the order
    of floating-point sums, so a count that followed the load would make the same command
    give different numbers on a busy machine. `load_warning` says when the load will slow it.
    """
    if setting is not None:
        return setting, "set by threads="
    if env := os.environ.get("OMP_NUM_THREADS"):
        if env == os.environ.get(RANK_THREADS) and env.isdigit():
            return max(1, int(env)), f"chosen by the first of {ranks} DDP processes"
        try:
            return max(1, int(env)), "set by OMP_NUM_THREADS"
        except ValueError:
            pass
    cores = usable_cores() if cores is None else cores
    sharers = max(1, parallel_jobs) * max(1, ranks)
    reasons = [f"{cores} usable cores"]
    if parallel_jobs > 1:
        reasons.append(f"shared by {parallel_jobs} parallel jobs")
    if ranks > 1:
        reasons.append(f"shared by {ranks} DDP processes")
    return max(1, cores // sharers), ", ".join(reasons)


def load_warning(
    threads: int, cores: int | None = None, busy: int | None = None, machine: int | None = None
) -> str | None:
    """What to say when other processes keep busy cores this run's `threads` need.

    torch's OpenMP threads spin while they wait for each other: on a core another process holds
    a run can go several times slower. The count stays as chosen (results would otherwise
    depend on the load); the user may pick a smaller one, for this run and its reruns.
    """
    cores = usable_cores() if cores is None else cores
    machine = max(cores, (os.cpu_count() or cores) if machine is None else machine)
    busy = busy_cores() if busy is None else busy
    # /proc/loadavg counts runnable threads on the whole machine. With fewer cores than the
    # machine (a cpuset, a quota) only this run's share of that load competes for its cores.
    busy_here = round(busy * cores / machine) if cores < machine else busy
    if threads <= 1 or threads + busy_here <= cores:
        return None
    free = max(1, cores - busy_here)
    return (
        f"other processes keep {min(busy_here, cores)} of this run's {cores} cores busy"
        f"{f' (load {busy_here})' if busy_here > cores else ''}, and its "
        f"{threads} torch threads will wait on them (often several times slower). The count "
        "does not follow the load, so that the same command gives the same numbers; for "
        f"speed now, set threads={free} (results then match other runs with threads={free})."
    )


def parallel_jobs(hydra_cfg: Mapping[str, Any] | None) -> int:
    """How many jobs of this run's sweep run at once: the joblib launcher's `n_jobs` (-1 = one
    per core, -2 = all but one, as joblib counts), else 1 (one job at a time, or other
    machines' cores under SLURM)."""
    if hydra_cfg is None or not in_multirun(hydra_cfg):
        return 1
    launcher = hydra_cfg.get("launcher") or {}
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    return max(1, n_jobs if n_jobs > 0 else usable_cores() + 1 + n_jobs)


def ddp_processes(trainer_cfg: Mapping[str, Any] | None) -> int:
    """How many DDP processes the Trainer config `trainer_cfg` starts on this machine (one per
    device: `trainer=ddp_cpu` starts 2), each of which takes its share of the cores; 1 without
    DDP."""
    if not trainer_cfg:
        return 1
    strategy = trainer_cfg.get("strategy") or "auto"
    if isinstance(strategy, Mapping):  # a strategy object's config: {_target_: ...DDPStrategy}
        strategy = str(strategy.get("_target_", "")).rsplit(".", 1)[-1].lower()
    strategy = str(strategy).lower()
    # Lightning's "auto" is DDP as soon as there is more than one device.
    if not (strategy == "auto" or strategy.startswith("ddp")):
        return 1
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str):
        if "," in devices:  # "0,1": device indices
            return max(1, len([d for d in devices.split(",") if d.strip()]))
        if devices.strip().lstrip("-").isdigit():
            devices = int(devices)
    elif not isinstance(devices, int) and hasattr(devices, "__len__"):  # [0, 1]: indices
        return max(1, len(devices))
    if isinstance(devices, int) and devices > 0:
        return devices
    # "auto" or -1: every GPU there is; one process on a CPU.
    accelerator = str(trainer_cfg.get("accelerator") or "auto").lower()
    return max(1, gpu_count()) if accelerator in ("gpu", "cuda", "auto") else 1


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def threads_for_run(
    setting: int | None, hydra_cfg: Mapping[str, Any] | None, ranks: int = 1
) -> tuple[int, str]:
    """`choose_threads` for a run of Hydra config `hydra_cfg` (None outside Hydra) whose
    Trainer starts `ranks` DDP processes on this machine.

    joblib's worker processes inherit an OMP_NUM_THREADS that joblib itself set (cores // n_jobs)
    when the user had not: that one is not a user's setting, so the choice is made here (and
    says why).
    """
    jobs = parallel_jobs(hydra_cfg)
    env = os.environ.get("OMP_NUM_THREADS")
    if setting is None and jobs > 1 and env == str(max(1, usable_cores() // jobs)):
        del os.environ["OMP_NUM_THREADS"]
        try:
            return choose_threads(None, jobs, ranks=ranks)
        finally:
            os.environ["OMP_NUM_THREADS"] = env
    return choose_threads(setting, jobs, ranks=ranks)


@contextlib.contextmanager
def threads_kept_for_ranks(threads: int, ranks: int) -> Iterator[None]:
    """Under DDP, keep `threads` for every rank while the block runs.

    Lightning's DDP launchers set torch's threads to cores // processes when OMP_NUM_THREADS
    is unset, replacing this choice (a `threads=` setting included), and the ranks they start
    inherit this process's environment. Set, the variable keeps the choice in both; it is
    restored afterwards, so the next job of an in-process sweep does not take it for a user's
    setting.
    """
    if ranks <= 1:
        yield
        return
    previous = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", RANK_THREADS)}
    os.environ["OMP_NUM_THREADS"] = os.environ[RANK_THREADS] = str(threads)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
