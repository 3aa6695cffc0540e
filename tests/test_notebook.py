"""notebooks/lesson.ipynb executed headless (nbclient), as a reader would run it top to bottom,
with one epoch per model on digits so it finishes in well under two minutes."""

from __future__ import annotations

import os
import shutil
import time

import nbformat
import pytest
from conftest import CONF, REPO
from nbclient import NotebookClient

NOTEBOOK = REPO / "notebooks" / "lesson.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_lesson_notebook_runs_headless(tmp_path, monkeypatch):
    # A copy of the project's configs: the notebook's runs land in tmp_path/project/logs.
    project = tmp_path / "project"
    shutil.copytree(CONF, project / "conf")
    (project / "notebooks").mkdir()
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))  # this checkout
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("NORMLAB_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("NORMLAB_NOTEBOOK_DATA", "digits")
    monkeypatch.delenv("NORMLAB_CONFIG_DIR", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(project / "notebooks")}},
    )
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first cell that fails
    elapsed = time.perf_counter() - started

    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert not [out for out in outputs if out.output_type == "error"]
    assert "train mode: batchnorm() vs nn.BatchNorm2d: max abs difference" in text
    assert "eval mode:  ScratchBatchNorm2d vs nn.BatchNorm2d: max abs difference" in text
    assert "same mask: True | same values: True" in text
    assert any("image/png" in out.get("data", {}) for out in outputs), "the plots, inline"
    runs = sorted((project / "logs" / "runs").iterdir())
    assert len(runs) == 4 and all((run / "results.json").exists() for run in runs)
    assert elapsed < 120, f"the notebook took {elapsed:.0f} s"
