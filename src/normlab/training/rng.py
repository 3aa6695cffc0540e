"""Random number generator states in checkpoints, so a resumed run is the same run.

Lightning restores weights, optimizer, schedule and loops from a checkpoint, but not the
global generators: a resumed run would draw different dropout masks from the epoch it
resumes at, and end with different weights. This callback saves the torch (CPU and CUDA),
numpy and Python states with every checkpoint and puts them back when training resumes.
(Batch order and augmentation do not need it: `TensorBatchLoader` seeds them by
(seed, epoch).)

Under DDP only rank 0's states are saved. Every rank is seeded alike and draws the same
number of values per step (equal shards, same network), so all ranks hold the same states.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGState(L.Callback):
    def __init__(self) -> None:
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied at on_train_start, after the sanity-check validation Lightning runs on
        # resume and before the first training batch: exactly where the uninterrupted run
        # stood when it wrote the checkpoint.
        self._restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restore is not None:
            set_rng_states(self._restore)
            self._restore = None


def collect_rng_states() -> dict[str, Any]:
    """Every global generator's state, as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        # A run resumed on fewer GPUs restores the devices it has.
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)
