"""Folding KIM clusters back onto their periodic cell (``jobs.kim_fold``), without a model.

The clusters are built here as KIM codes build them: the cell's atoms, then every periodic
image within the padding distance of one of them, in an order the folder does not know.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase.build import bulk
from scipy.spatial import cKDTree

from torchsim_distill.jobs.kim_fold import Folder, lattice_basis
from torchsim_distill.models.cu_au import rattled_alloy

PAD = 10.0  # Å: the influence distance the folder is told


def cluster(atoms, pad: float = PAD, seed: int | None = 0):
    """``(species, positions, contributing, owner, shift)`` of ``atoms`` padded to ``pad`` Å
    (images of every periodic direction); shuffled unless ``seed`` is None."""
    cell, pos = atoms.cell.array, atoms.get_positions(wrap=True)
    tree = cKDTree(pos)
    reach = [int(np.ceil(pad / h)) + 1 if p else 0
             for h, p in zip(atoms.cell.volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1),
                             atoms.pbc, strict=True)]
    parts = []
    for shift in itertools.product(*(range(-r, r + 1) for r in reach)):
        images = pos + np.array(shift) @ cell
        keep = np.ones(len(pos), bool) if not any(shift) else tree.query(images)[0] <= pad
        parts.append((images[keep], np.flatnonzero(keep), np.tile(shift, (keep.sum(), 1)), np.full(keep.sum(), not any(shift))))
    positions, owner, shifts, contributing = (np.concatenate(x) for x in zip(*parts, strict=True))
    species = np.array([0 if s == "Au" else 1 for s in atoms.get_chemical_symbols()])[owner]
    order = np.arange(len(positions)) if seed is None else np.random.default_rng(seed).permutation(len(positions))
    return species[order], positions[order], contributing[order], owner[order], shifts[order]


def assert_folds(fold, atoms, positions, contributing, owner) -> None:
    """The fold's lattice is the cell's and every padding atom has its true owner."""
    assert fold is not None
    assert abs(np.linalg.det(fold.cell)) == pytest.approx(atoms.get_volume(), rel=1e-12)
    # the same lattice: each basis has integer coordinates in the other
    coords = atoms.cell.array @ np.linalg.inv(fold.cell)
    np.testing.assert_allclose(coords, np.rint(coords), atol=1e-9)
    contributing_ids = owner[contributing]  # the cell's atom behind each contributing atom
    np.testing.assert_array_equal(contributing_ids[fold.owner], owner[~contributing])
    pos_c, pos_p = positions[contributing], positions[~contributing]
    np.testing.assert_allclose(pos_c[fold.owner] + fold.shift @ fold.cell, pos_p, atol=1e-9)
    assert np.linalg.matrix_rank(fold.shift[fold.carriers]) == 3  # they can carry any virial


def skewed(reps=(4, 3, 5), seed: int = 0):
    """Primitive fcc cells repeated: a triclinic cell (60° between its vectors)."""
    atoms = bulk("Cu", "fcc", a=3.8).repeat(reps)
    atoms.set_chemical_symbols(np.random.default_rng(seed).choice(["Cu", "Au"], len(atoms)))
    atoms.rattle(0.05, seed=seed)
    return atoms


@pytest.mark.parametrize("atoms", [rattled_alloy((1, 1, 1), seed=1), rattled_alloy((2, 2, 2), seed=2), rattled_alloy((3, 3, 8), seed=3), skewed()],
                         ids=["4 atoms", "cubic", "elongated", "triclinic"])
def test_finds_the_cell_and_every_owner(atoms):
    species, positions, contributing, owner, _ = cluster(atoms)
    assert_folds(Folder(PAD)(species, positions, contributing), atoms, positions, contributing, owner)


def test_follows_a_run_moving_straining_and_reordering():
    atoms = rattled_alloy((3, 3, 3), seed=4)
    species, positions, contributing, owner, shifts = cluster(atoms)
    folder = Folder(PAD)
    first = folder(species, positions, contributing)
    # an MD step: atoms move, images move with them, order kept; the cell is the same to the
    # bit (one that changed by round-off would void the student's neighbor-list cache)
    step = np.random.default_rng(5).normal(0.0, 0.02, (len(atoms), 3))
    moved = positions + step[owner]
    fold = folder(species, moved, contributing)
    assert_folds(fold, atoms, moved, contributing, owner)
    assert np.array_equal(fold.cell, first.cell)
    # NPT: the cell grows by 0.5 %, positions with it
    strained = atoms.copy()
    strained.set_cell(atoms.cell * 1.005, scale_atoms=True)
    grown = moved * 1.005
    assert_folds(folder(species, grown, contributing), strained, grown, contributing, owner)
    # a neighbor-list rebuild: the client sends its atoms and images in another order
    order = np.random.default_rng(6).permutation(len(grown))
    assert_folds(folder(species[order], grown[order], contributing[order]), strained, grown[order],
                 contributing[order], owner[order])


def test_a_perfect_crystal_is_refused_on_a_first_look_but_followed_within_a_run():
    """In a perfect crystal a crystal translation maps the cell onto itself: other lattices fit
    the cluster too and owners are ambiguous, so a first look refuses it; a run that found its
    lattice on a thermal step keeps it."""
    perfect = rattled_alloy((2, 2, 2), rattle=0.0)
    perfect.set_chemical_symbols(["Cu"] * len(perfect))
    species, positions, contributing, owner, _ = cluster(perfect)
    assert Folder(PAD)(species, positions, contributing) is None

    thermal = perfect.copy()
    thermal.rattle(0.02, seed=7)
    folder = Folder(PAD)
    t_species, t_positions, t_contributing, t_owner, _ = cluster(thermal)
    assert folder(t_species, t_positions, t_contributing) is not None
    assert_folds(folder(species, positions, contributing), perfect, positions, contributing, owner)


def test_a_random_alloy_on_perfect_sites_is_folded():
    """Species break the crystal's translations: no ambiguity, no refusal."""
    atoms = rattled_alloy((2, 2, 2), seed=8, rattle=0.0)
    species, positions, contributing, owner, _ = cluster(atoms)
    assert_folds(Folder(PAD)(species, positions, contributing), atoms, positions, contributing, owner)


def test_clusters_that_are_not_one_cell_are_refused():
    atoms = rattled_alloy((3, 2, 2), seed=9)
    species, positions, contributing, owner, _ = cluster(atoms)
    # ghosts from another MPI rank: half the cell contributes, the rest is padding
    half = contributing & (positions[:, 0] < atoms.cell[0, 0] / 2)
    assert Folder(PAD)(species, positions, half) is None
    # one padding atom off its image by 0.01 Å
    off = positions.copy()
    off[np.flatnonzero(~contributing)[7]] += [0.01, 0.0, 0.0]
    assert Folder(PAD)(species, off, contributing) is None
    # one padding atom of the wrong species
    wrong = species.copy()
    wrong[np.flatnonzero(~contributing)[3]] ^= 1
    assert Folder(PAD)(wrong, positions, contributing) is None
    # a slab: periodic in two directions only
    slab = atoms.copy()
    slab.pbc = [True, True, False]
    s_species, s_positions, s_contributing, _, _ = cluster(slab)
    assert Folder(PAD)(s_species, s_positions, s_contributing) is None
    # nothing to fold
    assert Folder(PAD)(species[contributing], positions[contributing], np.ones(contributing.sum(), bool)) is None


def test_failed_searches_back_off_for_requests_of_that_shape():
    atoms = rattled_alloy((2, 2, 2), seed=10)
    species, positions, contributing, _, _ = cluster(atoms)
    half = contributing & (positions[:, 0] < atoms.cell[0, 0] / 2)
    folder = Folder(PAD)
    searched = []
    search = folder._search
    folder._search = lambda *a: searched.append(1) or search(*a)
    for _ in range(7):
        assert folder(species, positions, half) is None
    assert len(searched) == 2  # request 1, then (after skipping 2) request 4; 5-7 skip 3 of 4
    # another client's cell (another shape) is searched and folded at once
    other = rattled_alloy((3, 2, 2), seed=11)
    o_species, o_positions, o_contributing, _, _ = cluster(other)
    assert folder(o_species, o_positions, o_contributing) is not None and len(searched) == 3


def test_lattice_basis_finds_the_lattice_a_set_of_its_vectors_generates():
    cell = np.array([[4.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.5, 0.5, 6.0]])
    # a + b, a - b and c generate only an index-2 sublattice; adding a restores the lattice
    basis = lattice_basis(np.array([cell[0] + cell[1], cell[0] - cell[1], cell[2], cell[0]]))
    coords = cell @ np.linalg.inv(basis)
    np.testing.assert_allclose(coords, np.rint(coords), atol=1e-12)
    assert abs(np.linalg.det(basis)) == pytest.approx(abs(np.linalg.det(cell)))
    assert lattice_basis(np.array([cell[0], 2 * cell[0], cell[1]])) is None  # two dimensions only
