"""The batched neighbor list against ASE's, its buffer management, and the Verlet skin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import primitive_neighbor_list

from torchsim_distill.models.cu_au import rattled_alloy
from torchsim_distill.runtime.neighbors import BatchedNeighborList

R_MAX = 4.5


def _batch(systems: list[Atoms]):
    pos = torch.tensor(np.concatenate([a.positions for a in systems]))
    cell = torch.tensor(np.stack([np.array(a.cell) for a in systems]))
    pbc = torch.tensor(np.stack([a.pbc for a in systems]))
    sidx = torch.cat([torch.full((len(a),), k) for k, a in enumerate(systems)])
    return pos, cell, pbc, sidx, torch.zeros(len(pos), dtype=torch.long)


def _pairs(ei, shift, sidx, offsets, k) -> list:
    m = sidx[ei[0]] == k
    return sorted(
        zip((ei[0, m] - offsets[k]).tolist(), (ei[1, m] - offsets[k]).tolist(), map(tuple, shift[m].round().long().tolist()))
    )


def _ase_pairs(atoms: Atoms, cutoff: float) -> list:
    i, j, s = primitive_neighbor_list("ijS", atoms.pbc, atoms.cell.complete(), atoms.positions, cutoff)
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, s.tolist())))


def _systems() -> list[Atoms]:
    mol = molecule("CH3CH2OH")
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    slab.pbc = [True, True, False]
    systems = [
        bulk("Cu", "fcc", a=3.6),  # 1 atom, cell << 2 r_max
        bulk("Cu", "fcc", a=3.6).repeat((2, 1, 3)),  # triclinic
        bulk("Mg", "hcp", a=3.2, c=5.2),
        rattled_alloy((2, 2, 2), seed=1),
        slab,
        mol,
    ]
    for k, a in enumerate(systems):
        a.rattle(0.05, seed=k)
    return systems


@pytest.mark.parametrize("method", ["cell_list", "naive"])
def test_pairs_equal_ase(method):
    systems = _systems()
    nl = BatchedNeighborList(R_MAX, method=method, max_neighbors=16)
    for k, atoms in enumerate(systems):  # per-system pbc: one batch per pbc kind
        pos, cell, pbc, sidx, types = _batch([atoms])
        ei, shift = nl(pos, cell, pbc, sidx, types)
        assert _pairs(ei, shift, sidx, [0], 0) == _ase_pairs(atoms, R_MAX), k
    periodic = [a for a in systems if a.pbc.all()]
    pos, cell, pbc, sidx, types = _batch(periodic)
    ei, shift = nl(pos, cell, pbc, sidx, types)
    offsets = np.cumsum([0] + [len(a) for a in periodic])
    for k, atoms in enumerate(periodic):
        assert _pairs(ei, shift, sidx, offsets, k) == _ase_pairs(atoms, R_MAX)


def test_unsorted_system_index_uses_a_correct_path():
    """nvalchemiops' N² kernel is wrong for unsorted batch_idx; the builder must not use it there."""
    systems = [rattled_alloy((1, 1, 1), seed=2), rattled_alloy((1, 1, 2), seed=3)]
    pos, cell, pbc, sidx, types = _batch(systems)
    perm = torch.randperm(len(pos), generator=torch.Generator().manual_seed(1))
    for method in ("auto", "naive", "cell_list"):
        ei, shift = BatchedNeighborList(R_MAX, method=method)(pos[perm], cell, pbc, sidx[perm], types)
        ei = perm[ei]  # back to the original atom numbering
        offsets = np.cumsum([0] + [len(a) for a in systems])
        for k, atoms in enumerate(systems):
            assert _pairs(ei, shift, sidx, offsets, k) == _ase_pairs(atoms, R_MAX), (method, k)


def test_buffer_grows_on_overflow_and_shrinks_with_hysteresis():
    dense = bulk("Cu", "fcc", a=3.6).repeat(3)  # 78 neighbours per atom within 6 Å
    sparse = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=np.eye(3) * 30, pbc=True)
    nl = BatchedNeighborList(6.0, max_neighbors=16, method="cell_list")
    ei, _ = nl(*_batch([dense]))
    needed = int(torch.bincount(ei[0]).max())
    assert ei.shape[1] == len(dense) * needed  # nothing truncated
    assert nl.max_neighbors % 16 == 0 and nl.max_neighbors >= needed
    grown = nl.max_neighbors
    nl(*_batch([dense]))  # same use: no change (no oscillation)
    assert nl.max_neighbors == grown
    nl(*_batch([sparse]))  # far below 50 % use: shrink, still 16-aligned
    assert 16 <= nl.max_neighbors < grown and nl.max_neighbors % 16 == 0
    ei, _ = nl(*_batch([dense]))  # and grows back without losing pairs
    assert ei.shape[1] == len(dense) * needed


def _md_like(pos: torch.Tensor, step: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return pos + step * torch.randn(pos.shape, generator=g)


def test_skin_reuse_equals_fresh_rebuild(calc, student_pt2):
    """With a skin, results equal a fresh rebuild to 1e-10 relative, and rebuilds are rare."""
    from torchsim_distill import DistilledTorchSimCalc

    skinned = DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True, skin=0.6)
    state = ts.io.atoms_to_state([rattled_alloy((2, 2, 2), seed=5), rattled_alloy((1, 1, 2), seed=6)], torch.device("cpu"), torch.float64)
    pos0 = state.positions.clone()
    for step in range(12):
        state.positions = _md_like(pos0, 0.01 * step, step)  # drifts up to ~0.11 Å rms per coordinate
        a, b = skinned(state), calc(state)
        for key in ("energy", "forces", "stress"):
            rel = (a[key] - b[key]).abs().max() / b[key].abs().max()
            assert rel <= 1e-10, (step, key, rel)
    assert 1 < skinned.neighbor_list.n_builds < 12  # reused some, rebuilt when atoms moved > skin/2


def test_skin_rebuilds_on_cell_or_atom_changes():
    atoms = rattled_alloy((1, 1, 2), seed=8)
    pos, cell, pbc, sidx, types = _batch([atoms])
    nl = BatchedNeighborList(R_MAX, skin=0.5)
    nl(pos, cell, pbc, sidx, types)
    nl(pos + 0.1, cell, pbc, sidx, types)  # uniform shift 0.17 Å < skin/2: reuse
    assert nl.n_builds == 1
    nl(pos, cell * 1.001, pbc, sidx, types)
    assert nl.n_builds == 2
    types2 = types.clone()
    types2[0] = 1
    nl(pos, cell * 1.001, pbc, sidx, types2)
    assert nl.n_builds == 3
    nl(pos[:-1], cell * 1.001, pbc, sidx[:-1], types2[:-1])
    assert nl.n_builds == 4
    moved = pos.clone()
    moved[3, 0] += 0.26  # one atom beyond skin/2
    nl(moved, cell * 1.001, pbc, sidx, types2)
    assert nl.n_builds == 5


def test_per_edge_type_cutoff_prunes_pairs():
    atoms = rattled_alloy((2, 2, 2), seed=9)
    pos, cell, pbc, sidx, _ = _batch([atoms])
    types = torch.tensor((atoms.numbers == 79).astype(int))  # Au = 1, Cu = 0
    cut = torch.tensor([[4.5, 3.0], [3.0, 4.0]])
    ei, shift = BatchedNeighborList(4.5, per_edge_type_cutoff=cut)(pos, cell, pbc, sidx, types)
    i, j = ei
    d = (pos[j] - pos[i] + shift @ cell[0]).norm(dim=1)
    assert torch.all(d < cut[types[i], types[j]])
    full, fshift = BatchedNeighborList(4.5)(pos, cell, pbc, sidx, types)
    fd = (pos[full[1]] - pos[full[0]] + fshift @ cell[0]).norm(dim=1)
    expected = int((fd < cut[types[full[0]], types[full[1]]]).sum())
    assert ei.shape[1] == expected < full.shape[1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="skin"):
        BatchedNeighborList(4.0, skin=-1)
    with pytest.raises(ValueError, match="method"):
        BatchedNeighborList(4.0, method="verlet")
