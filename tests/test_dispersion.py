"""D3(BJ) on top of a student: torch-sim's nvalchemiops D3 with tad-dftd3's tables, against the
Grimme group's own implementation (``dftd3``, the Python API of s-dftd3, in float64) on a
molecule, a periodic cell and a slab; then the student + D3 sum through every face.

The reference is asked for what the package computes: two-body D3(BJ) of PBE (s9 = 0, no
three-body term), pairs and coordination numbers within the same cutoff.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase import Atoms
from ase.build import fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.units import Bohr, GPa, Hartree

from torchsim_distill.models.cu_au import phase
from torchsim_distill.models.cu_au import rattled_alloy as cu_au
from torchsim_distill.runtime.dispersion import (
    DEFAULT_CUTOFF,
    DISPERSIONS,
    UnknownDispersionError,
    bj_parameters,
    dispersion_model,
    functionals,
)

pytest.importorskip("tad_dftd3")
dftd3 = pytest.importorskip("dftd3.interface")


def reference_d3(atoms: Atoms, functional: str = "pbe", cutoff: float = DEFAULT_CUTOFF) -> dict[str, np.ndarray | float]:
    """s-dftd3: energy eV, forces eV/Å and (periodic in 3D) stress eV/Å³ (its virial / V: the
    strain derivative of the energy, ASE's sign; checked by finite differences below)."""
    p = bj_parameters(functional)
    periodic = atoms.pbc.any()
    model = dftd3.DispersionModel(
        atoms.numbers, atoms.positions / Bohr, atoms.cell.array / Bohr if periodic else None,
        atoms.pbc if periodic else None,
    )
    model.set_realspace_cutoff(cutoff / Bohr, cutoff / Bohr, cutoff / Bohr)
    param = dftd3.RationalDampingParam(s6=p["s6"], s8=p["s8"], a1=p["a1"], a2=p["a2"], s9=0.0)
    out = model.get_dispersion(param, grad=True)
    found = {"energy": out["energy"] * Hartree, "forces": -out["gradient"] * Hartree / Bohr}
    if atoms.pbc.all():
        found["stress"] = out["virial"] * Hartree / atoms.get_volume()
    return found


def _structures() -> dict[str, Atoms]:
    benzene = molecule("C6H6")
    benzene.rattle(0.02, seed=1)
    cell = phase("Cu3Au", (1, 1, 1))  # L1_2, 4 atoms: its periodic images carry the sum
    cell.rattle(0.05, seed=2)
    slab = fcc111("Au", (2, 2, 3), vacuum=8.0, periodic=True)
    slab.rattle(0.05, seed=3)
    return {"molecule": benzene, "cell": cell, "slab": slab}


@pytest.fixture(scope="module")
def d3():
    return dispersion_model("d3bj", "pbe")


@pytest.mark.parametrize("kind", ["molecule", "cell", "slab"])
def test_d3_matches_s_dftd3(d3, kind):
    atoms = _structures()[kind]
    out = d3(ts.io.atoms_to_state([atoms], "cpu", torch.float64))
    ref = reference_d3(atoms)
    assert out["energy"].dtype == torch.float64
    assert abs(float(out["energy"][0]) - ref["energy"]) / len(atoms) < 1e-6  # eV/atom
    assert abs(ref["energy"]) / len(atoms) > 0.02  # a real correction, not two zeros
    np.testing.assert_allclose(out["forces"].numpy(), ref["forces"], atol=1e-5)  # eV/Å
    if kind == "cell":
        np.testing.assert_allclose(out["stress"][0].numpy() / GPa, ref["stress"] / GPa, atol=1e-4)  # GPa
        assert np.abs(ref["stress"]).max() / GPa > 1.0
    if kind == "molecule":
        assert torch.equal(out["stress"], torch.zeros(1, 3, 3, dtype=torch.float64))  # no volume: no stress


def test_the_reference_stress_is_the_strain_derivative_of_its_energy():
    """σ_xx = (1/V) ∂E/∂ε_xx: the sign and units the comparison above relies on (to 0.2 %:
    pairs crossing the sharp cutoff as the cell strains make E(ε) step, which the analytic
    virial rightly ignores)."""
    atoms = _structures()["cell"]
    eps = 1e-4
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.set_cell(atoms.cell.array @ np.diag([1 + sign * eps, 1, 1]), scale_atoms=True)
        energies.append(reference_d3(moved)["energy"])
    derivative = (energies[0] - energies[1]) / (2 * eps) / atoms.get_volume()
    assert derivative == pytest.approx(reference_d3(atoms)["stress"][0, 0], rel=2e-3)


def test_one_batch_of_a_molecule_a_cell_and_a_slab_equals_each_alone(d3):
    """Mixed pbc in one batch (evaluated one pbc group at a time) gives each system's own result."""
    structures = list(_structures().values())
    state_atoms = [s.copy() for s in structures]
    counts = np.cumsum([0] + [len(s) for s in state_atoms])
    out = d3.evaluate(
        torch.from_numpy(np.concatenate([s.positions for s in state_atoms])),
        torch.from_numpy(np.concatenate([s.numbers for s in state_atoms])),
        torch.from_numpy(np.stack([s.cell.array for s in state_atoms])),
        torch.repeat_interleave(torch.arange(len(state_atoms)), torch.tensor([len(s) for s in state_atoms])),
        torch.from_numpy(np.stack([s.pbc for s in state_atoms])),
    )
    for k, atoms in enumerate(state_atoms):
        alone = d3(ts.io.atoms_to_state([atoms], "cpu", torch.float64))
        assert float(out["energy"][k]) == pytest.approx(float(alone["energy"][0]), abs=1e-9)
        np.testing.assert_allclose(out["forces"][counts[k]:counts[k + 1]], alone["forces"], atol=1e-9)
        np.testing.assert_allclose(out["stress"][k], alone["stress"][0], atol=1e-12)


def test_unknown_dispersions_and_functionals_are_refused_with_the_list():
    with pytest.raises(UnknownDispersionError, match=r"unknown dispersion correction 'd4'; known: d3bj"):
        dispersion_model("d4", "pbe")
    with pytest.raises(UnknownDispersionError, match=r"no D3\(BJ\) parameters for functional 'pbee'; known: .*\bpbe\b"):
        dispersion_model("d3bj", "pbee")
    assert DISPERSIONS == ("d3bj",) and {"pbe", "pbe0", "r2scan", "b3lyp"} <= set(functionals())
    assert bj_parameters("PBE") == {"s6": 1.0, "s8": 0.7875, "a1": 0.4289, "a2": 4.4407}  # Grimme et al. 2011
    with pytest.raises(ValueError, match=r"elements up to Ra \(Z = 88\); got Z = 92"):
        dispersion_model("d3bj")(ts.io.atoms_to_state([Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]], cell=[10] * 3)],
                                                      "cpu", torch.float64))


# -- on top of a student ------------------------------------------------------------------------


def test_student_plus_d3_is_the_sum_in_torch_sim_and_in_ase(student_pt2, calc, d3):
    """``load_student(..., dispersion="d3bj")`` equals torch-sim's own ``SumModel(student, D3)``;
    the ASE drop-in gives the student's energy plus s-dftd3's, refuses per-atom energies it
    cannot split, and rebuilds from ``todict()``."""
    from torch_sim.models.interface import SumModel

    from torchsim_distill import DistilledCalculator
    from torchsim_distill.models.registry import load_student

    with_d3 = load_student(student_pt2, skin=None, dispersion="d3bj", functional="pbe")
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0, periodic=True)
    slab.rattle(0.05, seed=7)
    systems = [cu_au((1, 1, 2), seed=5), slab]  # torch-sim's states share one pbc
    state = ts.io.atoms_to_state(systems, "cpu", torch.float64)
    got, summed = with_d3(state), SumModel(calc, d3)(state)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(got[key], summed[key], rtol=0, atol=1e-10)
    assert "energies" not in got

    atoms = systems[0].copy()
    atoms.calc = DistilledCalculator(model=str(student_pt2), dispersion="d3bj", functional="pbe", skin=None)
    plain = systems[0].copy()
    plain.calc = DistilledCalculator(calc)
    ref = reference_d3(atoms)
    assert (atoms.get_potential_energy() - plain.get_potential_energy() - ref["energy"]) / len(atoms) == pytest.approx(0, abs=1e-6)
    np.testing.assert_allclose(atoms.get_forces() - plain.get_forces(), ref["forces"], atol=1e-5)
    np.testing.assert_allclose(
        (atoms.get_stress(voigt=False) - plain.get_stress(voigt=False)) / GPa, ref["stress"] / GPa, atol=1e-4
    )
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_potential_energies()
    cluster = cu_au((1, 1, 1), seed=7)  # a molecule through the same calculator: D3 without a cell
    cluster.pbc = False
    cluster.cell[:] = 0.0
    plain_cluster = cluster.copy()
    cluster.calc, plain_cluster.calc = atoms.calc, DistilledCalculator(calc)
    assert cluster.get_potential_energy() - plain_cluster.get_potential_energy() == pytest.approx(
        reference_d3(cluster)["energy"], abs=1e-6 * len(cluster))
    params = atoms.calc.todict()
    assert params["dispersion"] == "d3bj" and params["functional"] == "pbe"
    rebuilt = systems[0].copy()
    rebuilt.calc = type(atoms.calc)(**params)
    assert rebuilt.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)


def test_student_loaders_refuse_an_unknown_dispersion_before_compiling(monkeypatch):
    from torchsim_distill import DistilledCalculator
    from torchsim_distill.models import registry

    monkeypatch.setattr(registry, "resolve_student", lambda model: pytest.fail("resolved before the check"))
    with pytest.raises(UnknownDispersionError, match="known: d3bj"):
        registry.load_student("default", dispersion="d3zero")
    with pytest.raises(UnknownDispersionError, match="no D3\\(BJ\\) parameters for functional 'lda-x'"):
        DistilledCalculator(model="default", dispersion="d3bj", functional="lda-x")


def test_relax_with_d3_on_the_command_line(student_pt2, calc, tmp_path, capsys):
    """``relax --dispersion d3bj``: the written structures are relaxed under student + D3 (its
    energy in the CSV is the student's plus s-dftd3's there), and D3's pull makes them denser."""
    from ase.io import read, write

    from torchsim_distill import DistilledCalculator
    from torchsim_distill.cli import main

    write(tmp_path / "in.extxyz", [cu_au((1, 1, 1), seed=8, rattle=0.02)])
    for flags, out in (([], "plain"), (["--dispersion", "d3bj", "--functional", "pbe"], "d3")):
        argv = ["relax", str(tmp_path / "in.extxyz"), "--model", str(student_pt2), "--out", str(tmp_path / out),
                "--fmax", "0.01", "--quiet", *flags]
        assert main(argv) == 0
    plain, with_d3 = (read(tmp_path / out / "relaxed.extxyz") for out in ("plain", "d3"))
    assert with_d3.get_volume() < plain.get_volume()
    energy = float((tmp_path / "d3" / "results.csv").read_text().splitlines()[1].split(",")[3])
    with_d3.calc = DistilledCalculator(calc)
    assert energy == pytest.approx(with_d3.get_potential_energy() + reference_d3(with_d3)["energy"], abs=1e-5)
    assert main(["relax", str(tmp_path / "in.extxyz"), "--out", str(tmp_path / "x"), "--dispersion", "d3bj",
                 "--ray", "local"]) == 1
    assert "--dispersion is not supported with --ray" in capsys.readouterr().err


# -- inside the student: distil a D3-corrected teacher (distill --teacher-dispersion) --------------


def _labelled(path):
    from ase.io import read

    return read(path, index=":")


def test_a_d3_teacher_labels_the_teacher_s_labels_plus_s_dftd3(tmp_path):
    """``teacher_options={"dispersion": "d3bj"}``: the run's teacher is torch-sim's SumModel(EMT,
    D3) and its labels are EMT's plus the Grimme group's D3 (energy, forces, stress), without
    the per-atom energies D3 cannot split."""
    from torchsim_distill.distill.config import DistillConfig
    from torchsim_distill.distill.run import label_stage
    from torchsim_distill.distill.teachers import DispersionCorrectedTeacher

    frames = [cu_au((1, 1, 2), seed=11), cu_au((2, 1, 1), seed=12), phase("Cu3Au", (1, 1, 1))]
    for k, atoms in enumerate(frames):
        atoms.info["frame_id"] = k
    labels = {}
    for name, options in (("plain", None), ("d3", {"dispersion": "d3bj", "functional": "pbe"})):
        config = DistillConfig(teacher="emt", structures=[], out=str(tmp_path / name), teacher_options=options)
        if options:
            assert isinstance(config.load_teacher(), DispersionCorrectedTeacher)
        labels[name] = _labelled(label_stage(config, tmp_path / name, {"train": frames}, progress=False)["train"])
    for plain, d3, atoms in zip(labels["plain"], labels["d3"], frames, strict=True):
        ref = reference_d3(atoms)
        assert abs(ref["energy"]) / len(atoms) > 0.05
        assert (d3.get_potential_energy() - plain.get_potential_energy() - ref["energy"]) / len(atoms) == pytest.approx(
            0, abs=1e-6)
        np.testing.assert_allclose(d3.get_forces() - plain.get_forces(), ref["forces"], atol=1e-5)
        np.testing.assert_allclose((d3.get_stress(voigt=False) - plain.get_stress(voigt=False)) / GPa,
                                   ref["stress"] / GPa, atol=1e-4)
        assert "energies" in plain.calc.results and "energies" not in d3.calc.results


def test_a_d3_teacher_never_reuses_a_plain_teacher_s_cache(tmp_path, monkeypatch):
    """The correction is part of the teacher's id, and so of the acceptance suite's cache key:
    the teacher properties cached for plain EMT are measured again for EMT + D3 (and for
    another functional), and read back for the same teacher."""
    from torchsim_distill.distill import acceptance
    from torchsim_distill.distill.config import DistillConfig

    measured = []

    def fake_measure(teacher, seeds, *, names, options):
        measured.append(type(teacher).__name__)
        return {"version": acceptance.CACHE_VERSION, "systems": {}, "errors": {}, "seconds": 0.0}

    monkeypatch.setattr(acceptance, "measure_properties", fake_measure)
    seeds = [phase("Cu", (1, 1, 1))]
    ids = []
    for options in (None, {"dispersion": "d3bj"}, {"dispersion": "d3bj", "functional": "r2scan"}, None):
        config = DistillConfig(teacher="emt", structures=[], out=str(tmp_path), teacher_options=options)
        ids.append(config.teacher_id)
        _, cached = acceptance.teacher_properties(config.load_teacher(), seeds, cache_dir=tmp_path,
                                                  teacher_id=config.teacher_id)
        assert cached == (options is None and len(ids) == 4)
    assert ids[0] == ids[3] == "emt"  # a plain run keeps the key (and the caches) it had
    assert len(set(ids[:3])) == 3
    assert measured == ["ASECalculatorTeacher", "DispersionCorrectedTeacher", "DispersionCorrectedTeacher"]
    assert len({acceptance.cache_key(seeds, acceptance.AcceptanceOptions(), i) for i in ids[:3]}) == 3


def test_the_teacher_dispersion_flags_reach_the_teacher_and_bad_values_are_refused(tmp_path, capsys):
    """``distill --teacher-dispersion d3bj --teacher-functional r2scan`` reaches the run's teacher,
    run.json and the command line the advice prints; unknown values fail before any work."""
    from dataclasses import asdict

    from torchsim_distill.cli import build_parser
    from torchsim_distill.distill.config import DistillConfig
    from torchsim_distill.distill.run import teacher_metadata
    from torchsim_distill.distill.teachers import TeacherOptions
    from torchsim_distill.utils.jsonable import jsonable
    from torchsim_distill.utils.options import from_flags, to_flags

    argv = ["distill", "--teacher", "emt", "--structures", "s.xyz", "--out", str(tmp_path)]
    args = build_parser("distill").parse_args([*argv, "--teacher-dispersion", "d3bj", "--teacher-functional", "r2scan"])
    config = DistillConfig(**from_flags(args, DistillConfig.cli_defaults()))
    assert config.teacher_options == TeacherOptions(dispersion="d3bj", functional="r2scan")
    teacher = config.load_teacher()
    assert teacher.dispersion.functional == "r2scan" and teacher.dispersion.parameters == bj_parameters("r2scan")
    flags = to_flags(config, DistillConfig.cli_defaults())
    assert flags[flags.index("--teacher-dispersion"):][:4] == ["--teacher-dispersion", "d3bj", "--teacher-functional", "r2scan"]
    assert DistillConfig.from_dict(jsonable(asdict(config))).teacher_options == config.teacher_options
    assert teacher_metadata(config) == {"teacher_dispersion": "d3bj (r2scan), in the labels"}
    plain = DistillConfig(**from_flags(build_parser("distill").parse_args(argv), DistillConfig.cli_defaults()))
    assert plain.teacher_options == TeacherOptions() and teacher_metadata(plain) == {}
    assert "--teacher-dispersion" not in to_flags(plain, DistillConfig.cli_defaults())

    with pytest.raises(SystemExit):
        build_parser("distill").parse_args([*argv, "--teacher-dispersion", "d4"])
    assert "invalid choice: 'd4'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown teacher dispersion 'd4'; accepted: d3bj"):
        DistillConfig(teacher="emt", structures=[], out="x", teacher_options={"dispersion": "d4"})
    bad = {
        "no D3\\(BJ\\) parameters for functional 'pbee'": {"teacher_options": {"dispersion": "d3bj", "functional": "pbee"}},
        "atomic_energy_weight needs the teacher's per-atom energies": {
            "teacher_options": {"dispersion": "d3bj"}, "atomic_energy_weight": 1.0},
        "--teacher-dispersion is not supported with --ray": {"teacher_options": {"dispersion": "d3bj"}, "ray": "local"},
    }
    for message, options in bad.items():
        with pytest.raises(ValueError, match=message):
            DistillConfig(teacher="emt", structures=[], out="x", **options).check()


def test_the_card_says_whether_the_teacher_was_d3_corrected(monkeypatch):
    """Either way, in the card's "What this is"; a student with D3 built in that gets D3 on top
    again warns (its package says so)."""
    from pathlib import Path

    from torchsim_distill.distill.model_card import _md_what
    from torchsim_distill.models import registry

    def card(dispersion):
        return "\n".join(_md_what({"teacher": "sevennet-0", "teacher_dispersion": dispersion}))

    assert "- **teacher_dispersion**: `d3bj (pbe), in the labels`" in card("d3bj (pbe), in the labels")
    assert "student has it built in, so do not add `dispersion=`" in card("d3bj (pbe), in the labels")
    assert "without a dispersion correction" in card("none")
    monkeypatch.setattr(registry, "read_distill_metadata", lambda path: {"teacher_dispersion": "d3bj (pbe), in the labels"})
    with pytest.warns(UserWarning, match="counts the dispersion twice"):
        registry._warn_if_built_in(Path("s.nequip.zip"), "d3bj")

