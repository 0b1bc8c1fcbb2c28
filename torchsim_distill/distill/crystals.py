"""Which seed structures are the same crystal: one primitive cell in different supercells.

A user gives the seeds they have, and often the same crystal more than once (a diamond
silicon cell of 8 atoms, its 2×1×1 and its 2×2×2 supercell): they sample different
frames, but every property the acceptance suite measures (lattice constant, moduli,
vacancy energy, phonons, MD) is the same for all of them, and measuring it once per
supercell multiplied the teacher's cost (in a SevenNet-0 silicon run, 1041 s of the
suite's 1056 s)::

    groups = same_crystal_groups([si8, si16, si64, ge8])   # [[0, 1, 2], [3]]

Two periodic structures are taken to be the same crystal when they have the same
composition (as fractions), the same volume per atom and the same multiset of atomic
environments, each environment being an atom's element and the sorted distances to its
nearest neighbours of every element (a supercell repeats each environment of its
primitive cell equally often; a translation, a permutation of the atoms or another
choice of cell vectors leaves them unchanged). No symmetry library is needed, and the
test errs on the side of measuring: a strained, rattled or decorated copy differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

#: neighbours per element in each atom's environment
NEIGHBOURS = 12
#: Å, how far two environments' distances may differ and still match
DISTANCE_TOL = 1e-3
#: relative volume-per-atom difference still counted as the same
VOLUME_TOL = 1e-4


def environments(atoms: Atoms, n_neighbours: int = NEIGHBOURS) -> list[tuple[int, np.ndarray]]:
    """Each atom's ``(atomic number, distances)``: per element of the structure (in order
    of atomic number), the sorted distances to its ``n_neighbours`` nearest atoms of that
    element, images included (fewer when the cut-off holds fewer)."""
    elements = sorted(set(atoms.numbers.tolist()))
    per_atom_volume = atoms.get_volume() / len(atoms)
    # a sphere holding ~4·n_neighbours atoms on average: enough neighbours of every element
    # present at ≥ 1/4 of the atoms; a sparser element gives fewer, equally in each supercell
    cutoff = (3.0 * 4 * n_neighbours * per_atom_volume / (4 * np.pi)) ** (1 / 3)
    first, second, distance = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    out = []
    for i, z in enumerate(atoms.numbers):
        mine = first == i
        parts = []
        for e in elements:
            d = np.sort(distance[mine & (atoms.numbers[second] == e)])[:n_neighbours]
            parts.append(np.pad(d, (0, n_neighbours - len(d)), constant_values=np.inf))
        out.append((int(z), np.concatenate(parts)))
    return out


def _fingerprint(atoms: Atoms) -> dict[str, object]:
    """The composition, volume per atom and environment classes with their shares."""
    envs = environments(atoms)
    classes: list[list] = []  # [number, distances, count]
    for z, d in envs:
        for c in classes:
            if c[0] == z and _close(c[1], d):
                c[2] += 1
                break
        else:
            classes.append([z, d, 1])
    numbers, counts = np.unique(atoms.numbers, return_counts=True)
    return {
        "composition": dict(zip(numbers.tolist(), (counts / len(atoms)).tolist(), strict=True)),
        "volume": atoms.get_volume() / len(atoms),
        "classes": [(z, d, n / len(atoms)) for z, d, n in classes],
    }


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    finite = np.isfinite(a)
    return bool(np.array_equal(finite, np.isfinite(b)) and np.all(np.abs(a[finite] - b[finite]) <= DISTANCE_TOL))


def _same(fa: dict, fb: dict) -> bool:
    if fa["composition"].keys() != fb["composition"].keys():
        return False
    if any(abs(fa["composition"][z] - fb["composition"][z]) > 1e-9 for z in fa["composition"]):
        return False
    if abs(fa["volume"] - fb["volume"]) > VOLUME_TOL * fa["volume"]:
        return False
    if len(fa["classes"]) != len(fb["classes"]):
        return False
    unmatched = list(fb["classes"])
    for z, d, share in fa["classes"]:
        hit = next((c for c in unmatched if c[0] == z and abs(c[2] - share) < 1e-9 and _close(c[1], d)), None)
        if hit is None:
            return False
        unmatched.remove(hit)
    return True


def is_periodic_bulk(atoms: Atoms) -> bool:
    """Periodic along all three axes with a full-rank cell (what can be compared here)."""
    return bool(all(atoms.pbc) and atoms.cell.rank == 3 and len(atoms) > 0)


def same_crystal(a: Atoms, b: Atoms) -> bool:
    """``a`` and ``b`` are one crystal (see the module docstring); only fully periodic
    structures compare (a slab or a molecule is never the same as anything)."""
    if not (is_periodic_bulk(a) and is_periodic_bulk(b)):
        return False
    return _same(_fingerprint(a), _fingerprint(b))


def same_crystal_groups(structures: Sequence[Atoms]) -> list[list[int]]:
    """Indices of ``structures`` grouped by crystal, in order of first appearance;
    a structure that is not fully periodic is a group of its own."""
    prints = [_fingerprint(s) if is_periodic_bulk(s) else None for s in structures]
    groups: list[list[int]] = []
    for i, fp in enumerate(prints):
        for group in groups:
            first = prints[group[0]]
            if fp is not None and first is not None and _same(first, fp):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups
