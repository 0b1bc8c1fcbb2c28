"""The three notebooks run top to bottom (small sizes) and produce what they promise."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbclient
import nbformat
import pytest

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


@pytest.mark.slow
def test_high_throughput_screening_notebook(tmp_path):
    pytest.importorskip("sevenn", reason="the notebook compares with SevenNet-0: needs the teachers extra (sevenn)")
    nb = run_notebook("high_throughput_screening", tmp_path)
    out = tmp_path / "screening_out"
    assert (out / "student" / "results.csv").read_text().count("\n") == 1 + 5 + 12
    assert (out / "screening.png").stat().st_size > 10_000
    text = text_output(nb)
    assert "on the student's hull:" in text
    # student and teacher relaxed the same structures: formation energies and bulk moduli agree
    mae = float(re.search(r"student vs teacher on \d+ structures: MAE ([\d.]+) meV/atom", text).group(1))
    assert mae < 20.0
    assert "committee uncertainty: median" in text  # the shipped student carries its committee
    number = r"\s+(-?[\d.]+)"
    eos_rows = re.findall(rf"^(Cu|Au|Cu3Au|CuAu|CuAu3){number * 4}$", text, flags=re.M)
    assert [row[0] for row in eos_rows] == ["Cu", "Au", "Cu3Au", "CuAu", "CuAu3"]
    for _, b_student, b_teacher, v_student, v_teacher in eos_rows:
        assert abs(float(b_student) / float(b_teacher) - 1) < 0.25
        assert abs(float(v_student) / float(v_teacher) - 1) < 0.03


@pytest.mark.slow
def test_distill_your_own_notebook(tmp_path):
    nb = run_notebook("distill_your_own", tmp_path)
    run = tmp_path / "distill_your_own_run"
    assert (run / "student.nequip.zip").exists()
    assert (run / "report" / "model_card.json").exists()
    assert "ASE MD, energy:" in text_output(nb)
