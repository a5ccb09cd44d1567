"""Every colab/*.ipynb runs top to bottom (small settings) and is committed without outputs."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests import train_helpers as th

NOTEBOOKS = sorted(glob.glob(os.path.join(th.REPO_ROOT, "colab", "*.ipynb")))


def test_there_are_notebooks():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {"encoding_gallery.ipynb", "train_and_extend.ipynb", "results_explorer.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  for number, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, f"{path} cell {number} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_runs_top_to_bottom(path, tmp_path, monkeypatch):
  # The kernel inherits this environment: small settings, a scratch work directory,
  # no display, the repository's code first on the path.
  monkeypatch.setenv("ROPE_LAB_NOTEBOOK_SIZE", "ci")
  monkeypatch.setenv("ROPE_LAB_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  for name, value in th.subprocess_env().items():
    if name in ("PYTHONPATH", "JAX_PLATFORMS", "XLA_FLAGS"):
      monkeypatch.setenv(name, value)
  notebook = nbformat.read(path, as_version=4)
  client = NotebookClient(notebook, timeout=240, kernel_name="python3",
                          resources={"metadata": {"path": th.REPO_ROOT}})
  client.execute()  # raises CellExecutionError, naming the cell, when one fails
