"""notebooks/lesson.ipynb executed headless (nbclient), as a reader would run it top to bottom,
with one epoch per model on digits; and the committed copy, executed with its outputs."""

from __future__ import annotations

import os
import shutil

import nbformat
import pytest
from conftest import CONF, REPO
from nbclient import NotebookClient

NOTEBOOK = REPO / "notebooks" / "lesson.ipynb"


def test_notebook_is_committed_with_its_outputs():
    """Where the repository is browsed, the notebook shows what it printed and plotted: every
    code cell ran, in order, without an error, and the plots are there."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs)
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "same mask: True | same values: True" in text
    assert "Traceback" not in text and "srun" not in text


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
    client.execute()  # raises CellExecutionError on the first cell that fails

    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert not [out for out in outputs if out.output_type == "error"]
    assert "train mode: batchnorm() vs nn.BatchNorm2d: max abs difference" in text
    assert "eval mode:  ScratchBatchNorm2d vs nn.BatchNorm2d: max abs difference" in text
    assert "same mask: True | same values: True" in text
    assert any("image/png" in out.get("data", {}) for out in outputs), "the plots, inline"
    runs = sorted((project / "logs" / "runs").iterdir())
    assert len(runs) == 4 and all((run / "results.json").exists() for run in runs)
