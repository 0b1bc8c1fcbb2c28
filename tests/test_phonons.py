"""Phonons in the acceptance suite: the package's batched measurement against phonopy driven by
a plain ASE calculator (EMT, one supercell at a time), an exact scaling law, and the gates on a
student that is wrong in a known way.

The scaling law: a model ``E'(r) = α E(λ r)`` relaxes to ``r₀/λ`` and has the Hessian
``α λ² H``, so every frequency is ``λ √α`` times the original one, at every q.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from torchsim_distill.distill import phonons as ph
from torchsim_distill.distill import properties as props
from torchsim_distill.distill.acceptance import AcceptanceOptions, acceptance_suite
from torchsim_distill.distill.acceptance_gates import AcceptanceGates
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.models.cu_au import phase

pytest.importorskip("phonopy")

MESH = (6, 6, 6)


class _ScaledEMT(Calculator):
    """``E'(r) = α E(λ r)``: forces ``α λ F(λ r)``, stress ``α λ³ σ(λ r)``."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, lattice: float = 1.0, energy: float = 1.0):
        super().__init__()
        self.lam, self.alpha, self.emt = lattice, energy, EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.set_cell(a.cell.array * self.lam, scale_atoms=True)
        a.calc = self.emt
        e = self.alpha * a.get_potential_energy()
        self.results = {
            "energy": e, "free_energy": e, "forces": self.alpha * self.lam * a.get_forces(),
            "stress": self.alpha * self.lam**3 * a.get_stress(),
        }


@pytest.fixture(scope="module")
def emt():
    return load_teacher("emt")


@pytest.fixture(scope="module")
def relaxed_cu(emt):
    (cu,) = props.relax(emt, [phase("Cu", (2, 2, 2))])
    return cu.atoms


def _phonopy_with_ase_emt(a: float):
    """The reference: phonopy's own workflow with ASE's EMT evaluating each displaced
    supercell of the 4-atom cubic Cu cell (3 × 3 × 3), no torch-sim, no batching."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit = bulk("Cu", "fcc", a=a, cubic=True)
    cell = PhonopyAtoms(symbols=unit.get_chemical_symbols(), cell=unit.cell.array, scaled_positions=unit.get_scaled_positions())
    phonon = Phonopy(cell, supercell_matrix=np.diag([3, 3, 3]), primitive_matrix="F")
    phonon.generate_displacements(distance=0.01, is_plusminus=True)
    forces = []
    for sc in phonon.supercells_with_displacements:
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((3, 3, 3))
        atoms.set_cell(sc.cell)
        atoms.set_scaled_positions(sc.scaled_positions)
        atoms.calc = EMT()
        forces.append(atoms.get_forces())
    phonon.forces = np.array(forces)
    phonon.produce_force_constants()
    phonon.symmetrize_force_constants()
    return phonon


def test_cell_helpers_find_the_conventional_cell_and_the_supercell():
    cu = phase("Cu", (2, 2, 2))  # 32 atoms
    unit = ph.conventional_cell(cu)
    assert len(unit) == 4 and unit.cell.lengths() == pytest.approx([3.63] * 3)
    assert ph.supercell_repeat(unit.cell.array, 10.0) == 3  # 3 × 3.63 ≥ 10 > 2 × 3.63
    assert ph.supercell_repeat(unit.cell.array, 7.26) == 2
    assert ph.supercell_repeat(unit.cell.array, AcceptanceOptions().phonon_min_length) == 4  # the suite's default
    assert len(ph.conventional_cell(phase("Cu3Au", (1, 2, 1)))) == 4


def test_phonons_match_phonopy_driven_by_plain_ase_emt(emt, relaxed_cu):
    """Mesh, band path and extremes of fcc Cu agree with the reference to round-off."""
    (mine,) = ph.measure_phonons(emt, [relaxed_cu], min_length=10.0, mesh=MESH, band_points=60)
    assert mine["supercell"] == [3, 3, 3] and mine["supercell_atoms"] == 108
    assert mine["conventional_atoms"] == 4 and mine["primitive_atoms"] == 1
    a = ph.conventional_cell(relaxed_cu).cell.lengths()[0]
    ref = _phonopy_with_ase_emt(a)
    assert mine["n_displacements"] == len(ref.supercells_with_displacements) == 2  # one atom, ± one direction
    ref.run_mesh(list(MESH), is_gamma_center=True, is_mesh_symmetry=False)
    expected = np.sort(ref.get_mesh_dict()["frequencies"], axis=1)
    np.testing.assert_allclose(mine["mesh_frequencies"], expected, atol=1e-6)
    # along the path: Γ, X, W, K, Γ, L, ... in the primitive cell's reduced coordinates
    from ase.cell import Cell

    path = Cell(ref.primitive.cell).bandpath(npoints=60)
    ref.run_qpoints(path.kpts)
    np.testing.assert_allclose(mine["band"]["frequencies"], np.sort(ref.get_qpoints_dict()["frequencies"], axis=1), atol=1e-6)
    assert mine["band"]["labels"][:3] == ["G", "X", "W"]
    # physics: three acoustic branches vanish at Γ; EMT Cu's highest mode is near X (~7–8 THz)
    assert np.abs(mine["mesh_frequencies"][0]).max() < 1e-3
    assert 6.0 < mine["max_frequency"] < 9.0 and mine["min_frequency"] > -1e-3
    assert np.trapezoid(mine["dos"]["total"], mine["dos"]["frequency"]) == pytest.approx(3.0, rel=0.02)  # 3 modes per atom
    json.dumps(mine, allow_nan=False)


def test_frequencies_follow_the_scaling_law_and_forces_are_batched(emt, relaxed_cu, monkeypatch):
    """``E'(r) = α E(λ r)`` at its relaxed cell (EMT's shrunk by λ): frequencies × λ√α at every
    q (to 1e-5: the same 0.01 Å displacement is 2 % larger in EMT's frame, so the finite
    differences' anharmonic error differs a little); the displaced supercells of Cu and Cu3Au
    go through one model call."""
    lam, alpha = 1.02, 1.3
    scaled = load_teacher(_ScaledEMT(lam, alpha))
    cu3au = props.relax(emt, [phase("Cu3Au", (1, 1, 1))])[0].atoms
    own = [props.strained(a, (1 / lam - 1) * np.eye(3)) for a in (relaxed_cu, cu3au)]
    calls = []
    real = scaled.forward

    def counting(state, **kwargs):
        calls.append(state.n_systems)
        return real(state, **kwargs)

    monkeypatch.setattr(scaled, "forward", counting)
    found = ph.measure_phonons(scaled, own, min_length=10.0, mesh=MESH, band_points=30)
    assert calls == [2 + found[1]["n_displacements"]]  # every displaced supercell in one call
    reference = ph.measure_phonons(emt, [relaxed_cu, cu3au], min_length=10.0, mesh=MESH, band_points=30)
    for got, ref in zip(found, reference, strict=True):
        np.testing.assert_allclose(got["mesh_frequencies"], lam * np.sqrt(alpha) * np.asarray(ref["mesh_frequencies"]), rtol=1e-5, atol=1e-5)
    assert found[1]["primitive_atoms"] == 4 and found[1]["band"]["labels"][:2] == ["G", "X"]  # simple cubic L1_2


def _spectra(freqs, *, low=0.0) -> dict:
    freqs = np.asarray(freqs, dtype=float)
    return {"mesh_frequencies": freqs.tolist(), "max_frequency": float(freqs.max()), "min_frequency": min(low, float(freqs.min()))}


def test_phonon_gates_fail_a_wrong_student_and_an_imaginary_mode():
    grid = np.linspace(0.0, 7.0, 24).reshape(8, 3)
    teacher = {"systems": {"Cu": {"phonons": _spectra(grid)}, "B": {"phonons": _spectra(grid, low=-0.5)}}}
    close = {"systems": {"Cu": {"phonons": _spectra(grid + 0.1)}, "B": {"phonons": _spectra(grid, low=-0.8)}}}
    rows = {(r.property, r.system): r for r in ph.phonon_rows(teacher, close, AcceptanceGates())}
    assert rows[ph.MAE_LABEL, "Cu"].student == pytest.approx(0.1) and rows[ph.MAE_LABEL, "Cu"].passed
    assert rows[ph.MAX_LABEL, "Cu"].passed  # 0.1/7 = 1.4 % ≤ 5 %
    assert rows[ph.MIN_LABEL, "B"].passed  # imaginary, but so is the teacher's
    wrong = {"systems": {"Cu": {"phonons": _spectra(1.1 * grid, low=-0.3)}}}
    rows = {(r.property, r.system): r for r in ph.phonon_rows(teacher, wrong, AcceptanceGates())}
    assert rows[ph.MAE_LABEL, "Cu"].student == pytest.approx(0.35) and not rows[ph.MAE_LABEL, "Cu"].passed
    assert rows[ph.MAX_LABEL, "Cu"].difference == pytest.approx(0.7) and not rows[ph.MAX_LABEL, "Cu"].passed
    assert not rows[ph.MIN_LABEL, "Cu"].passed  # −0.3 THz where the teacher has none
    assert not any(rows[p, "B"].passed for p in (ph.MAE_LABEL, ph.MAX_LABEL, ph.MIN_LABEL))  # missing fails
    loose = AcceptanceGates(phonon_mae=0.4, phonon_max_rel=0.12, phonon_imaginary=0.5)
    rows = {(r.property, r.system): r for r in ph.phonon_rows(teacher, wrong, loose)}
    assert all(rows[p, "Cu"].passed for p in (ph.MAE_LABEL, ph.MAX_LABEL, ph.MIN_LABEL))


@pytest.mark.slow
def test_suite_gates_phonons_caches_them_and_plots_the_bands(tmp_path, emt):
    """Cu and L1_2 Cu3Au through the whole suite: a student with 16 % high frequencies fails
    the phonon gates (the teacher as its own student passes them), the teacher's spectra come
    from the cache the second time, and the card gets one band-structure plot per system."""
    options = AcceptanceOptions(
        nve_steps=20, hot_steps=10, eos_points=5, phonon_min_length=10.0, phonon_mesh=MESH, phonon_band_points=40
    )
    seeds = [phase("Cu", (1, 1, 1)), phase("Cu3Au", (1, 1, 1))]
    perfect = acceptance_suite(emt, "emt", seeds, options=options, cache_dir=tmp_path)
    rows = [r for r in perfect.rows if "phonon" in r.property]
    assert len(rows) == 6 and all(r.passed for r in rows), rows
    wrong = acceptance_suite(_ScaledEMT(1.02, 1.3), "emt", seeds, options=options, cache_dir=tmp_path)
    assert wrong.teacher_cached
    failed = {(r.property, r.system) for r in wrong.failures if "phonon" in r.property}
    assert failed == {(ph.MAE_LABEL, "Cu"), (ph.MAX_LABEL, "Cu"), (ph.MAE_LABEL, "Cu3Au"), (ph.MAX_LABEL, "Cu3Au")}
    top = next(r for r in wrong.rows if r.property == ph.MAX_LABEL and r.system == "Cu")
    assert top.student / top.teacher == pytest.approx(1.02 * np.sqrt(1.3), rel=1e-3)
    assert "phonons" not in wrong.to_dict()  # spectra stay out of the card's JSON
    section = ph.phonon_section(wrong.phonons, tmp_path / "report")
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == ["phonons_Cu.png", "phonons_Cu3Au.png"]
    assert section.data["Cu"]["supercell"] == [3, 3, 3] and "![phonons_Cu](phonons_Cu.png)" in section.markdown
    assert any("3×3×3 supercell of the 4-atom conventional cell" in line for line in section.markdown)
