"""The three notebooks run top to bottom (small sizes) and produce what they promise: here the
quick one; the other two have files of their own (``test_notebook_*.py``), so that xdist runs
them side by side."""

from __future__ import annotations

import nbformat
import pytest
from notebook_runner import NOTEBOOKS, run_notebook, text_output


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.slow
def test_batched_relaxation_notebook(tmp_path):
    nb = run_notebook("batched_relaxation", tmp_path)
    out = tmp_path / "batched_relaxation_out"
    assert len(list(out.glob("relax_*.h5"))) == 8
    assert (out / "relaxation.png").stat().st_size > 10_000
    assert "relaxed 8 structures" in text_output(nb)
