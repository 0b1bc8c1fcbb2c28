"""DistilledCalculator: parity with DistilledTorchSimCalc, finite differences, ASE
dynamics and optimizers, memory over many calls, batched evaluation, errors."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase import Atoms, units
from ase.build import fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.stress import full_3x3_to_voigt_6_stress

from torchsim_distill.models.cu_au import rattled_alloy

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ase_calc(student_pt2):
    """One calculator with the default skin, shared by the tests that only read from it."""
    from torchsim_distill import DistilledCalculator

    return DistilledCalculator.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module's many tiny calls (4–32 atoms).

    Threads buy nothing at this size, and on a shared machine OpenMP's barriers
    wait for descheduled threads: measured 0.5 s instead of 4 ms per MD step with
    two threads on two busy cores. Restored afterwards.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def new_calc(student_pt2, **kwargs):
    from torchsim_distill import DistilledCalculator

    return DistilledCalculator.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True, **kwargs)


def structures() -> dict[str, Atoms]:
    triclinic = rattled_alloy((1, 1, 2), seed=3, rattle=0.1)
    triclinic.set_cell(triclinic.cell @ (np.eye(3) + 0.05 * np.array([[0, 1, 0.3], [0.2, 0, 0], [0, 0.4, -0.1]])), scale_atoms=True)
    slab = fcc111("Cu", size=(2, 2, 3), a=3.7, vacuum=5.0)
    slab.symbols[[1, 5, 7]] = "Au"
    cluster = Atoms("Cu3Au2", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [1.3, 1.3, 2.0], [3.0, 2.4, 1.2]])
    return {"bulk32": rattled_alloy((2, 2, 2), seed=1), "one_cell": rattled_alloy((1, 1, 1), seed=2),
            "triclinic": triclinic, "slab": slab, "cluster": cluster}


@pytest.mark.parametrize("name", ["bulk32", "one_cell", "triclinic", "slab", "cluster"])
def test_matches_distilled_torchsim_calc(ase_calc, calc, name):
    atoms = structures()[name]
    ref = calc(ts.io.atoms_to_state([atoms], CPU, torch.float64))
    atoms.calc = ase_calc
    assert abs(atoms.get_potential_energy() - ref["energy"].item()) < 1e-10
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"].numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(atoms.get_potential_energies(), ref["energies"].numpy(), rtol=0, atol=1e-10)
    if atoms.cell.rank == 3:
        stress = atoms.get_stress()
        assert stress.shape == (6,)
        np.testing.assert_allclose(stress, full_3x3_to_voigt_6_stress(ref["stress"][0].numpy()), rtol=0, atol=1e-10)
        np.testing.assert_allclose(atoms.get_stress(voigt=False), ref["stress"][0].numpy(), rtol=0, atol=1e-10)
    else:  # no volume, no stress: as ASE's EMT
        with pytest.raises(PropertyNotImplementedError):
            atoms.get_stress()


def test_wraps_an_existing_torchsim_calc(calc):
    from torchsim_distill import DistilledCalculator

    atoms = rattled_alloy((1, 1, 2), seed=4)
    atoms.calc = DistilledCalculator(calc)
    ref = calc(ts.io.atoms_to_state([atoms], CPU, torch.float64))
    assert abs(atoms.get_potential_energy() - ref["energy"].item()) < 1e-10
    from torchsim_distill.runtime.ase_calculator import DistilledCalculatorBase

    with pytest.raises(TypeError, match="DistilledTorchSimCalc"):  # the base takes ready calculators only
        DistilledCalculatorBase("student.nequip.pt2")


def test_forces_and_stress_equal_finite_differences(ase_calc):
    """ASE's own central differences: F = -dE/dx (through the skin's cached pairs) and σ = (1/V) dE/dε."""
    atoms = structures()["triclinic"]
    atoms.calc = ase_calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    np.testing.assert_allclose(forces, numeric, rtol=0, atol=2e-6)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), rtol=0, atol=1e-7)
    assert np.abs(forces).max() > 0.05 and np.abs(stress).max() > 1e-3  # not trivially zero


def test_nve_energy_is_conserved(student_pt2):
    """1000 velocity-Verlet steps of 1 fs at 300 K on 16 atoms, through the Verlet skin.

    Bound, 1e-4 eV/atom (0.4% of kT at 300 K): velocity Verlet on a smooth potential
    has a bounded energy error that scales as dt² with no secular drift; here it is
    ~3e-6 eV/atom at 1 fs (~6e-5 at 4 fs), identical with and without the skin.
    Forces that are not the energy's gradient, or cached pairs that miss atoms
    entering the cutoff, kick the energy at every such event and accumulate past it.
    """
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    calc = new_calc(student_pt2, skin=0.3)
    atoms = rattled_alloy((1, 2, 2), seed=5, rattle=0.02)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    totals = []
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=10)
    dyn.run(1000)
    totals = np.array(totals)
    drift = np.abs(totals - totals[0]).max() / len(atoms)
    assert np.isfinite(totals).all()
    assert drift < 1e-4, drift
    assert atoms.get_temperature() > 50  # it moved
    assert calc.model.neighbor_list.n_builds < 100  # the skin reused pairs over 1000+ calls


def test_memory_does_not_grow_over_many_calls(student_pt2):
    """2000 calls with small displacements: RSS and Python allocations stay flat after warm-up."""
    psutil = pytest.importorskip("psutil")
    calc = new_calc(student_pt2, skin=0.3)
    atoms = rattled_alloy((1, 1, 2), seed=6)
    atoms.calc = calc
    rng = np.random.default_rng(0)
    base = atoms.positions.copy()

    def calls(n: int) -> None:
        for _ in range(n):
            atoms.positions = base + rng.normal(scale=0.02, size=base.shape)
            atoms.get_forces()
            atoms.get_stress()

    calls(200)  # warm-up: allocator pools, neighbor buffers, ASE caches
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    calls(2000)
    gc.collect()
    rss_growth = psutil.Process().memory_info().rss - rss0
    # tracemalloc slows every allocation, so it watches a shorter stretch
    tracemalloc.start()
    py0 = tracemalloc.get_traced_memory()[0]
    calls(200)
    gc.collect()
    py_growth = tracemalloc.get_traced_memory()[0] - py0
    tracemalloc.stop()
    # Measured on 8 atoms: ~25 kB of Python growth over 300 calls and ~16 kB of RSS
    # over 2000 without a leak; keeping one Atoms copy per call (~1.5 kB) adds ~300 kB
    # over 200 calls. RSS catches native leaks of >= 2 kB per call (tensors, buffers).
    assert py_growth < 100_000, py_growth
    assert rss_growth < 4 * 2**20, rss_growth


def test_ase_dynamics_and_optimizers(ase_calc):
    """Short runs of Langevin, NPTBerendsen, BFGS and FIRE (with FrechetCellFilter)."""
    from ase.filters import FrechetCellFilter
    from ase.md.langevin import Langevin
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.optimize import BFGS, FIRE

    atoms = rattled_alloy((1, 1, 2), seed=7, rattle=0.02)
    atoms.calc = ase_calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=500, rng=np.random.default_rng(1))
    langevin = Langevin(atoms, timestep=2 * units.fs, temperature_K=500, friction=0.02, fixcm=False, rng=np.random.default_rng(2))
    langevin.run(40)
    assert np.isfinite(atoms.get_total_energy()) and 0 < atoms.get_temperature() < 5000

    v0 = atoms.get_volume()
    npt = NPTBerendsen(
        atoms, timestep=2 * units.fs, temperature_K=500, pressure_au=1.0 * units.bar,
        taut=50 * units.fs, taup=200 * units.fs, compressibility_au=4.6e-5 / units.bar,
    )
    npt.run(40)
    assert np.isfinite(atoms.get_total_energy()) and np.isfinite(atoms.get_stress()).all()
    assert atoms.get_volume() != v0  # the barostat acted on our stress

    for optimizer in (BFGS, FIRE):
        atoms = rattled_alloy((1, 1, 2), seed=8, rattle=0.1)
        atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)
        atoms.calc = ase_calc
        e0, v0 = atoms.get_potential_energy(), atoms.get_volume()
        filtered = FrechetCellFilter(atoms)
        opt = optimizer(filtered, logfile=None)
        converged = opt.run(fmax=0.05, steps=300)
        assert converged, optimizer.__name__
        assert atoms.get_potential_energy() < e0
        # the filter's generalized forces: atomic forces (in the deformed frame) and virial / n_atoms
        assert np.linalg.norm(filtered.get_forces(), axis=1).max() < 0.05
        assert np.abs(atoms.get_stress()).max() * atoms.get_volume() / len(atoms) < 0.05  # cell relaxed too
        assert atoms.get_volume() != v0


def test_evaluate_batch_equals_one_by_one(ase_calc):
    """Different sizes, cells and pbc (bulk, slab, molecule) in one model call."""
    systems = list(structures().values()) + [molecule("H2O")]
    systems[-1].symbols = "CuAu2"  # a bent Cu–Au trimer with H2O's geometry, no cell
    batch = ase_calc.evaluate_batch(systems)
    assert len(batch) == len(systems)
    for atoms, got in zip(systems, batch, strict=True):
        atoms.calc = ase_calc
        assert abs(got["energy"] - atoms.get_potential_energy()) < 1e-10
        assert got["free_energy"] == got["energy"]
        np.testing.assert_allclose(got["forces"], atoms.get_forces(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(got["energies"], atoms.get_potential_energies(), rtol=0, atol=1e-10)
        if atoms.cell.rank == 3:
            np.testing.assert_allclose(got["stress"], atoms.get_stress(), rtol=0, atol=1e-10)
        else:
            assert "stress" not in got
    assert ase_calc.evaluate_batch([]) == []
    with pytest.raises(ValueError, match="structure 1 of the batch has no atoms"):
        ase_calc.evaluate_batch([systems[0], Atoms()])


def test_unknown_element_is_named(ase_calc):
    atoms = rattled_alloy((1, 1, 1), seed=9)
    atoms.symbols[0] = "Fe"
    atoms.calc = ase_calc
    with pytest.raises(ValueError, match=r"\['Fe'\].*not covered"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match="Fe"):
        ase_calc.evaluate_batch([rattled_alloy((1, 1, 1)), atoms])


def test_custom_species_map_and_missing_file(ase_calc, student_pt2, tmp_path):
    from torchsim_distill import DistilledCalculator

    mapped = DistilledCalculator.from_compiled_model(student_pt2, chemical_species_to_atom_type_map={"Ag": "Cu", "Au": "Au"})
    atoms = rattled_alloy((1, 1, 1), seed=10)
    atoms.calc = ase_calc
    as_silver = atoms.copy()
    as_silver.symbols[as_silver.symbols == "Cu"] = "Ag"  # Ag plays the Cu type
    as_silver.calc = mapped
    assert as_silver.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DistilledCalculator.from_compiled_model(tmp_path / "missing.nequip.pt2", chemical_species_to_atom_type_map=True)
