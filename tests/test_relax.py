"""relax_structures and `torchsim-distill relax`: batched FIRE over structures from
several files, results in input order, exact step counts, and bad input that leaves
no output behind."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111
from ase.constraints import FixAtoms
from ase.io import read, write

from torchsim_distill.cli import main
from torchsim_distill.jobs.relax import RESULT_COLUMNS, relax_structures
from torchsim_distill.models.cu_au import rattled_alloy

FMAX = 0.05


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for these small structures (see test_ase_calculator.one_thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def strained(atoms, scale: float):
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    return atoms


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path, list]:
    """Two files in two formats: three 4-atom cells (extxyz) and two 8-atom cells (ASE trajectory)."""
    first = [strained(rattled_alloy((1, 1, 1), seed=s, rattle=0.1), 1.0 + 0.02 * s) for s in range(3)]
    second = [strained(rattled_alloy((1, 1, 2), seed=10 + s, rattle=0.1), 0.98) for s in range(2)]
    a, b = tmp_path / "a.extxyz", tmp_path / "b.traj"
    write(a, first)
    write(b, second)
    return a, b, first + second


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_cli_relaxes_structures_from_two_files(inputs, student_pt2, calc, tmp_path, capsys):
    from torchsim_distill import DistilledCalculator

    a, b, originals = inputs
    out = tmp_path / "out"
    code = main(["relax", str(a), str(b), "--model", str(student_pt2), "--out", str(out), "--fmax", str(FMAX), "--max-steps", "400"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "structures/min" in printed and "atom-steps/s" in printed

    columns, rows = read_csv(out / "results.csv")
    assert columns == list(RESULT_COLUMNS) == ["id", "formula", "n_atoms", "energy", "energy_per_atom", "volume", "max_force", "steps", "converged"]
    assert [r["id"] for r in rows] == [f"{a}@{i}" for i in range(3)] + [f"{b}@{i}" for i in range(2)]
    relaxed = read(out / "relaxed.extxyz", index=":")
    assert len(relaxed) == len(originals) == len(rows)

    ase_calc = DistilledCalculator(calc)
    for original, final, row in zip(originals, relaxed, rows, strict=True):
        assert list(final.symbols) == list(original.symbols)  # input order, atoms in order
        assert row["formula"] == original.get_chemical_formula() and int(row["n_atoms"]) == len(original)
        assert row["converged"] == "True"  # small cells, 400 steps: all converge
        assert 0 < int(row["steps"]) <= 400
        # the CSV describes the written structure, as the calculator sees it (extxyz
        # keeps positions to 1e-8 Å, which moves forces by ~1e-7 eV/Å)
        final.calc = ase_calc
        energy = final.get_potential_energy()
        assert float(row["energy"]) == pytest.approx(energy, abs=1e-7)
        assert float(row["energy_per_atom"]) == pytest.approx(energy / len(final), abs=1e-7)
        assert float(row["volume"]) == pytest.approx(final.get_volume(), rel=1e-7)
        max_force = np.linalg.norm(final.get_forces(), axis=1).max()
        assert float(row["max_force"]) == pytest.approx(max_force, abs=1e-6)
        assert max_force <= FMAX
        # cell relaxed too (Fréchet filter): virial per atom below fmax
        assert np.abs(final.get_stress()).max() * final.get_volume() / len(final) < FMAX
        original.calc = ase_calc
        assert energy < original.get_potential_energy()
    assert sorted(p.name for p in out.iterdir()) == ["errors.csv", "relaxed.extxyz", "results.csv"]
    assert read_csv(out / "errors.csv") == (["file", "frame", "id", "reason"], [])  # nothing failed
    # no temporary folder and no chunk store left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.extxyz", "b.traj", "out"]



def test_command_line_writes_nothing_to_stderr(inputs, student_pt2, tmp_path):
    """A fresh process, as a user runs it: the results on stdout, and none of the third-party
    notices (torch.jit's deprecation, Warp's missing-CUDA notice, torch's CUDA_HOME note) nor
    a progress bar (not a terminal) on stderr."""
    a, b, _ = inputs
    cmd = [sys.executable, "-m", "torchsim_distill.cli", "relax", str(a), str(b), "--model", str(student_pt2),
           "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "relaxed 5 structures" in done.stdout and "results.csv" in done.stdout


def test_known_third_party_warnings_are_filtered_and_ours_are_not():
    from torchsim_distill.cli import KNOWN_LOGGERS, _quiet_third_party

    level = logging.getLogger(KNOWN_LOGGERS[0]).level
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with _quiet_third_party(verbose=False):
            warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning)
            warnings.warn("2 relaxed structure(s) above the uncertainty threshold", UserWarning)
            assert logging.getLogger(KNOWN_LOGGERS[0]).level == logging.ERROR
        with _quiet_third_party(verbose=True):  # -v: everything shows
            warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning)
    assert [type(w.message).__name__ for w in seen] == ["UserWarning", "FutureWarning"]
    assert logging.getLogger(KNOWN_LOGGERS[0]).level == level  # restored for library use

def test_function_fixed_cell_exact_step_limit_and_rerun(student_pt2, calc, tmp_path):
    """cell_filter=None keeps the cell; max_steps not a multiple of the check interval is exact."""
    atoms = [rattled_alloy((1, 1, 1), seed=20, rattle=0.3), bulk("Au", "fcc", a=4.1, cubic=True), rattled_alloy((1, 1, 2), seed=21, rattle=0.3)]
    atoms[1].info["id"] = "perfect Au"
    out = tmp_path / "fixed"
    summary = relax_structures(atoms, calc, out, cell_filter=None, max_steps=7, progress=False)
    rows = summary.structures
    assert [r.id for r in rows] == ["0", "perfect Au", "2"]
    # the perfect crystal has no forces and converges at the first check; the others run out of steps
    assert rows[1].converged and rows[1].steps == 5
    assert [r.steps for r in rows[::2]] == [7, 7] and not any(r.converged for r in rows[::2])
    for original, final in zip(atoms, summary.relaxed, strict=True):
        np.testing.assert_array_equal(final.cell.array, original.cell.array)
    assert summary.atom_steps == 4 * 7 + 4 * 5 + 8 * 7
    assert summary.structures_per_min > 0 and summary.atom_steps_per_s > 0

    # a second run into the same folder replaces both files and leaves nothing else;
    # a slab (pbc T, T, F) between bulk cells is relaxed in its own group, order kept
    slab = fcc111("Cu", size=(2, 2, 3), a=3.7, vacuum=5.0, periodic=False)
    slab.pbc = (True, True, False)
    slab.rattle(0.05, seed=1)
    del slab.info["adsorbate_info"]  # a dict extxyz cannot store (it would warn)
    mixed = [atoms[0], slab, atoms[2]]
    summary = relax_structures(mixed, student_pt2, out, cell_filter=None, max_steps=30, progress=False)
    written = read(out / "relaxed.extxyz", index=":")
    assert [len(a) for a in written] == [4, 12, 8]
    assert [tuple(a.pbc) for a in written] == [(True,) * 3, (True, True, False), (True,) * 3]
    assert summary.relaxed[1].get_potential_energy() < _energy(calc, slab)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed"]


def _energy(calc, atoms) -> float:
    from torchsim_distill import DistilledCalculator

    atoms = atoms.copy()
    atoms.calc = DistilledCalculator(calc)
    return atoms.get_potential_energy()


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = tmp_path / "good.extxyz"
    write(good, [rattled_alloy((1, 1, 1), seed=30)])
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is not\nan xyz file\n")
    iron = tmp_path / "iron.extxyz"
    fe = rattled_alloy((1, 1, 1), seed=31)
    fe.symbols[2] = "Fe"
    write(iron, [rattled_alloy((1, 1, 1), seed=32), fe])
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    return {
        "unreadable": ([str(good), str(garbage)], "garbage.xyz"),
        "unknown element": ([str(good), str(iron)], "Fe"),
        "empty file": ([str(good), str(empty)], "empty.extxyz"),
        "missing file": ([str(tmp_path / "nope.xyz")], "nope.xyz"),
    }


@pytest.mark.parametrize("case", ["unreadable", "unknown element", "empty file", "missing file"])
def test_bad_input_with_on_error_stop_exits_1_and_writes_nothing(case, student_pt2, tmp_path, capsys):
    files, named = _bad_inputs(tmp_path)[case]
    before = sorted(tmp_path.iterdir())
    out = tmp_path / "out"
    code = main(["relax", *files, "--model", str(student_pt2), "--out", str(out), "--on-error", "stop"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchsim-distill relax: error:") and "\n" not in err
    assert named in err
    assert sorted(tmp_path.iterdir()) == before  # no output folder, no temporary files


def test_unknown_element_names_structure(student_pt2, tmp_path):
    files, _ = _bad_inputs(tmp_path)["unknown element"]
    with pytest.raises(ValueError, match=r"iron\.extxyz@1 contains element\(s\) Fe .* knows Au, Cu"):
        relax_structures(files, student_pt2, tmp_path / "out", progress=False, on_error="stop")


def test_empty_input_and_bad_model(student_pt2, tmp_path, capsys):
    with pytest.raises(ValueError, match="input is empty"):
        relax_structures([], student_pt2, tmp_path / "out", progress=False)
    good = tmp_path / "good.extxyz"
    write(good, [rattled_alloy((1, 1, 1))])
    assert main(["relax", str(good), "--model", str(tmp_path / "missing.nequip.pt2"), "--out", str(tmp_path / "out")]) == 1
    assert "missing.nequip.pt2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no 3D cell"):
        relax_structures([Atoms("Cu2", positions=[[0, 0, 0], [2.4, 0, 0]])], student_pt2, tmp_path / "out", progress=False,
                         on_error="stop")
    fixed = rattled_alloy((1, 1, 1))
    fixed.set_constraint(FixAtoms([0]))
    with pytest.raises(ValueError, match="structure 0 has constraints"):
        relax_structures([fixed], student_pt2, tmp_path / "out", progress=False, on_error="stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.extxyz"]


def test_default_model_missing_is_a_clear_error(tmp_path, monkeypatch):
    from torchsim_distill.models import default

    # an install without the shipped file (e.g. a source tree where it was deleted)
    monkeypatch.setattr(default, "DEFAULT_PACKAGE", tmp_path / "missing.nequip.zip")
    good = tmp_path / "good.extxyz"
    write(good, [rattled_alloy((1, 1, 1))])
    with pytest.raises(FileNotFoundError, match="default student"):
        relax_structures([good], "default", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("cell_filter", "skin"), [("default", 0.0), (None, 0.3)])
def test_default_student_gets_a_skin_only_with_a_fixed_cell(cell_filter, skin, student_pt2, tmp_path, monkeypatch):
    """Defect 3: a cell filter (the default) changes the cell every step, which invalidates a
    Verlet skin's cached pairs every step, so there the skin only costs: `relax --model
    default` must build its calculator without one, and with the 0.3 Å skin for a fixed cell,
    as it does for a compiled-model path."""
    from torchsim_distill.models import student
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

    # the toy Cu–Au student stands in for the shipped one (no compile of the default here)
    monkeypatch.setattr(student, "cached_compile_all", lambda sources, **kwargs: [student_pt2 for _ in sources])
    built = []
    load = DistilledTorchSimCalc.from_compiled_model.__func__

    def spy(cls, *args, **kwargs):
        built.append(load(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(DistilledTorchSimCalc, "from_compiled_model", classmethod(spy))
    options = {} if cell_filter == "default" else {"cell_filter": cell_filter}
    relax_structures([rattled_alloy((1, 1, 1), seed=40)], "default", tmp_path / "out", max_steps=3, progress=False, **options)
    assert [calc.neighbor_list.skin for calc in built] == [skin]


@pytest.mark.slow
def test_relax_with_the_default_student_on_the_command_line(tmp_path, capsys):
    good = tmp_path / "good.extxyz"
    write(good, [rattled_alloy((2, 2, 2), seed=s, a=3.9) for s in range(3)])
    assert main(["relax", str(good), "--model", "default", "--out", str(tmp_path / "out"), "--max-steps", "200"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert len(rows) == 3
    assert all(r["converged"] == "True" and float(r["max_force"]) <= 0.05 for r in rows)
    assert "structures/min" in capsys.readouterr().out
