"""Point defects of a crystal cell, as starts of the sampler's defect relaxations.

The acceptance suite measures a relaxed vacancy; a student trained only on unrelaxed,
jittered vacancies has never seen the structure it is measured on, nor the path to it.
These helpers build the starts of such relaxations: a vacancy (an atom removed), or a
self-interstitial placed in the cell's largest void (the tetrahedral site of diamond, the
octahedral site of fcc), found on a grid over the cell::

    point, clearance = largest_void(atoms)          # Cartesian Å, distance to the nearest atom
    start = with_interstitial(atoms, "Si", rng)     # a copy with one atom more

Only cells periodic in all three directions have voids in this sense (a slab's largest
"void" is its vacuum).
"""

from __future__ import annotations

import itertools

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

__all__ = ["DEFECT_TYPES", "largest_void", "void_candidates", "with_interstitial", "with_vacancy"]

#: the defects the sampler's ``"defect_relax"`` kind builds
DEFECT_TYPES = ("vacancy", "interstitial")


def void_candidates(atoms: Atoms, *, spacing: float = 0.2, tolerance: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Points of a grid over the cell (about ``spacing`` Å apart along each cell vector)
    whose distance to the nearest atom, periodic images included, is within ``tolerance``
    Å of the largest such distance: the centres of the largest voids, each to within the
    grid's resolution.

    Returns:
        ``(points [n, 3] Å, clearance [n] Å)``, largest clearance first.

    Raises:
        ValueError: a cell not periodic in all three directions.
    """
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise ValueError("voids are defined for cells periodic in all three directions")
    cell = atoms.cell.array
    counts = [max(2, int(np.ceil(np.linalg.norm(v) / spacing))) for v in cell]
    frac = np.stack(np.meshgrid(*[np.arange(n) / n for n in counts], indexing="ij"), axis=-1).reshape(-1, 3)
    points = frac @ cell
    # the atoms and their 26 neighbouring images: enough for the nearest atom of any point of
    # the cell unless the cell is very skewed (then a void's clearance is underestimated)
    shifts = np.array(list(itertools.product((-1, 0, 1), repeat=3))) @ cell
    images = (atoms.get_positions(wrap=True)[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    clearance, _ = cKDTree(images).query(points, k=1)
    keep = np.flatnonzero(clearance >= clearance.max() - tolerance)
    order = keep[np.argsort(-clearance[keep], kind="stable")]
    return points[order], clearance[order]


def largest_void(atoms: Atoms, *, spacing: float = 0.2) -> tuple[np.ndarray, float]:
    """The grid point of :func:`void_candidates` farthest from every atom, and that distance (Å)."""
    points, clearance = void_candidates(atoms, spacing=spacing, tolerance=0.0)
    return points[0], float(clearance[0])


def with_vacancy(atoms: Atoms, rng: np.random.Generator) -> tuple[Atoms, int]:
    """A copy of ``atoms`` with one atom, chosen at random, removed; and its index."""
    out = atoms.copy()
    site = int(rng.integers(len(out)))
    del out[site]
    return out, site


def with_interstitial(atoms: Atoms, rng: np.random.Generator, *, spacing: float = 0.2) -> tuple[Atoms, str]:
    """A copy of ``atoms`` with one atom more, of an element of ``atoms`` chosen at random,
    at a grid point drawn among the largest voids' (:func:`void_candidates`); and its element."""
    points, _ = void_candidates(atoms, spacing=spacing)
    element = str(rng.choice(sorted(set(atoms.get_chemical_symbols()))))
    out = atoms.copy()
    out += Atoms(element, positions=[points[int(rng.integers(len(points)))]])
    return out, element
