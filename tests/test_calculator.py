"""DistilledTorchSimCalc against independent references: eager nequip, nequip's
torch-sim calculator on the same file, finite differences, and itself one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.stress import voigt_6_to_full_3x3_stress

from torchsim_distill.models.cu_au import rattled_alloy

CPU = torch.device("cpu")


def reference(eager_calc, atoms: Atoms) -> dict[str, np.ndarray]:
    """Energy, forces, stress of one system from nequip's eager ASE calculator."""
    atoms = atoms.copy()
    atoms.calc = eager_calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.cell.volume > 1e-8 and atoms.pbc.any():
        out["stress"] = voigt_6_to_full_3x3_stress(atoms.get_stress())
    return out


def assert_matches_reference(calc, eager_calc, systems: list[Atoms], tol: float = 1e-5) -> None:
    state = ts.io.atoms_to_state(systems, CPU, torch.float64)
    out = calc(state)
    assert out["energy"].shape == (len(systems),)
    assert out["forces"].shape == (state.n_atoms, 3)
    assert out["stress"].shape == (len(systems), 3, 3)
    for k, atoms in enumerate(systems):
        ref = reference(eager_calc, atoms)
        assert abs(out["energy"][k].item() - ref["energy"]) <= tol, (k, atoms)
        f = out["forces"][state.system_idx == k].numpy()
        np.testing.assert_allclose(f, ref["forces"], atol=tol)
        if "stress" in ref:
            np.testing.assert_allclose(out["stress"][k].numpy(), ref["stress"], atol=tol)


def test_equals_eager_model_on_a_mixed_batch(calc, eager_calc):
    systems = [rattled_alloy((2, 2, 2), seed=1), rattled_alloy((1, 1, 2), seed=2, x_au=0.7), rattled_alloy((3, 2, 2), seed=3, x_au=0.1)]
    assert_matches_reference(calc, eager_calc, systems)


def test_equals_nequip_torchsim_calc_on_same_file(calc, student_pt2):
    from nequip.integrations.torchsim import NequIPTorchSimCalc

    ref = NequIPTorchSimCalc.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map=True, neighborlist_backend="alchemiops"
    )
    state = ts.io.atoms_to_state([rattled_alloy(seed=4), rattled_alloy((1, 2, 2), seed=5)], CPU, torch.float64)
    ours, theirs = calc(state), ref(state)
    for key in ("energy", "forces", "stress"):
        scale = theirs[key].abs().max().clamp_min(1e-12)
        assert ((ours[key] - theirs[key]).abs().max() / scale).item() <= 1e-6, key


@pytest.mark.parametrize(
    "name, atoms",
    [
        ("triclinic", bulk("Cu", "fcc", a=3.7).repeat((2, 3, 1))),
        ("primitive-1-atom", bulk("Au", "fcc", a=4.08)),
        ("primitive-2-atom", bulk("CuAu", "rocksalt", a=5.2)),
        ("hcp-small-cell", bulk("Cu", "hcp", a=2.6, c=4.2)),
    ],
)
def test_small_and_triclinic_cells_match_eager(calc, eager_calc, name, atoms):
    atoms.rattle(0.03, seed=7)
    assert min(np.linalg.norm(atoms.cell, axis=1)) < 2 * calc.r_max or name == "triclinic"
    assert_matches_reference(calc, eager_calc, [atoms])


def _molecule() -> Atoms:
    mol = molecule("CH3CH2OH")
    mol.set_chemical_symbols(["Cu" if s in "CH" else "Au" for s in mol.get_chemical_symbols()])
    mol.positions *= 1.9  # metal-like bond lengths
    return mol


def test_molecule_without_pbc(calc, eager_calc):
    mol = _molecule()
    assert not mol.pbc.any() and mol.cell.volume == 0
    assert_matches_reference(calc, eager_calc, [mol])
    out = calc(ts.io.atoms_to_state([mol], CPU, torch.float64))
    assert torch.all(out["stress"] == 0)  # no volume, no stress


def test_slab_pbc_true_true_false(calc, eager_calc):
    slab = fcc111("Cu", size=(2, 2, 3), a=3.7, vacuum=6.0)
    slab.symbols[:3] = "Au"
    slab.pbc = [True, True, False]
    slab.rattle(0.03, seed=3)
    assert_matches_reference(calc, eager_calc, [slab])


def test_one_atom_and_isolated_atoms(calc, eager_calc):
    lone = Atoms("Au", positions=[[1.0, 1.0, 1.0]], cell=np.eye(3) * 20, pbc=True)
    far_pair = Atoms("CuAu", positions=[[0, 0, 0], [9, 9, 9]], cell=np.eye(3) * 20, pbc=True)
    assert_matches_reference(calc, eager_calc, [lone])
    assert_matches_reference(calc, eager_calc, [far_pair, lone, rattled_alloy((1, 1, 1), seed=9)])
    # no neighbours: no forces, and energy is the sum of the isolated-atom energies
    out = calc(ts.io.atoms_to_state([far_pair, lone], CPU, torch.float64))
    assert torch.all(out["forces"] == 0)
    lone_cu = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 20, pbc=True)
    e_cu = calc(ts.io.atoms_to_state([lone_cu], CPU, torch.float64))["energy"]
    assert torch.allclose(out["energy"][0], out["energy"][1] + e_cu[0], atol=1e-10)


def test_batch_equals_one_by_one_and_permutation(calc):
    systems = [rattled_alloy((1, 1, 1), seed=10), rattled_alloy((2, 2, 2), seed=11), bulk("Au", "fcc", a=4.1), rattled_alloy((1, 2, 3), seed=12)]
    batched = calc(ts.io.atoms_to_state(systems, CPU, torch.float64))
    state = ts.io.atoms_to_state(systems, CPU, torch.float64)
    for k, atoms in enumerate(systems):
        single = calc(ts.io.atoms_to_state([atoms], CPU, torch.float64))
        assert torch.allclose(single["energy"][0], batched["energy"][k], atol=1e-10, rtol=0)
        assert torch.allclose(single["forces"], batched["forces"][state.system_idx == k], atol=1e-10, rtol=0)
        assert torch.allclose(single["stress"][0], batched["stress"][k], atol=1e-10, rtol=0)
    perm = [2, 0, 3, 1]
    permuted = calc(ts.io.atoms_to_state([systems[p] for p in perm], CPU, torch.float64))
    assert torch.allclose(permuted["energy"], batched["energy"][perm], atol=1e-10, rtol=0)
    assert torch.allclose(permuted["stress"], batched["stress"][perm], atol=1e-10, rtol=0)


def test_tensor_entry_with_interleaved_unsorted_system_index(calc):
    """mol_idx need not be sorted: atoms of two systems interleaved give the same result."""
    a, b = rattled_alloy((1, 1, 2), seed=13), rattled_alloy((1, 2, 1), seed=14)
    ref = calc(ts.io.atoms_to_state([a, b], CPU, torch.float64))
    pos = torch.tensor(np.concatenate([a.positions, b.positions]))
    z = torch.tensor(np.concatenate([a.numbers, b.numbers]))
    mol_idx = torch.tensor([0] * len(a) + [1] * len(b))
    order = torch.randperm(len(pos), generator=torch.Generator().manual_seed(0))
    cell = torch.tensor(np.stack([np.array(a.cell), np.array(b.cell)]))
    out = calc.evaluate(pos[order], z[order], cell, mol_idx[order], pbc=True)
    assert torch.allclose(out["energy"], ref["energy"], atol=1e-10, rtol=0)
    assert torch.allclose(out["forces"], ref["forces"][order], atol=1e-10, rtol=0)
    assert out["energies"].shape == (len(pos),)
    assert torch.allclose(out["energies"].index_add(0, mol_idx[order], 0 * out["energies"]).sum(), out["energy"].sum())


def test_float32_state_is_cast_not_rejected(calc):
    systems = [rattled_alloy(seed=15), bulk("Cu", "fcc", a=3.6)]
    out64 = calc(ts.io.atoms_to_state(systems, CPU, torch.float64))
    out32 = calc(ts.io.atoms_to_state(systems, CPU, torch.float32))
    for key in ("energy", "forces", "stress"):
        assert out32[key].dtype == torch.float32
        assert torch.allclose(out32[key].double(), out64[key], atol=1e-4)


def test_compute_flags_are_honoured(student_pt2):
    from torchsim_distill import DistilledTorchSimCalc

    calc = DistilledTorchSimCalc.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map=True, compute_stress=False
    )
    state = ts.io.atoms_to_state([rattled_alloy(seed=16)], CPU, torch.float64)
    assert "stress" not in calc(state) and "forces" in calc(state)
    calc.compute_forces = False
    calc.compute_stress = True
    out = calc(state)
    assert "forces" not in out and out["stress"].shape == (1, 3, 3)


def test_forces_and_stress_are_energy_derivatives(calc):
    """Central finite differences of the energy: F = -dE/dx, σ = (1/V) dE/dε (ASE sign)."""
    atoms = rattled_alloy((1, 1, 2), seed=17, rattle=0.1)
    atoms.set_cell(atoms.cell @ (np.eye(3) + 0.03 * np.array([[0, 1, 0], [0.5, 0, 0], [0, 0.2, 0.1]])), scale_atoms=True)
    state = ts.io.atoms_to_state([atoms], CPU, torch.float64)
    out = calc(state)

    def energy(a: Atoms) -> float:
        return calc(ts.io.atoms_to_state([a], CPU, torch.float64))["energy"].item()

    h = 1e-4
    for i, d in [(0, 0), (3, 1), (5, 2), (len(atoms) - 1, 0)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, d] += h
        minus.positions[i, d] -= h
        fd = -(energy(plus) - energy(minus)) / (2 * h)
        assert abs(fd - out["forces"][i, d].item()) < 1e-6
    for a, b in [(0, 0), (1, 1), (0, 1), (1, 2)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h / (1 if a == b else 2)
        plus, minus = atoms.copy(), atoms.copy()
        plus.set_cell(atoms.cell @ (np.eye(3) + eps), scale_atoms=True)
        minus.set_cell(atoms.cell @ (np.eye(3) - eps), scale_atoms=True)
        # symmetric strain: eps_ab = eps_ba = h/2 off the diagonal, so dE/dh = V σ_ab either way
        fd = (energy(plus) - energy(minus)) / (2 * h) / atoms.get_volume()
        assert abs(fd - out["stress"][0, a, b].item()) < 1e-7


def test_torch_sim_validate_model_outputs(student_pt2):
    """torch-sim's own interface validator; its Si/Mg/Fe crystals and benzene are mapped onto our types."""
    from torch_sim.models.interface import validate_model_outputs

    from torchsim_distill import DistilledTorchSimCalc

    calc = DistilledTorchSimCalc.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map={"Si": "Cu", "Mg": "Au", "Fe": "Cu", "C": "Au", "H": "Cu"}
    )
    validate_model_outputs(calc, CPU, torch.float64)


def test_torch_sim_calculator_consistency(calc, eager_calc):
    from torch_sim.testing import SIMSTATE_GENERATORS, assert_model_calculator_consistency

    assert_model_calculator_consistency(calc, eager_calc, SIMSTATE_GENERATORS["cu_sim_state"](CPU, torch.float64))


def test_autobatcher_with_memory_scaler_on_cpu(calc):
    """torch-sim's binning autobatcher (explicit max_memory_scaler on CPU) gives the same energies."""
    systems = [rattled_alloy((1, 1, k), seed=20 + k) for k in (1, 2, 3, 1, 2)]
    direct = calc(ts.io.atoms_to_state(systems, CPU, torch.float64))["energy"]
    assert calc.memory_scales_with == "n_atoms_x_density"
    batcher = ts.BinningAutoBatcher(model=calc, max_memory_scaler=1000.0, memory_scales_with=calc.memory_scales_with)
    final = ts.static(systems, calc, autobatcher=batcher)
    energies = torch.cat([r["potential_energy"].reshape(-1) for r in final])
    assert torch.allclose(energies, direct, atol=1e-10)


def test_fire_relaxation_with_frechet_cell_filter(student_pt2):
    from torchsim_distill import DistilledTorchSimCalc

    calc = DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True, skin=0.3)
    systems = [rattled_alloy((1, 1, 1), seed=30, rattle=0.1), rattled_alloy((1, 1, 2), seed=31, rattle=0.1)]
    state = ts.io.atoms_to_state(systems, CPU, torch.float64)
    e0 = calc(state)["energy"]
    final = ts.optimize(
        system=state,
        model=calc,
        optimizer=ts.Optimizer.fire,
        init_kwargs={"cell_filter": ts.CellFilter.frechet},
        convergence_fn=ts.generate_force_convergence_fn(force_tol=0.05),
        max_steps=400,
    )
    out = calc(final)
    assert torch.all(out["energy"] < e0)
    assert out["forces"].norm(dim=1).max() < 0.05


def test_nve_energy_drift_is_bounded(student_pt2):
    from torchsim_distill import DistilledTorchSimCalc

    calc = DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True, skin=0.5)
    state = ts.io.atoms_to_state([rattled_alloy((2, 2, 2), seed=40, rattle=0.02), rattled_alloy((1, 2, 2), seed=41, rattle=0.02)], CPU, torch.float64)
    md = ts.nve_init(state, calc, kT=torch.tensor(300 * 8.617e-5), seed=0)
    dt = torch.tensor(0.002)  # ps: 2 fs
    energies = []
    for _ in range(300):
        md = ts.nve_step(md, calc, dt=dt)
        ke = ts.calc_kinetic_energy(masses=md.masses, momenta=md.momenta, system_idx=md.system_idx)
        energies.append(md.energy + ke)
    total = torch.stack(energies)  # [steps, systems]
    drift = (total - total[0]).abs().max(dim=0).values / torch.bincount(md.system_idx)
    assert torch.all(drift < 2e-3), drift  # eV/atom over 0.6 ps
    assert calc.neighbor_list.n_builds < 300  # the skin saved rebuilds
