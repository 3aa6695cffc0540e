"""Checkpoints written whole or not at all, and a best checkpoint that is always the run's own.

Lightning's TorchCheckpointIO stages each checkpoint in $TMPDIR (fsspec's local transaction:
`tempfile.mkstemp()`, then `shutil.move` onto the path). Where $TMPDIR is on another disk than
the run (a cluster node's local /tmp), that move is a copy into the final path, so a run
killed meanwhile (SIGKILL, a time limit) leaves a truncated `last.ckpt`, and a full $TMPDIR
fails every save of a run whose own disk has room. `AtomicCheckpointIO` writes through
`normlab.files.atomic_open` instead (a temporary file beside the checkpoint, renamed over it
when complete, on the same disk), so the previous checkpoint stays until the new one is whole.
`ModelCheckpoint` keeps a moved run directory
resumable, and gives a run continued from another run's checkpoint (`ckpt_path=`) a best
checkpoint in its own folder.
"""

from __future__ import annotations

import io
import os
import shutil
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
        # Serialized in memory first: torch.save's zip writer turns a full disk into a bare
        # RuntimeError ("unexpected pos 64 vs 0"); a plain write raises OSError(ENOSPC), which
        # the run reports as a full disk naming the folder.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_open(path, "wb") as f:
            f.write(buffer.getbuffer())


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
            state_dict = self.adopt(state_dict, str(saved), str(self.dirpath))
        super().load_state_dict(state_dict)

    @staticmethod
    def adopt(state: dict[str, Any], saved: str, here: str) -> dict[str, Any]:
        """The callback's state from folder `saved`, for this run's folder `here`.

        A moved run finds its best checkpoint under `here`. A new run started from another
        run's checkpoint (`ckpt_path=`) does not: that file stays in the other run's folder. It
        is copied in, so the best this run tests (the restored one, unless an epoch beats it)
        is a file of its own; if it no longer exists anywhere, the best is forgotten and this
        run's first epoch becomes its best.
        """
        moved = reroot(state, saved, here)
        best_then, best_here = state.get("best_model_path"), moved.get("best_model_path")
        if not best_then or not best_here or os.path.exists(best_here):
            return moved
        if os.path.isfile(best_then):
            Path(best_here).parent.mkdir(parents=True, exist_ok=True)
            with open(best_then, "rb") as source, atomic_open(Path(best_here), "wb") as copy:
                shutil.copyfileobj(source, copy)
            return moved
        forgotten = {"best_model_path": "", "best_model_score": None, "best_k_models": {}}
        kept = {k: v for k, v in moved.items() if k != "kth_value"}  # Lightning's initial one
        return {**kept, **forgotten, "kth_best_model_path": ""}


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
