"""Checkpoints written whole or not at all.

Lightning's own writer opens `last.ckpt` and writes into it: a run killed at that moment
(SIGKILL, a cluster's time limit) leaves a truncated file and `resume=` has nothing to resume
from. This one writes through `normlab.files.atomic_open`, so the previous checkpoint stays
until the new one is complete. `ModelCheckpoint` keeps a moved run directory resumable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import callbacks

from normlab.files import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, for a run directory that may be moved or copied.

    Lightning saves the absolute paths of the best checkpoints and, loading into a callback
    whose folder differs (the run directory was moved), keeps the old best path and drops its
    score: the next epoch then replaces `best.ckpt` whatever its accuracy. Here the saved paths
    are re-rooted onto the current folder first, so a moved run resumes exactly as it would
    have in place. Same class name as Lightning's, so checkpoints keep their state keys.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and os.path.normpath(saved) != os.path.normpath(self.dirpath):
            state_dict = reroot(state_dict, str(saved), str(self.dirpath))
        super().load_state_dict(state_dict)


def reroot(state: Any, old: str, new: str) -> Any:
    """`state` with every path inside folder `old` (strings and dict keys) moved into `new`."""
    old = os.path.normpath(old)

    def move(value: Any) -> Any:
        if isinstance(value, str):
            path = os.path.normpath(value) if value else value
            if path == old:
                return new
            if path and path.startswith(old + os.sep):
                return os.path.join(new, os.path.relpath(path, old))
            return value
        if isinstance(value, dict):
            return {move(k): move(v) for k, v in value.items()}
        return value

    return move(state)
