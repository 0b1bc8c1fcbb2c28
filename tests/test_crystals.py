"""Same-crystal detection: supercells, translations and reorderings of one crystal are
one; strains, rattles, substitutions and other lattices are not. Independent reference:
the structures are built as supercells by ASE, so which are the same is known."""

from __future__ import annotations

import numpy as np
from ase.build import bulk, fcc111

from torchsim_distill.distill.crystals import same_crystal, same_crystal_groups


def _si(cubic: bool = True):
    return bulk("Si", "diamond", a=5.43, cubic=cubic)


def test_diamond_supercells_primitive_and_shuffled_copies_are_one_crystal():
    si8 = _si()
    shuffled = si8.repeat((2, 1, 1))
    shuffled.translate([0.31, 0.17, 0.23])
    shuffled.wrap()
    shuffled = shuffled[np.random.default_rng(0).permutation(len(shuffled))]
    structures = [si8, si8.repeat((2, 1, 1)), si8.repeat(2), _si(cubic=False), shuffled]
    assert same_crystal_groups(structures) == [[0, 1, 2, 3, 4]]


def test_strained_rattled_substituted_and_other_lattices_are_not_merged():
    si8 = _si()
    strained = si8.copy()
    strained.set_cell(si8.cell.array * 1.002, scale_atoms=True)
    rattled = si8.copy()
    rattled.rattle(0.01, seed=1)
    ge = bulk("Ge", "diamond", a=5.43, cubic=True)  # same geometry, other element
    sige = si8.copy()
    sige[0].symbol = "Ge"
    fcc = bulk("Si", "fcc", a=5.43 / 2 ** (2 / 3) * 2 ** (1 / 3) * 2 ** (1 / 3), cubic=True)
    groups = same_crystal_groups([si8, strained, rattled, ge, sige, fcc, si8.repeat(2)])
    assert groups == [[0, 6], [1], [2], [3], [4], [5]]


def test_ordered_compound_supercell_matches_and_a_slab_matches_nothing():
    cu3au = bulk("Cu", "fcc", a=3.75, cubic=True)
    cu3au[0].symbol = "Au"
    other = cu3au.repeat((1, 2, 1))
    assert same_crystal(cu3au, other)
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    assert not same_crystal(slab, slab.copy())
    assert same_crystal_groups([slab, slab.copy()]) == [[0], [1]]
