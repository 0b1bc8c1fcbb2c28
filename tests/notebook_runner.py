"""Running the notebooks in tests: each notebook's test has a file of its own, so that xdist's
``--dist loadfile`` runs them side by side (each takes minutes)."""

from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, workdir: Path) -> nbformat.NotebookNode:
    """Execute ``notebooks/{name}.ipynb`` in ``workdir`` with QUICK sizes; return it with outputs."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # the kernel inherits the environment: small sizes, and one thread like the rest of the
    # suite (small systems run many times slower with two threads on a busy 2-core machine)
    settings = {"TORCHSIM_DISTILL_NOTEBOOK_QUICK": "1", "OMP_NUM_THREADS": "1"}
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
        )
        client.execute()
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return nb


def text_output(nb: nbformat.NotebookNode) -> str:
    return "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
