"""SLURM: the resources `hydra/launcher=slurm` asks for, and which job produced a run.

The launcher config (conf/hydra/launcher/slurm.yaml) reads its GPU, CPU and memory requests
from the trainer through the resolvers below (registered by `import normlab`), so a CPU
trainer asks for no GPU a CPU partition would not have.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# Per task (one task per device): what a GPU rank and a CPU rank need by default. Override
# with hydra.launcher.cpus_per_task=... / hydra.launcher.mem_gb=... (the node's total).
GPU_TASK = {"cpus": 8, "mem_gb": 32}
CPU_TASK = {"cpus": 2, "mem_gb": 4}
GPU_ACCELERATORS = ("gpu", "cuda")


def uses_gpus(accelerator: Any) -> bool:
    """Whether `trainer.accelerator` asks for GPUs. `auto` does not: under SLURM, choose
    trainer=gpu or trainer=ddp to be given GPUs."""
    return str(accelerator).lower() in GPU_ACCELERATORS


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """`--gpus-per-node`: the trainer's devices on a GPU trainer, none otherwise."""
    return devices if uses_gpus(accelerator) else None


def cpus_per_task(accelerator: Any, threads: Any) -> int:
    """`--cpus-per-task`: `threads=N` when set, else what one rank of this trainer needs."""
    if isinstance(threads, int) and threads > 0:
        return threads
    return (GPU_TASK if uses_gpus(accelerator) else CPU_TASK)["cpus"]


def mem_gb(accelerator: Any, tasks_per_node: Any) -> int:
    """`--mem` in GB (SLURM's memory is per node): one task's share times the tasks."""
    tasks = tasks_per_node if isinstance(tasks_per_node, int) and tasks_per_node > 0 else 1
    return (GPU_TASK if uses_gpus(accelerator) else CPU_TASK)["mem_gb"] * tasks


def job_record(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The SLURM job a run ran in, for results.json: `slurm_job_id` as squeue, scancel and
    sacct name it (`<array job>_<index>` for a job of an array, as submitit submits sweeps)
    and `slurm_array_index`; empty outside SLURM."""
    env = os.environ if environ is None else environ
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        return {}
    array_job, index = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and index is not None and index.isdigit():
        return {"slurm_job_id": f"{array_job}_{index}", "slurm_array_index": int(index)}
    return {"slurm_job_id": job_id}
