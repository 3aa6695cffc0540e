"""One short real training run (the real `train.py` command line), shared by the diagnostics
and evaluation tests: training once keeps their share of the suite's time small; and a real
one-step Lightning checkpoint of any model, for the tests that need a checkpoint file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import compose_config, run_train
from omegaconf import DictConfig

from normlab.data import BatchTransform, TensorBatchLoader
from normlab.runner.build import build_module, build_network

BATCH_SIZE, TRAIN_SIZE, EPOCHS, EVERY_N_STEPS = 32, 640, 2, 10
STEPS_PER_EPOCH = TRAIN_SIZE // BATCH_SIZE
OVERRIDES = (
    "data=digits",
    "model=cnn_bn_dropout",
    f"trainer.max_epochs={EPOCHS}",
    f"data.batch_size={BATCH_SIZE}",
    f"data.train_size={TRAIN_SIZE}",
    # Validation and test in several batches: the statistics must be merged across them.
    "data.eval_batch_size=64",
    f"callbacks.diagnostics.every_n_steps={EVERY_N_STEPS}",
)


@dataclass
class FinishedRun:
    run_dir: Path
    stdout: str
    results: dict


_finished: dict[str, FinishedRun] = {}


def digits_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """Train once per test session; later calls get the same run."""
    if "digits" not in _finished:
        run_dir = tmp_path_factory.mktemp("finished") / "run"
        proc, results = run_train(*OVERRIDES, run_dir=run_dir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _finished["digits"] = FinishedRun(run_dir, proc.stdout + proc.stderr, results)
    return _finished["digits"]


def write_lightning_checkpoint(path: Path, model: str) -> DictConfig:
    """A real checkpoint of `model` (one optimizer step of Lightning, then save_checkpoint) at
    `path`; returns the composed config of `model=<model> data=digits` it was built from."""
    cfg = compose_config([f"model={model}", "data=digits", "logger=none"])
    module = build_module(cfg, build_network(cfg.model))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    loader = TensorBatchLoader(
        images, torch.randint(0, 10, (8,)), 4, BatchTransform((0.5,) * 3, (0.5,) * 3), train=True
    )
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    trainer.save_checkpoint(path)
    return cfg
