"""Screening at scale: a relaxation streamed in chunks survives SIGKILL (rerun: nothing lost,
nothing written twice, the files of an uninterrupted run), bad structures are reported in
errors.csv while the rest run, and progress shows in a log file."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write

from torchsim_distill.cli import main
from torchsim_distill.jobs.relax import relax_structures
from torchsim_distill.jobs.structure_stream import MIN_DISTANCE, count_structures, iter_structures
from torchsim_distill.models.cu_au import rattled_alloy as cu_au

N_SCALE = 240  # structures of the kill-and-resume test
CHUNK = 16
RELAX_FLAGS = ["--fmax", "0.05", "--max-steps", "40", "--chunk-size", str(CHUNK), "--cell-filter", "none"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _command(structures: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torchsim_distill.cli", "relax", str(structures), "--model", str(model),
            "--out", str(out), *RELAX_FLAGS, *extra]


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """A few hundred small Cu–Au cells (4 and 8 atoms), rattled, in one extxyz file."""
    frames = [cu_au((1, 1, 1 + i % 2), x_au=0.3 + 0.4 * (i % 3) / 2, seed=500 + i, rattle=0.12) for i in range(N_SCALE)]
    path = tmp_path_factory.mktemp("screen") / "candidates.extxyz"
    write(path, frames)
    return path


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_to_the_files_of_an_uninterrupted_run(many, student_pt2, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    done = subprocess.run(_command(many, student_pt2, reference, "-q"), capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(many, student_pt2, out, "-q"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    stored: list[Path] = []
    while len(stored) < 3:  # a few chunks are done: kill it in the middle of the next ones
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        stored = list(tmp_path.glob(".killed.parts-*/chunk-*.pkl"))
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.csv").exists()
    (store,) = tmp_path.glob(".killed.parts-*")
    n_before = len(list(store.glob("chunk-*.pkl")))
    assert 3 <= n_before < N_SCALE // CHUNK

    resumed = subprocess.run(_command(many, student_pt2, out), capture_output=True, text=True, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed: {n_before * CHUNK} structures were done by an earlier run" in resumed.stdout
    # the same bytes as the uninterrupted run's: every structure once, in input order
    for name in ("relaxed.extxyz", "results.csv", "errors.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    rows = _rows(out / "results.csv")
    assert [r["id"] for r in rows] == [f"{many}@{i}" for i in range(N_SCALE)]
    assert {int(r["steps"]) for r in rows} != {0}  # something was relaxed
    assert not list(tmp_path.glob(".*parts-*"))  # the store is gone


def _mixed_input(tmp_path: Path) -> tuple[list[Path], dict[str, str]]:
    """Good cells around every kind of bad structure; the reason each bad one must give."""
    good = [cu_au((1, 1, 1), seed=600 + i, rattle=0.05) for i in range(5)]
    iron = cu_au((1, 1, 1), seed=610)
    iron.symbols[1] = "Fe"
    overlap = cu_au((1, 1, 1), seed=611)
    overlap.positions[2] = overlap.positions[0] + [0.1, 0.0, 0.0]
    nan = cu_au((1, 1, 1), seed=612)
    nan.positions[3, 1] = np.nan
    molecule = Atoms("Cu2", positions=[[0, 0, 0], [2.4, 0, 0]])
    first = tmp_path / "first.extxyz"
    write(first, [good[0], iron, good[1], overlap, good[2], molecule])
    second = tmp_path / "second.extxyz"
    write(second, [good[3], nan, good[4]])
    # a file that breaks after its first frame: the frame before the break is kept
    broken = tmp_path / "broken.xyz"
    write(broken, [cu_au((1, 1, 1), seed=620)], format="extxyz")
    with open(broken, "a") as fh:
        fh.write("4\nnot a comment line ASE understands = \nCu 0 0\n")
    reasons = {
        f"{first}@1": "contains element(s) Fe that the model does not know",
        f"{first}@3": "has overlapping atoms: 0 and 2 are 0.1 Å apart",
        f"{first}@5": "has no 3D cell, so its cell cannot be relaxed",
        f"{second}@1": "non-finite positions",
        f"{broken}@1": f"cannot read structure 1 of {str(broken)!r}",
    }
    return [first, second, broken], reasons


def test_bad_structures_go_to_errors_csv_and_the_rest_run(student_pt2, tmp_path, capsys):
    files, reasons = _mixed_input(tmp_path)
    out = tmp_path / "out"
    code = main(["relax", *map(str, files), "--model", str(student_pt2), "--out", str(out), "--max-steps", "30", "-q"])
    assert code == 2  # finished, but not everything was relaxed
    err = capsys.readouterr().err
    assert "5 structure(s) not relaxed" in err and "errors.csv" in err
    errors = _rows(out / "errors.csv")
    assert [e["id"] for e in errors] == list(reasons)  # input order
    for row in errors:
        assert reasons[row["id"]] in row["reason"], row
        file, frame = row["id"].rsplit("@", 1)
        assert (row["file"], row["frame"]) == (file, frame)
    relaxed = _rows(out / "results.csv")
    expected = [f"{files[0]}@{i}" for i in (0, 2, 4)] + [f"{files[1]}@{i}" for i in (0, 2)] + [f"{files[2]}@0"]
    assert [r["id"] for r in relaxed] == expected
    assert len(read(out / "relaxed.extxyz", ":")) == len(expected)
    # all or nothing: the same input with --on-error stop names the first bad structure, writes nothing
    stop = tmp_path / "stop"
    assert main(["relax", *map(str, files), "--model", str(student_pt2), "--out", str(stop), "--on-error", "stop"]) == 1
    assert f"{files[0]}@1" in capsys.readouterr().err
    assert not stop.exists() and not list(tmp_path.glob(".stop*"))


def test_a_relaxation_that_fails_is_isolated_to_its_structure(student_pt2, calc, tmp_path, monkeypatch):
    """A failure only the model finds (here: forces made non-finite for one structure) sends
    that structure to errors.csv; its chunk's other structures are relaxed one by one."""
    from torchsim_distill.jobs import relax as relax_module

    frames = [cu_au((1, 1, 1), seed=700 + i, rattle=0.05) for i in range(4)]
    frames[2].info["poison"] = True
    real = relax_module._relax_all

    def poisoned(atoms_list, calc, **options):
        if any(a.info.get("poison") for a in atoms_list):
            raise FloatingPointError("forces are not finite")
        return real(atoms_list, calc, **options)

    monkeypatch.setattr(relax_module, "_relax_all", poisoned)
    summary = relax_structures(frames, calc, tmp_path / "out", max_steps=10, progress=False)
    assert (summary.n_relaxed, summary.n_failed) == (3, 1)
    assert [r.id for r in summary.structures] == ["0", "1", "3"]
    (error,) = summary.errors
    assert error.id == "2" and "forces are not finite" in error.reason
    with pytest.raises(FloatingPointError):
        relax_structures(frames, calc, tmp_path / "stop", max_steps=10, progress=False, on_error="stop")


def test_progress_lines_in_a_log_file(student_pt2, tmp_path):
    """Not a terminal: plain lines (count, rate, ETA) every --progress-every seconds on stderr."""
    path = tmp_path / "in.extxyz"
    write(path, [cu_au((1, 1, 1), seed=800 + i, rattle=0.1) for i in range(24)])
    cmd = [sys.executable, "-m", "torchsim_distill.cli", "relax", str(path), "--model", str(student_pt2), "--out",
           str(tmp_path / "out"), "--chunk-size", "4", "--progress-every", "0", "--max-steps", "20"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 6  # one per chunk of 4
    for k, line in enumerate(lines, start=1):
        count, rate, eta = line.split(", ")
        assert count == f"relaxed {4 * k}/24 structures" and rate.endswith("/min") and eta.startswith("ETA ")
    quiet = subprocess.run(cmd[:-4] + ["-q", "--out", str(tmp_path / "quiet")], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_structures_are_read_lazily_and_counted_cheaply(tmp_path):
    path = tmp_path / "many.extxyz"
    write(path, [cu_au((1, 1, 1), seed=i) for i in range(50)])
    assert count_structures([path, cu_au()]) == 51
    stream = iter_structures([path])
    first = next(stream)
    assert first.id == f"{path}@0" and first.error is None and (first.source, first.frame) == (str(path), 0)
    assert count_structures([tmp_path / "x.traj"]) is None  # not countable without parsing: unknown total
    close = Atoms("Cu2", positions=[[0, 0, 0], [0.9 * MIN_DISTANCE, 0, 0]], cell=[5, 5, 5], pbc=True)
    (item,) = iter_structures([close])
    assert "overlapping atoms" in item.error


def test_evaluate_writes_a_table_a_screening_user_can_use(student_pt2, calc, tmp_path, capsys):
    """--out: file, frame, formula, energies, max force, pressure and Voigt stress in GPa, checked
    against the ASE calculator; bad structures named by file and frame on stderr (exit 2); a
    molecule evaluated, with no stress."""
    from ase import units

    from torchsim_distill.runtime.ase_calculator import DistilledCalculator

    files, reasons = _mixed_input(tmp_path)
    table = tmp_path / "results.csv"
    assert main(["evaluate", str(student_pt2), *map(str, files), "--out", str(table)]) == 2
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("torchsim-distill evaluate: skipped ")]
    # evaluate needs no cell: the molecule is evaluated, the other four bad ones are named
    assert [line.split()[3].rstrip(":") for line in skipped] == [i for i in reasons if not i.endswith("@5")]
    rows = _rows(table)
    ids = [f"{files[0]}@{i}" for i in (0, 2, 4, 5)] + [f"{files[1]}@{i}" for i in (0, 2)] + [f"{files[2]}@0"]
    assert [r["id"] for r in rows] == ids
    assert list(rows[0])[:9] == ["file", "frame", "id", "formula", "n_atoms", "energy", "energy_per_atom", "max_force",
                                 "pressure_gpa"]
    ase_calc = DistilledCalculator(calc)
    for row in rows:
        atoms = read(row["file"], index=int(row["frame"]))
        atoms.calc = ase_calc
        assert float(row["energy"]) == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        assert float(row["max_force"]) == pytest.approx(np.linalg.norm(atoms.get_forces(), axis=1).max(), abs=1e-8)
        if atoms.cell.rank == 3:
            stress = atoms.get_stress() / units.GPa
            got = [float(row[f"stress_{c}_gpa"]) for c in ("xx", "yy", "zz", "yz", "xz", "xy")]
            np.testing.assert_allclose(got, stress, atol=1e-9)
            assert float(row["pressure_gpa"]) == pytest.approx(-stress[:3].mean(), abs=1e-9)
        else:
            assert row["pressure_gpa"] == "" and row["stress_xx_gpa"] == ""
    assert main(["evaluate", str(student_pt2), *map(str, files), "--on-error", "stop"]) == 1
    assert f"{files[0]}@1 contains element(s) Fe" in capsys.readouterr().err


def test_the_overlap_check_finds_what_ases_neighbor_list_finds():
    """The vectorised closest-pair search (all pairs over the nearest cell images) against ASE's
    neighbor list, on sheared, rattled, slab and bulk cells: the same closest distance."""
    from ase.build import bulk
    from ase.neighborlist import neighbor_list

    from torchsim_distill.jobs.structure_stream import closest_pair

    rng = np.random.default_rng(0)
    for t in range(120):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1 + t % 3, 1, 1 + t % 2))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.3 * rng.normal(size=(3, 3)) * (t % 2)), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.6, size=atoms.positions.shape)
        if t % 5 == 0:
            atoms.pbc = [True, True, False]
        found = closest_pair(atoms, 1.2)
        _, _, d = neighbor_list("ijd", atoms, 1.2)
        assert (found is None) == (len(d) == 0), t
        if found is not None:
            assert found[2] == pytest.approx(d.min(), abs=1e-9), t
