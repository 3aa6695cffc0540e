"""Checkpoints written whole or not at all.

Lightning's own writer opens `last.ckpt` and writes into it: a run killed at that moment
(SIGKILL, a cluster's time limit) leaves a truncated file and `resume=` has nothing to resume
from. This one writes through `normlab.files.atomic_open`, so the previous checkpoint stays
until the new one is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

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
