"""One short real training run (the real `train.py` command line), shared by the diagnostics
and evaluation tests: training once keeps their share of the suite's time small."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_train

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
