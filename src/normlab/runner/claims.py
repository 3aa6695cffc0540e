"""One process per run directory: a run (or sweep) folder is created and locked by the
process that writes it, and a new run never writes into a folder that holds one."""

from __future__ import annotations

import os
import re
from pathlib import Path

from normlab.errors import ConfigError
from normlab.files import FolderLock, absolute_path, reraise_disk_full
from normlab.runner.commands import command

_claims: dict[Path, FolderLock] = {}


def holds_run(folder: Path) -> bool:
    """Whether `folder` already holds a training run's results or checkpoints."""
    return (folder / "results.json").exists() or (folder / "checkpoints").is_dir()


def secondary_rank() -> bool:
    """A process Lightning (or a cluster) started for DDP rank > 0: it shares rank 0's folder."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in RANK_VARIABLES)


RANK_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID")


def lock_folder(folder: str | Path, what: str, key: str) -> None:
    """Hold `folder`'s lock until this process ends (or `release_folder`); ConfigError when
    another process holds it."""
    folder = absolute_path(folder)
    if folder in _claims:
        return
    with reraise_disk_full(folder.parent, f"could not create {folder.name}"):
        folder.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(folder)
    if not lock.acquire():
        raise ConfigError(
            f"{key}={folder}: another process is using this {what} right now (it holds the "
            "folder's lock). Wait for it to finish, or stop it first; two processes writing "
            "one folder would overwrite each other's checkpoints and results."
        )
    _claims[folder] = lock


def release_folder(folder: str | Path) -> None:
    """Let go of `folder`'s lock, if this process holds it."""
    lock = _claims.pop(absolute_path(folder), None)
    if lock is not None:
        lock.release()


def claim_run_dir(run_dir: str | Path, resumed: bool, key: str = "hydra.run.dir") -> None:
    """Create and lock the run directory for this process.

    A new run refuses a folder that already holds a run (resume= is how to continue one); two
    processes never share one run directory (two resume= of one run: the second refuses).
    """
    if secondary_rank():
        return
    run_dir = absolute_path(run_dir)

    def refuse_existing() -> None:
        if not resumed and holds_run(run_dir):
            raise ConfigError(
                f"{key}={run_dir} already holds a run (results.json or checkpoints/), and a new "
                f"run would overwrite it. Continue it with {command('train.py', resume=run_dir)}, "
                f"re-test it with {command('eval.py', run=run_dir)}, or give the "
                "new run another folder (leave hydra.run.dir out for a fresh one)."
            )

    refuse_existing()
    lock_folder(run_dir, "run directory", "resume" if resumed else key)
    try:
        refuse_existing()  # created by another process between the check and the lock
    except ConfigError:
        release_folder(run_dir)
        raise
    # Temporary files of writes a crash cut short (normlab.files.atomic_open): with the lock
    # held, no other process is writing them.
    for stale in (*run_dir.glob(".*.tmp"), *run_dir.glob("checkpoints/.*.tmp")):
        if re.fullmatch(r"\..+\.[0-9a-f]{8}\.tmp", stale.name):
            stale.unlink(missing_ok=True)
