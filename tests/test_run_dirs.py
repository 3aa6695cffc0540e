"""Run directories given as relative paths with `..` or as `~/...`: the folder the checks lock
before the run is the folder the run then writes into, whatever the spelling.

Hydra turns an output folder into an absolute path with os.path.abspath (which folds `..`
away) and does not expand `~`; normlab's own locks and checks must name the same folder, or
a run refuses itself ("another process is using this run directory").
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import assert_names, run_cli

from normlab.errors import ConfigError
from normlab.files import FolderLock, absolute_path, folder_in_use
from normlab.runner import preflight
from normlab.runner.rundir import claim_run_dir, release_folder

# One epoch of two batches, no TensorBoard or diagnostics: the cheapest real run.
TINY = (
    "data=digits",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
    "logger=none",
    "callbacks/diagnostics=none",
)


def test_one_spelling_of_a_folder_gives_one_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert absolute_path("a/../run") == tmp_path / "run"
    assert absolute_path("~/logs") == tmp_path / "home" / "logs"
    # Claimed as `work/../run` (Hydra's run.dir) and again as its absolute path (Hydra's
    # output_dir): the same folder, so the second claim is this process's own, not a refusal.
    (tmp_path / "work").mkdir()
    claim_run_dir("work/../run", resumed=False)
    try:
        claim_run_dir(tmp_path / "run", resumed=False)
        assert folder_in_use(tmp_path / "run")
    finally:
        release_folder(tmp_path / "work" / ".." / "run")
    assert not folder_in_use(tmp_path / "run")


def test_a_literal_tilde_in_hydras_output_folder_is_refused(tmp_path):
    """Hydra would create a folder named `~` in the current directory."""
    with pytest.raises(ConfigError) as err:
        preflight.check_paths("~/sweeps", None, key="hydra.sweep.dir")
    assert_names(str(err.value), "hydra.sweep.dir=~/sweeps", "does not expand ~", "$HOME")
    preflight.check_paths(tmp_path / "run", None, key="hydra.run.dir")


def test_a_folder_locked_elsewhere_is_still_refused(tmp_path):
    held = FolderLock(tmp_path / "run")
    (tmp_path / "run").mkdir()
    assert held.acquire()
    try:
        with pytest.raises(ConfigError, match="another process is using this run directory"):
            claim_run_dir(tmp_path / "x" / ".." / "run", resumed=True)
    finally:
        held.release()


@pytest.mark.slow
def test_runs_into_log_dirs_spelled_with_dots_and_tilde(tmp_path):
    """`paths.log_dir=../logs` and `paths.log_dir=~/logs`, through the real train.py."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    cases = {
        "dots": ("paths.log_dir=../logs", tmp_path / "logs"),
        # Quoted: Hydra's override grammar refuses a bare ~; in a YAML file it needs none.
        "tilde": ("paths.log_dir='~/logs'", home / "logs"),
    }

    matplotlib_dir = os.environ.get("MPLCONFIGDIR", str(Path.home() / ".cache" / "matplotlib"))

    def run(case: tuple[str, Path]):
        override, _ = case
        return run_cli(
            "train.py", *TINY, override, f"paths.data_dir={tmp_path / 'data'}",
            # matplotlib keeps its font cache under the real home: no rebuild on import
            cwd=work, env={"HOME": str(home), "MPLCONFIGDIR": matplotlib_dir},
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(cases, pool.map(run, cases.values()), strict=True))
    for name, (_, log_dir) in cases.items():
        proc = procs[name]
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        (run_dir,) = (log_dir / "runs").iterdir()
        results = json.loads((run_dir / "results.json").read_text())
        assert results["status"] == "completed", results
        assert (run_dir / "train.log").is_file() and (run_dir / "checkpoints").is_dir()
    assert not (work / "~").exists(), "a folder named ~ was created"
    assert not (work / "logs").exists()
