"""The sampling kinds behind the acceptance suite's elastic constants and vacancy energy:
axial strains (C11 and C12 apart, not only B) and relaxation paths of point defects, with
EMT (Cu) as the cheap teacher."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.geometry import get_distances
from ase.units import GPa

from torchsim_distill.distill import properties as props
from torchsim_distill.distill.budget import DEFECT_STEP_SHARE, Costs, _Estimator
from torchsim_distill.distill.config import DistillConfig
from torchsim_distill.distill.defects import defect_cell, largest_void, void_candidates
from torchsim_distill.distill.sampling import (
    FAR_KINDS,
    SamplingOptions,
    kind_quotas,
    resolve_kinds,
    sample_configurations,
)
from torchsim_distill.distill.splitting import frame_group, split_frames
from torchsim_distill.distill.teachers import load_teacher

A_CU = 3.61


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("emt")


def _cu(reps=(2, 1, 1)) -> Atoms:
    return bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(reps)


def _strain(atoms: Atoms, seed: Atoms) -> np.ndarray:
    """The strain ε of ``atoms``' cell against the seed's: cell = seed cell · (I + ε)ᵀ."""
    return np.linalg.solve(seed.cell.array, atoms.cell.array).T - np.eye(3)


def _same(a: list[Atoms], b: list[Atoms]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.numbers, y.numbers) and np.array_equal(x.positions, y.positions)
        and np.array_equal(x.cell.array, y.cell.array) and x.info == y.info
        for x, y in zip(a, b, strict=True)
    )


# --- axial strains -----------------------------------------------------------------------


def test_axial_strains_are_diagonal_not_isotropic_and_within_bounds():
    seeds = [_cu((1, 1, 1)), bulk("Cu", "fcc", a=A_CU)]  # a cubic and a (non-orthogonal) primitive cell
    frames = sample_configurations(seeds, None, n_configs=40, seed=0, kinds=["axial_strain"], progress=False)
    assert len(frames) == 40
    patterns = Counter(a.info["strain_pattern"] for a in frames)
    assert set(patterns) == {"uniaxial", "biaxial", "tetragonal", "orthorhombic"}
    spread = []
    for atoms in frames:
        seed = seeds[atoms.info["seed_id"]]
        eps = _strain(atoms, seed)
        np.testing.assert_allclose(eps, np.diag(np.diag(eps)), atol=1e-12)  # normal strains only
        diagonal = np.diag(eps)
        np.testing.assert_allclose(diagonal, [atoms.info[f"strain_{x}"] for x in ("xx", "yy", "zz")], atol=1e-12)
        assert np.abs(diagonal).max() <= 0.04 + 1e-12  # SamplingOptions.max_strain
        assert np.ptp(diagonal) > 0  # never isotropic
        spread.append(np.ptp(diagonal))
        if atoms.info["strain_pattern"] == "tetragonal":  # volume kept to first order
            assert abs(diagonal.sum()) < 1e-12
        # positions follow the cell, plus the 0.02 Å jitter
        moved = atoms.positions - seed.positions @ (np.eye(3) + eps).T
        assert np.abs(moved).max() < 0.12
    assert np.median(spread) > 0.01  # not a few ppm off isotropic: C11 − C12 is excited


def test_axial_frames_determine_c11_and_c12_apart_where_isotropic_ones_give_only_b(teacher):
    """Fit σ_ii = C11 ε_ii + C12 (tr ε − ε_ii) + σ0 to EMT's stresses on the sampled frames and
    compare with the acceptance suite's central differences: the axial frames give both
    constants; the isotropic frames' design is rank 1 (only C11 + 2 C12, the bulk modulus)."""
    seed = _cu((2, 2, 2))
    options = SamplingOptions(max_strain=0.005)

    def design(kind):
        frames = sample_configurations([seed], None, n_configs=24, seed=1, kinds=[kind], options=options, progress=False)
        rows, rhs = [], []
        for atoms in frames:
            atoms.calc = teacher.calculator
            eps = np.diag(_strain(atoms, seed))
            sigma = atoms.get_stress(voigt=False) / GPa
            for i in range(3):
                rows.append([eps[i], eps.sum() - eps[i], 1.0])
                rhs.append(sigma[i, i])
        return np.array(rows), np.array(rhs)

    x_iso, _ = design("iso_strain")
    assert np.linalg.matrix_rank(x_iso[:, :2], tol=1e-9) == 1
    x, y = design("axial_strain")
    (c11, c12, _), *_ = np.linalg.lstsq(x, y, rcond=None)
    (reference,) = props.cubic_elastic_constants(teacher, [seed])
    assert c11 == pytest.approx(reference["C11"], rel=0.05)
    assert c12 == pytest.approx(reference["C12"], rel=0.05)
    assert c11 - c12 == pytest.approx(reference["C11"] - reference["C12"], rel=0.1)


# --- point defects -----------------------------------------------------------------------


@pytest.mark.parametrize(("atoms", "clearance"), [
    (bulk("Cu", "fcc", a=A_CU, cubic=True), A_CU / 2),  # octahedral site
    (bulk("Si", "diamond", a=5.43, cubic=True), np.sqrt(3) / 4 * 5.43),  # tetrahedral site
])
def test_the_largest_void_is_the_crystal_s_interstitial_site(atoms, clearance):
    point, found = largest_void(atoms)
    assert clearance - 0.15 <= found <= clearance + 1e-9
    _, distances = get_distances([point], atoms.positions, cell=atoms.cell, pbc=atoms.pbc)  # minimum image
    assert distances.min() == pytest.approx(found, abs=1e-9)
    points, clearances = void_candidates(atoms)
    assert len(points) > 1 and clearances.min() >= clearances.max() - 0.1
    with pytest.raises(ValueError, match="periodic in all three"):
        void_candidates(Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]]))


@pytest.fixture(scope="module")
def defect_frames(teacher):
    return sample_configurations([_cu()], teacher, n_configs=24, seed=0, kinds=["defect_relax"], progress=False)


@pytest.fixture(scope="module")
def crystal(teacher) -> Atoms:
    """The 8-atom seed as EMT relaxes it (the acceptance suite's reference crystal)."""
    return props.relax(teacher, [_cu()], cell=True)[0].atoms


def test_defect_paths_relax_vacancies_and_interstitials(teacher, defect_frames, crystal):
    seed = _cu()
    assert not np.allclose(crystal.cell.array, seed.cell.array, atol=1e-3)  # EMT's Cu is not at 3.61 Å
    paths = defaultdict(list)
    for atoms in defect_frames:
        assert atoms.info["kind"] == "defect_relax" and atoms.info["seed_id"] == 0
        # in the teacher's relaxed crystal repeated to the suite's vacancy cell (8 → 64 atoms), at fixed cell
        cell = defect_cell(crystal)
        np.testing.assert_allclose(atoms.cell.array, cell.cell.array, rtol=1e-3, atol=1e-9)
        assert len(cell) == 8 * len(seed) >= props.VACANCY_MIN_ATOMS
        expected = len(cell) - 1 if atoms.info["defect"] == "vacancy" else len(cell) + 1
        assert len(atoms) == expected
        paths[atoms.info["relax_run"]].append(atoms)
    assert len(defect_frames) == 24 and len(paths) == 4  # 6 frames per path (SamplingOptions.defect_frames)
    assert [p[0].info["defect"] for _, p in sorted(paths.items())] == ["vacancy", "interstitial"] * 2
    for path in paths.values():
        assert len({a.info["defect"] for a in path}) == 1
        assert all(np.array_equal(a.cell.array, path[0].cell.array) for a in path)
        steps = [a.info["relax_step"] for a in path]
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
        energies, fmax = [], []
        for atoms in path:
            atoms = atoms.copy()
            atoms.calc = teacher.calculator
            energies.append(atoms.get_potential_energy())
            fmax.append(np.linalg.norm(atoms.get_forces(), axis=1).max())
        assert energies[-1] < energies[0] - 0.05 and energies[-1] <= min(energies) + 1e-6
        assert np.all(np.diff(energies) < 1e-3), energies  # downhill along the path
        assert fmax[-1] < 0.05  # SamplingOptions.relax_fmax: the relaxed defect ends the path


def test_a_vacancy_path_ends_at_the_relaxed_vacancy_the_acceptance_suite_measures(teacher, defect_frames, crystal):
    """The last vacancy frame has the formation energy that the acceptance suite's code gives
    (the teacher's relaxed crystal, an atom removed, relaxed from the unrattled cell to 0.002
    eV/Å): the structure the property measures is in the data."""
    (e_vac,) = props.vacancy_formation_energies(teacher, [crystal])  # the suite's cell: 64 atoms
    cell = defect_cell(crystal)
    e_perfect = props.single_points(teacher, [cell])[0][0]
    n = len(cell)
    for run in {a.info["relax_run"] for a in defect_frames if a.info["defect"] == "vacancy"}:
        last = [a for a in defect_frames if a.info["relax_run"] == run][-1].copy()
        last.calc = teacher.calculator
        sampled = last.get_potential_energy() - (n - 1) / n * e_perfect
        assert sampled == pytest.approx(e_vac, abs=0.01)
    # the seed's own lattice constant would have given another energy
    (at_seed,) = props.vacancy_formation_energies(teacher, [_cu()])
    assert abs(at_seed - e_vac) > 0.01


def test_each_defect_path_stays_in_one_split(teacher, defect_frames):
    cheap = sample_configurations([_cu()], None, n_configs=30, seed=0, kinds=["rattle", "axial_strain"], progress=False)
    frames = cheap + defect_frames
    splits, how = split_frames(frames, seed=0)
    assert how.startswith("by trajectory within seeds")
    where = defaultdict(set)
    for split, members in enumerate(splits):
        for atoms in members:
            if atoms.info["kind"] == "defect_relax":
                where[frame_group(atoms, 0)].add(split)
    assert len(where) == 4 and all(len(s) == 1 for s in where.values())


def test_defaults_include_the_new_kinds_where_they_apply(teacher):
    eight = [bulk("Si", "diamond", a=5.43, cubic=True)]
    two = [bulk("Si", "diamond", a=5.43)]
    assert {"axial_strain", "defect_relax"} <= set(resolve_kinds(eight, teacher, None))
    kinds_two = resolve_kinds(two, teacher, None)
    assert "axial_strain" in kinds_two and "defect_relax" not in kinds_two
    assert "defect_relax" not in resolve_kinds(eight, None, None)  # no teacher, no relaxations
    assert "defect_relax" not in resolve_kinds(eight, teacher, None, defect_min_atoms=16)
    with pytest.raises(ValueError, match="needs a bulk seed .* with at least 8 atoms"):
        resolve_kinds(two, teacher, ["defect_relax"])
    with pytest.raises(ValueError, match="needs a teacher"):
        resolve_kinds(eight, None, ["defect_relax"])
    slab = _cu((2, 2, 1))
    slab.pbc = (True, True, False)
    vacuum = fcc111("Cu", (2, 2, 3), a=A_CU, vacuum=5.0, periodic=True)  # periodic, but its largest void is vacuum
    for not_bulk in (slab, vacuum):
        with pytest.raises(ValueError, match="needs a bulk seed"):
            resolve_kinds([not_bulk], teacher, ["defect_relax"])
    # an 8-atom fcc cell with EMT: every default kind gets frames, the far ones a tenth
    frames = sample_configurations([_cu()], teacher, n_configs=40, seed=0, progress=False)
    counts = Counter(a.info["kind"] for a in frames)
    assert set(counts) == {"rattle", "large_rattle", "iso_strain", "axial_strain", "compress", "shear_strain",
                           "vacancy", "md", "relax", "defect_relax"}
    assert sum(counts[k] for k in FAR_KINDS) == 4 and sum(counts.values()) == 40
    assert kind_quotas(list(counts), 40, 0.1)["defect_relax"] == counts["defect_relax"] == 4


def test_new_kinds_are_reproducible_and_leave_the_other_kinds_unchanged(teacher, defect_frames):
    again = sample_configurations([_cu()], teacher, n_configs=24, seed=0, kinds=["defect_relax"], progress=False)
    assert _same(defect_frames, again)
    other = sample_configurations([_cu()], teacher, n_configs=24, seed=1, kinds=["defect_relax"], progress=False)
    assert not _same(defect_frames, other)

    def sample(kinds, n):
        frames = sample_configurations([_cu()], teacher, n_configs=n, seed=3, kinds=kinds, progress=False)
        return {k: [a for a in frames if a.info["kind"] == k] for k in kinds}

    old = sample(["rattle", "iso_strain", "relax"], 24)
    new = sample(["rattle", "iso_strain", "axial_strain", "relax", "defect_relax"], 40)
    for kind in old:
        assert _same(old[kind], new[kind]), kind
    assert _same(sample(["axial_strain"], 8)["axial_strain"], new["axial_strain"])


def test_defect_options_are_checked():
    with pytest.raises(ValueError, match="defect_types must be some of"):
        SamplingOptions(defect_types=("antisite",))
    with pytest.raises(ValueError, match="defect_frames must be ≥ 1"):
        SamplingOptions(defect_frames=0)
    (one,) = sample_configurations([_cu()], "emt", n_configs=1, seed=0, kinds=["defect_relax"], progress=False)
    assert one.info["relax_step"] > 10  # a path's single frame is its relaxed end, not its first step
    only = sample_configurations([_cu()], "emt", n_configs=6, seed=0, kinds=["defect_relax"], progress=False,
                                 defect_types=("interstitial",), defect_frames=3)
    assert {a.info["defect"] for a in only} == {"interstitial"} and {len(a) for a in only} == {65}


def test_the_budget_counts_the_defect_relaxations(tmp_path, teacher):
    """The plan's sampling estimate counts the defect relaxations' teacher steps: the perfect
    crystals' relaxation, then one batch of the defect cells (the eligible seeds in turn),
    each DEFECT_STEP_SHARE of the step limit."""
    costs = Costs(teacher_system_s=0.05, teacher_atom_s=0.005, step_s={"small": 0.15}, forward_s={"small": 0.05},
                  import_s=10.0, atoms_per_frame=6.0, seconds=1.0)
    seeds = [_cu((1, 1, 1)), _cu(), _cu((2, 2, 1))]  # 4 atoms (no defects), 8 and 16
    config = DistillConfig(teacher="emt", structures=[], out=str(tmp_path), kinds=["rattle", "defect_relax"])
    sample, _ = _Estimator(costs, config, seeds, teacher).data(120)
    runs = 60 // SamplingOptions().defect_frames  # 10 runs, in the 8- and 16-atom seeds in turn
    steps = DEFECT_STEP_SHARE * SamplingOptions().relax_max_steps
    crystals = costs.teacher(2, 8 + 16)  # the two seeds relaxed first, then repeated to the suite's cells:
    cells = 5 * 64 + 5 * 128  # 8 atoms 2×2×2, 16 atoms 2×2×2 (the smallest k giving 24+ atoms)
    assert sample == pytest.approx(steps * (crystals + costs.teacher(runs, cells) + 2 * 0.025))
    cheap = DistillConfig(teacher="emt", structures=[], out=str(tmp_path), kinds=["rattle", "axial_strain"])
    assert _Estimator(costs, cheap, seeds, teacher).data(120)[0] == 0.0


def test_the_card_says_which_strains_and_defects_the_student_was_trained_on(defect_frames):
    from torchsim_distill.distill.sections import intended_use_section

    cheap = sample_configurations([_cu()], None, n_configs=8, seed=0, kinds=["axial_strain", "vacancy"], progress=False)
    section = intended_use_section(cheap + defect_frames, SamplingOptions())
    text = "\n".join(section.markdown)
    assert "isotropic and axial strain up to ±4 %" in text
    assert ("**Point defects**: unrelaxed vacancies (62–63 atoms); vacancy relaxation paths to the relaxed vacancy, at "
            "fixed cell (63–63 atoms); interstitial relaxation paths to the relaxed interstitial, at fixed cell (65–65 atoms).") in text
    assert section.data["point_defects"].startswith("unrelaxed vacancies")
    plain = intended_use_section([a for a in cheap if a.info["kind"] == "axial_strain"], SamplingOptions())
    assert "Point defects" not in "\n".join(plain.markdown) and "point_defects" not in plain.data
