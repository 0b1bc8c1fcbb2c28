"""The property acceptance suite: each property against a test-local ASE computation, and
the suite's gates on a perfect student (the teacher itself) and on a deliberately wrong one.

Every independent check uses ASE's EMT directly (``atoms.get_stress()``, ``ase.eos``,
``ase.optimize.BFGS``); the package's side runs the same EMT through torch-sim.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.io import read, write
from ase.optimize import BFGS
from ase.units import GPa

from torchsim_distill.distill import acceptance
from torchsim_distill.distill import properties as props
from torchsim_distill.distill.acceptance import AcceptanceGates, AcceptanceOptions, acceptance_suite
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.models.cu_au import phase, random_alloy
from torchsim_distill.utils.atoms_info import RANDOM_ALLOY_KEY


@pytest.fixture(scope="module")
def emt():
    return load_teacher("emt")


def _ase_emt_eos(symbols: list[str], a_guess: float) -> tuple[float, float, float]:
    """(a0 Å, E0 eV/atom, B GPa) of a 4-site cubic fcc cell with EMT, from ase.eos over ±5 % volume."""
    volumes, energies = [], []
    for a in a_guess * np.linspace(0.983, 1.017, 9):
        atoms = bulk("Cu", "fcc", a=a, cubic=True)
        atoms.set_chemical_symbols(symbols)
        atoms.calc = EMT()
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    return v0 ** (1 / 3), e0 / 4, b / GPa


def _cubic(symbols: list[str], a: float, reps=(1, 1, 1)) -> Atoms:
    atoms = bulk("Cu", "fcc", a=a, cubic=True)
    atoms.set_chemical_symbols(symbols)
    return atoms.repeat(reps)


# -- pure functions -------------------------------------------------------------------------


def test_js_divergence_is_zero_for_identical_and_ln2_nats_for_disjoint_histograms():
    p = np.array([0.0, 1.0, 3.0, 2.0, 0.0])
    assert props.js_divergence(p, 5 * p) == pytest.approx(0.0, abs=1e-15)  # normalized first
    assert props.js_divergence([1, 2, 0, 0], [0, 0, 3, 1]) == pytest.approx(math.log(2))  # nats, not bits
    q = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    assert props.js_divergence(p, q) == pytest.approx(props.js_divergence(q, p))
    assert 0 < props.js_divergence(p, q) < math.log(2)
    assert math.isnan(props.js_divergence([0, 0], [1, 0]))
    with pytest.raises(ValueError, match="different bins"):
        props.js_divergence([1, 2], [1, 2, 3])


def test_energy_drift_is_the_slope_in_ev_per_atom_per_ns():
    times = np.linspace(0.0, 2.0, 201)  # ps
    rng = np.random.default_rng(0)
    energy = np.stack([-3.5 + 0.004 * times, -2.0 - 0.02 * times + 1e-7 * rng.normal(size=times.size)], axis=1)
    np.testing.assert_allclose(props.energy_drift(times, energy), [4.0, -20.0], rtol=1e-4)  # eV/atom/ps × 1000
    assert props.energy_drift(times, energy[:, 0]) == pytest.approx(4.0)
    energy[50, 1] = np.nan  # an exploded run
    assert math.isnan(props.energy_drift(times, energy)[1])


def test_formation_energy_formula():
    atoms = Atoms("Cu3Au")
    # (E − 3 ε_Cu − ε_Au) / 4
    assert props.formation_energy(atoms, -10.0, {"Cu": -3.0, "Au": -0.5}) == pytest.approx((-10.0 + 9.0 + 0.5) / 4)
    with pytest.raises(KeyError, match="Au"):
        props.formation_energy(atoms, -10.0, {"Cu": -3.0})


def test_bulk_and_cubic_classification():
    cu = _cubic(["Cu"] * 4, 3.61, (2, 2, 2))
    assert props.is_bulk(cu) and props.is_cubic(cu)
    assert props.is_cubic(phase("Cu3Au", (2, 2, 2)))  # L1_2: cubic
    assert props.is_bulk(phase("CuAu")) and not props.is_cubic(phase("CuAu"))  # L1_0: tetragonal order in a cubic box
    assert props.is_bulk(bulk("Cu")) and not props.is_cubic(bulk("Cu"))  # primitive fcc cell: not axis-aligned
    slab = fcc111("Cu", size=(2, 2, 4), vacuum=6.0, periodic=True)
    assert not props.is_bulk(slab) and not props.is_cubic(slab)
    stretched = cu.copy()
    stretched.set_cell(cu.cell.array @ np.diag([1.0, 1.0, 1.02]), scale_atoms=True)
    assert not props.is_cubic(stretched)


def test_pair_distances_match_ase_all_distances():
    atoms = _cubic(["Cu", "Au", "Cu", "Cu"], 3.7, (4, 4, 4))  # 14.8 Å: one image within 6 Å
    atoms.rattle(0.1, seed=3)
    d = atoms.get_all_distances(mic=True)[~np.eye(len(atoms), dtype=bool)]
    assert props.min_pair_distance([atoms]) == pytest.approx(d.min())
    expected = np.histogram(d[d < 6.0], bins=60, range=(0.0, 6.0))[0]
    np.testing.assert_allclose(props.pair_distance_histogram([atoms, atoms], r_max=6.0, bins=60), expected / expected.sum())


class _OffsetEMT(EMT):
    """EMT plus 1 eV per cell: not extensive."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] += 1.0
        self.results["free_energy"] = self.results["energy"]


def test_extensivity_error_is_zero_for_emt_and_catches_an_offset(emt):
    cells = [phase("Cu"), phase("Cu3Au")]
    assert max(props.extensivity_errors(emt, cells, repeat=(2, 1, 1))) < 1e-10
    # |(E + 1) − 2 (E + 1)| / (2 N) = 1 / (2 N) eV/atom
    errors = props.extensivity_errors(load_teacher(_OffsetEMT()), cells, repeat=(2, 1, 1))
    np.testing.assert_allclose(errors, [1 / 64, 1 / 64], rtol=1e-9)


# -- properties against ASE ---------------------------------------------------------------


def test_relaxation_and_bulk_modulus_match_ase_eos(emt):
    a0, e0, b0 = _ase_emt_eos(["Cu"] * 4, 3.6)
    (relaxed,) = props.relax(emt, [_cubic(["Cu"] * 4, 3.7, (2, 2, 2))])
    assert relaxed.converged
    assert relaxed.volume_per_atom == pytest.approx(a0**3 / 4, rel=5e-4)  # residual stress at fmax 0.002
    assert relaxed.energy_per_atom == pytest.approx(e0, abs=1e-5)
    (fit,) = props.equation_of_state(emt, [relaxed.atoms])
    assert fit.bulk_modulus == pytest.approx(b0, rel=0.01)
    assert fit.v0 == pytest.approx(a0**3 / 4, rel=5e-4)


def test_cubic_elastic_constants_match_ase_stress_finite_differences(emt):
    a0, _, _ = _ase_emt_eos(["Cu"] * 4, 3.6)
    atoms = _cubic(["Cu"] * 4, a0)
    eps = 0.002  # not the package's 0.005

    def stress(strain: np.ndarray) -> np.ndarray:
        s = atoms.copy()
        s.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
        s.calc = EMT()
        return s.get_stress(voigt=True) / GPa  # xx yy zz yz xz xy

    ux, shear = np.zeros((3, 3)), np.zeros((3, 3))
    ux[0, 0] = eps
    shear[1, 2] = shear[2, 1] = eps
    c11 = (stress(ux)[0] - stress(-ux)[0]) / (2 * eps)
    c12 = (stress(ux)[1] - stress(-ux)[1]) / (2 * eps)
    c44 = (stress(shear)[3] - stress(-shear)[3]) / (2 * 2 * eps)  # engineering shear γ = 2ε
    (c,) = props.cubic_elastic_constants(emt, [atoms.repeat((2, 2, 2))])
    assert c["C11"] == pytest.approx(c11, rel=2e-3)
    assert c["C12"] == pytest.approx(c12, rel=2e-3)
    assert c["C44"] == pytest.approx(c44, rel=2e-3)
    assert c11 > c12 > 0 and c44 > 0


def test_vacancy_formation_energy_matches_ase_bfgs(emt):
    a0, _, _ = _ase_emt_eos(["Cu"] * 4, 3.6)
    perfect = _cubic(["Cu"] * 4, a0, (2, 2, 2))
    perfect.calc = EMT()
    e_perfect = perfect.get_potential_energy()
    defect = perfect.copy()
    del defect[0]
    defect.calc = EMT()
    BFGS(defect, logfile=None).run(fmax=0.002)
    expected = defect.get_potential_energy() - 31 / 32 * e_perfect
    (e_vac,) = props.vacancy_formation_energies(emt, [_cubic(["Cu"] * 4, a0)], min_atoms=24)  # repeated to 32 atoms
    assert e_vac == pytest.approx(expected, abs=3e-3)
    assert 0.5 < e_vac < 2.0


def test_surface_energy_matches_ase_bfgs(emt):
    """γ(111) of Cu: a slab relaxed by ASE's BFGS with EMT against the EOS bulk energy."""
    a0, e_bulk, _ = _ase_emt_eos(["Cu"] * 4, 3.6)
    slab = fcc111("Cu", (2, 2, 5), a=a0, vacuum=6.0, periodic=True)
    reference = slab.copy()
    reference.calc = EMT()
    BFGS(reference, logfile=None).run(fmax=0.002)
    area = np.linalg.norm(np.cross(slab.cell[0], slab.cell[1]))
    expected = (reference.get_potential_energy() - len(slab) * e_bulk) / (2 * area) * 16.02176634  # J/m²
    (relaxed,) = props.relax(emt, [slab], cell=False)
    assert props.vacuum_axes(slab) == [2] and props.vacuum_axes(_cubic(["Cu"] * 4, a0)) == []
    assert props.surface_energy(relaxed.atoms, relaxed.energy, e_bulk) == pytest.approx(expected, rel=1e-3)
    assert 0.5 < expected < 2.5
    alloy = slab.copy()
    alloy.symbols[0] = "Au"
    with pytest.raises(ValueError, match="elemental slab with one vacuum layer; got AuCu19"):
        props.surface_energy(alloy, 0.0, e_bulk)
    with pytest.raises(ValueError, match=r"vacuum along cell vectors \[\]"):
        props.surface_energy(_cubic(["Cu"] * 4, a0), 0.0, e_bulk)


def test_formation_energy_of_cu3au_matches_ase_eos(emt):
    _, e_cu, _ = _ase_emt_eos(["Cu"] * 4, 3.6)
    _, e_au, _ = _ase_emt_eos(["Au"] * 4, 4.08)
    _, e_cu3au, _ = _ase_emt_eos(["Au", "Cu", "Cu", "Cu"], 3.75)  # L1_2: no internal relaxation
    expected = e_cu3au - (3 * e_cu + e_au) / 4
    relaxed = props.relax(emt, [phase("Cu", (1, 1, 1)), phase("Au", (1, 1, 1)), phase("Cu3Au", (1, 1, 1))])
    refs = {"Cu": relaxed[0].energy_per_atom, "Au": relaxed[1].energy_per_atom}
    assert props.formation_energy(relaxed[2].atoms, relaxed[2].energy, refs) == pytest.approx(expected, abs=1e-4)
    assert expected < 0  # EMT orders Cu3Au


def test_nve_drift_is_small_with_a_small_timestep_and_large_with_an_absurd_one(emt):
    (relaxed,) = props.relax(emt, [phase("Cu", (2, 2, 2))])
    small = props.run_md(emt, [relaxed.atoms], temperature=600.0, timestep=1.0, steps=400, stride=100)
    absurd = props.run_md(emt, [relaxed.atoms], temperature=600.0, timestep=30.0, steps=60, stride=100)
    assert small.total_energy.shape == (401, 1) and small.times[-1] == pytest.approx(0.4)
    assert abs(props.energy_drift(small.times, small.total_energy)[0]) < 0.005  # eV/atom/ns
    drift = props.energy_drift(absurd.times, absurd.total_energy)[0]
    assert not abs(drift) < 1.0  # blows up (or NaN)
    assert len(small.frames[0]) == 4


def test_hot_md_keeps_emt_atoms_apart(emt):
    (relaxed,) = props.relax(emt, [phase("Cu", (2, 2, 2))])
    run = props.run_md(emt, [relaxed.atoms], ensemble="nvt_langevin", temperature=2250.0, steps=100, stride=10)
    closest = props.min_pair_distance(run.frames[0])
    assert 0.6 * props.shortest_bond(relaxed.atoms) < closest < props.shortest_bond(relaxed.atoms)
    with pytest.raises(ValueError, match="ensemble"):
        props.run_md(emt, [relaxed.atoms], ensemble="npt", temperature=300.0)


# -- the suite -------------------------------------------------------------------------------


def test_cache_key_depends_on_seeds_options_and_teacher():
    seeds = [phase("Cu"), phase("Au")]
    key = acceptance.cache_key(seeds, AcceptanceOptions(), "emt")
    assert key == acceptance.cache_key([s.copy() for s in seeds], AcceptanceOptions(), "emt")
    assert key != acceptance.cache_key(seeds[:1], AcceptanceOptions(), "emt")
    assert key != acceptance.cache_key(seeds, AcceptanceOptions(nve_steps=10), "emt")
    assert key != acceptance.cache_key(seeds, AcceptanceOptions(), "sevennet-0")
    assert AcceptanceOptions(sampling_temperatures=[300, 1000]).hot_temperature == 1500.0


class _WrongEMT(Calculator):
    """EMT of the structure expanded by ``lattice`` with energies × ``energy``: a student
    with a 2 % short lattice (~6 % small volumes) and 30 % stiff, energetic bonds.

    E'(r) = α E(λ r), so F' = α λ F(λ r) and σ' = α λ³ σ(λ r) (the volume shrinks by λ³).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, lattice: float = 1.02, energy: float = 1.3):
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


SEEDS = ("Cu", "Au", "Cu3Au")


def _seeds() -> list[Atoms]:
    """The three phases (32 atoms) and a Cu(111) slab."""
    slab = fcc111("Cu", (2, 2, 4), a=3.59, vacuum=6.0, periodic=True)
    slab.info["name"] = "Cu(111)"
    return [*(phase(s, (2, 2, 2)) for s in SEEDS), slab]


@pytest.fixture(scope="module")
def perfect_run(tmp_path_factory, emt):
    """The suite with the teacher as its own student (measures and caches the teacher side)."""
    cache = tmp_path_factory.mktemp("acceptance-cache")
    report = acceptance_suite(emt, "emt", _seeds(), cache_dir=cache)
    return report, cache


@pytest.mark.slow
def test_teacher_as_student_has_zero_differences_and_passes_every_gate(perfect_run):
    report, cache = perfect_run
    assert report.passed, report.to_markdown()
    assert not report.teacher_cached and len(list(cache.glob("acceptance-teacher-*.json"))) == 1
    # the same model measured twice: equal up to round-off (the EOS fit's least squares can
    # differ in the last bits between calls with a multithreaded BLAS: 6e-12 relative was seen)
    off = [r for r in report.rows if r.difference is not None and abs(r.difference) > 1e-9 * max(1.0, abs(r.teacher))]
    assert not off, off
    assert all(r.student == 0.0 for r in report.rows if r.property.startswith("RDF"))
    by_property: dict[str, set[str]] = {}
    for r in report.rows:
        by_property.setdefault(r.property, set()).add(r.system)
    # every seed gets every property that applies: vacancies for the elements, formation for the compound
    assert by_property["C44"] == {"Cu", "Au", "Cu3Au"}
    assert by_property["NVE energy drift"] == {"Cu", "Au", "Cu3Au", "Cu(111)"}
    assert by_property["vacancy formation energy"] == {"Cu", "Au"}
    assert by_property["formation energy"] == {"Cu3Au"}
    assert by_property["surface energy"] == {"Cu(111)"}
    # 12 bulk properties × 3 phases, less Cu3Au's vacancy and Cu's, Au's formation; the slab's
    # surface energy, extensivity, NVE drift, hot-MD approach and RDF; 3 phonon rows per phase
    assert len(report.rows) == 12 * 3 - 1 - 2 + 5 + 3 * 3
    assert by_property["phonon frequency MAE (q-grid)"] == {"Cu", "Au", "Cu3Au"}
    assert {p for p, systems in by_property.items() if "Cu(111)" in systems} == {
        "surface energy", "extensivity |E(kN) − k·E(N)|/kN", "NVE energy drift", "hot-MD closest approach",
        "RDF Jensen–Shannon divergence"}
    assert report.teacher_seconds > 0 and report.student_seconds > 0
    assert report.seconds >= report.student_seconds  # the whole call includes the student side

    card = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert card["passed"] and card["n_failures"] == 0 and len(card["rows"]) == len(report.rows)
    md = report.to_markdown()
    assert md.count("✓") == len(report.rows) and "✗" not in md
    assert f"{report.seconds:.1f} s" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert all(line.replace("\\|", "").count("|") == 9 for line in table)  # 8 columns, escaped pipes


@pytest.mark.slow
def test_wrong_student_fails_its_gates_and_the_teacher_cache_is_reused(perfect_run, monkeypatch):
    _, cache = perfect_run
    measured = []
    real_measure = acceptance.measure_properties

    def spy(model, *args, **kwargs):
        measured.append(model)
        return real_measure(model, *args, **kwargs)

    monkeypatch.setattr(acceptance, "measure_properties", spy)
    report = acceptance_suite(_WrongEMT(), "emt", _seeds(), cache_dir=cache)
    assert report.teacher_cached and len(measured) == 1  # only the student was measured
    assert isinstance(measured[0].calculator, _WrongEMT)

    failed = {r.property for r in report.failures}
    assert failed >= {
        "volume per atom (relaxed)", "bulk modulus (Birch–Murnaghan)", "C11", "C12", "C44",
        "vacancy formation energy", "surface energy", "RDF Jensen–Shannon divergence",
    }
    # what the wrong lattice and energy scale leave intact must still pass
    kept = {"NVE energy drift", "hot-MD closest approach", "extensivity |E(kN) − k·E(N)|/kN"}
    assert not failed & kept
    volume = next(r for r in report.rows if r.property.startswith("volume") and r.system == "Cu")
    assert volume.difference / volume.teacher == pytest.approx(1.02**-3 - 1, rel=0.02)
    assert not report.passed and "✗" in report.to_markdown()
    assert "cached" in report.to_markdown()


def test_teacher_side_measured_ahead_is_what_the_suite_reads(tmp_path, emt):
    """teacher_properties fills the cache that acceptance_suite then reads (a slow teacher is
    measured while the student trains)."""
    from torchsim_distill.distill.acceptance import teacher_properties

    seeds, options = [phase("Cu", (1, 1, 1))], AcceptanceOptions(nve_steps=20, hot_steps=10, eos_points=5)
    first, cached = teacher_properties("emt", seeds, options=options, cache_dir=tmp_path)
    assert not cached and first["systems"]["Cu"]["C44"] > 0
    again, cached = teacher_properties("emt", seeds, options=options, cache_dir=tmp_path)
    assert cached and again == first
    report = acceptance_suite(emt, "emt", seeds, options=options, cache_dir=tmp_path)
    assert report.teacher_cached
    c44 = next(r for r in report.rows if r.property == "C44")
    assert c44.teacher == first["systems"]["Cu"]["C44"] and c44.difference == pytest.approx(0, abs=1e-9)


def test_gates_compare_student_with_teacher():
    """Each gate kind on hand-made measurements: |Δ|, relative, 'x % or y GPa', |student| ≤ and ≥ a bond fraction."""
    teacher = {"systems": {"X": {
        "energy_per_atom": -3.0, "volume_per_atom": 10.0, "C11": 200.0, "C44": 20.0, "nve_drift": 0.0,
        "hot_md_min_distance": 2.0, "shortest_bond": 2.5, "rdf": [0, 1, 1, 0], "formation_energy": -0.1,
    }}}
    student = {"systems": {"X": {
        "energy_per_atom": -3.02, "volume_per_atom": 10.04, "C11": 178.0, "C44": 24.0, "nve_drift": -0.02,
        "hot_md_min_distance": 1.4, "rdf": [0, 1, 1, 0], "formation_energy": None,
    }}}
    rows = {r.property: r for r in acceptance.compare(teacher, student, AcceptanceGates())}
    assert rows["energy per atom (relaxed)"].difference == pytest.approx(-0.02) and not rows["energy per atom (relaxed)"].passed
    assert rows["volume per atom (relaxed)"].passed  # 0.4 % ≤ 0.5 %
    assert not rows["C11"].passed  # 22 GPa > max(10 % of 200, 5)
    assert rows["C44"].passed  # 4 GPa: more than 10 % of 20 but within 5 GPa
    assert not rows["NVE energy drift"].passed  # |−0.02| > 0.01
    assert not rows["hot-MD closest approach"].passed and "1.5 Å" in rows["hot-MD closest approach"].gate  # 0.6 × 2.5
    assert rows["RDF Jensen–Shannon divergence"].student == 0.0 and rows["RDF Jensen–Shannon divergence"].passed
    assert rows["formation energy"].student is None and not rows["formation energy"].passed  # missing fails
    assert "C12" not in rows  # measured on neither side: no row
    loose = AcceptanceGates(energy_per_atom=0.05, modulus_rel=0.1, modulus_abs=25.0, nve_drift=0.05, min_distance_fraction=0.5)
    rows = {r.property: r for r in acceptance.compare(teacher, student, loose)}
    assert rows["energy per atom (relaxed)"].passed and rows["C11"].passed
    assert rows["NVE energy drift"].passed and rows["hot-MD closest approach"].passed


def test_random_alloys_formation_energies_are_gated_as_mixing_energies(tmp_path):
    """The same measured formation energy: 4 meV/atom off passes an ordered phase's 5 meV/atom
    gate and fails a random alloy's 3 meV/atom one; the tag survives the seeds' extxyz file."""
    teacher = {"systems": {"L12": {"formation_energy": -0.020}, "random": {"formation_energy": -0.010}}}
    student = {"systems": {"L12": {"formation_energy": -0.024}, "random": {"formation_energy": -0.014}}}
    rows = {(r.property, r.system): r for r in acceptance.compare(teacher, student, AcceptanceGates(), disordered={"random"})}
    assert set(rows) == {("formation energy", "L12"), ("mixing energy (random alloy)", "random")}
    assert rows["formation energy", "L12"].passed and "0.005" in rows["formation energy", "L12"].gate
    mixing = rows["mixing energy (random alloy)", "random"]
    assert mixing.difference == pytest.approx(-0.004) and not mixing.passed and "0.003" in mixing.gate
    assert acceptance.compare(teacher, student, AcceptanceGates(mixing_energy=0.005), disordered={"random"})[-1].passed
    alloy = random_alloy(0.5, (1, 1, 2), np.random.default_rng(0))
    write(tmp_path / "seeds.xyz", [alloy, phase("Cu3Au", (1, 1, 1))], format="extxyz")
    tags = [a.info.get(RANDOM_ALLOY_KEY, False) for a in read(tmp_path / "seeds.xyz", index=":")]
    assert tags == [True, False]


def test_cached_teacher_results_take_todays_system_names():
    """The cache is keyed by structures, not names: naming a seed later (``info["name"]``)
    must not cost an hour of teacher MD nor leave the two sides under different names."""
    from torchsim_distill.distill.acceptance import _renamed

    cached = {"version": 1, "systems": {"Cu": {"c44": 1.0}, "AuCu3": {"c44": 2.0}}, "errors": {"AuCu3": "x"}}
    renamed = _renamed(cached, ["Cu", "Cu3Au"])
    assert renamed["systems"] == {"Cu": {"c44": 1.0}, "Cu3Au": {"c44": 2.0}} and renamed["errors"] == {"Cu3Au": "x"}
    assert _renamed(cached, ["Cu", "AuCu3"]) is cached
    assert _renamed(cached, ["Cu"]) is cached  # other structures: not this cache's to rename


def test_rdf_row_shows_the_teachers_own_value():
    from torchsim_distill.distill.acceptance_gates import AcceptanceGates, compare

    hist = [0.0, 1.0, 3.0, 1.0]
    rows = compare({"systems": {"Cu": {"rdf": hist}}}, {"systems": {"Cu": {"rdf": [0.0, 3.0, 1.0, 1.0]}}},
                   AcceptanceGates())
    (row,) = [r for r in rows if r.property.startswith("RDF")]
    assert row.teacher == 0.0 and row.student > 0 and row.difference == row.student


class _CountingEMT(EMT):
    """EMT that counts the atoms it evaluates (one class-wide tally: the teacher deep-copies
    its calculator per system)."""

    atoms_evaluated = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        type(self).atoms_evaluated += len(self.atoms)


_CHEAP = AcceptanceOptions(relax_max_steps=60, eos_points=5, nve_steps=20, md_stride=5, hot_steps=10, phonons=False)


@pytest.mark.slow
def test_one_crystal_in_three_supercells_is_measured_once_and_the_card_says_so(tmp_path):
    """What a user pays: the teacher's atom-evaluations of the suite with the three copies
    measured once against each measured (both sides: the student here is the teacher too)."""
    cu = _cubic(["Cu"] * 4, 3.61)
    seeds = [cu, cu.repeat((2, 1, 1)), cu.repeat(2)]
    cost = {}
    for merge in (True, False):
        options = dataclasses.replace(_CHEAP, merge_same_crystals=merge)
        _CountingEMT.atoms_evaluated = 0
        report = acceptance_suite(load_teacher(_CountingEMT()), load_teacher(_CountingEMT()), seeds, options=options,
                                  cache_dir=tmp_path / str(merge))
        cost[merge] = (_CountingEMT.atoms_evaluated, report.teacher_seconds, report)
    merged_report = cost[True][2]
    assert {r.system for r in merged_report.rows} == {"Cu"}
    assert merged_report.merged == {"Cu": ["Cu#2", "Cu#3"]}
    assert "Cu#2, Cu#3 as Cu" in merged_report.to_markdown()
    assert {r.system for r in cost[False][2].rows} == {"Cu", "Cu#2", "Cu#3"}
    # the static properties of the cell measured are those it has measured beside its copies
    # (the MD rows draw their velocities for the batch, so they differ with the batch)
    alone = {r.property: r.teacher for r in cost[False][2].rows if r.system == "Cu"}
    static = [r for r in merged_report.rows if "MD" not in r.property and "NVE" not in r.property
              and "RDF" not in r.property and "extensivity" not in r.property]
    assert len(static) >= 7
    assert [r.teacher for r in static] == pytest.approx([alone[r.property] for r in static], rel=1e-6)
    # 4 + 8 + 32 atoms against 4: far fewer atom-evaluations (vacancy cells are shared sizes)
    print(f"\natom-evaluations merged {cost[True][0]} vs {cost[False][0]}; teacher s {cost[True][1]:.1f} vs {cost[False][1]:.1f}")
    assert cost[True][0] < 0.4 * cost[False][0]
    assert cost[True][1] < cost[False][1]
