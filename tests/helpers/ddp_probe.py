"""A Lightning callback the DDP test adds from the command line (`+callbacks.probe=...`):
each rank writes down which training images it was given in the first epoch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch


def image_digest(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.contiguous().numpy().tobytes()).hexdigest()


class ShardProbe(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.digests: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch > 0:
            return
        images, _ = batch
        transform = trainer.datamodule.train_transform
        mean = torch.tensor(transform.mean).view(1, -1, 1, 1)
        std = torch.tensor(transform.std).view(1, -1, 1, 1)
        # Undo the normalization to get the stored uint8 pixels back (exact after rounding).
        pixels = ((images.cpu() * std + mean) * 255).round().to(torch.uint8)
        self.digests += [image_digest(p) for p in pixels]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            record = {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "digests": self.digests,
            }
            path = self.out_dir / f"shard_rank{trainer.global_rank}.json"
            path.write_text(json.dumps(record))
