"""Point defects of a crystal cell and the sampler's relaxation paths of them (``"defect_relax"``).

The acceptance suite measures a relaxed vacancy; a student trained only on unrelaxed,
jittered vacancies has never seen the structure it is measured on, nor the path to it.
:func:`defect_paths` samples such paths: a vacancy (an atom removed) or a self-interstitial
placed in the cell's largest void (the tetrahedral site of diamond, the octahedral site of
fcc, found on a grid over the cell), relaxed by a driver (the teacher, or a cheap student)::

    point, clearance = largest_void(atoms)             # Cartesian Å, distance to the nearest atom
    start, element = with_interstitial(atoms, rng)     # a copy with one atom more
    frames = defect_paths(seeds, 24, rng, teacher)     # 4 paths of 6 frames, the relaxed defect last

Only bulk cells (periodic in all three directions, no vacuum layer) have voids in this
sense (a slab's largest "void" is its vacuum).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree
from torch_sim.models.interface import ModelInterface

from torchsim_distill.distill.driven import along_paths, relaxation_paths
from torchsim_distill.distill.properties import VACANCY_MIN_ATOMS, is_bulk, supercell_factor

__all__ = [
    "DEFECT_MIN_ATOMS", "DEFECT_TYPES", "defect_cell", "defect_paths", "defect_seeds", "largest_void", "void_candidates",
    "with_interstitial", "with_vacancy",
]

#: the defects the sampler's ``"defect_relax"`` kind builds
DEFECT_TYPES = ("vacancy", "interstitial")
#: the fewest atoms of a seed that gets defects (in a smaller cell a defect is a phase of its own)
DEFECT_MIN_ATOMS = 8
#: force tolerance (eV/Å, the cell's included) of the perfect crystals the defects are put in
CRYSTAL_FMAX = 0.01


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


def defect_cell(crystal: Atoms) -> Atoms:
    """The cell a defect goes into: ``crystal`` repeated k×k×k up to the acceptance suite's
    vacancy cell (:data:`~torchsim_distill.distill.properties.VACANCY_MIN_ATOMS` atoms; Si's
    8-atom cube → 64 atoms). In the seed's own 8-atom cell an interstitial is a defect every
    few Å, a phase of its own: a Si run's held-out frames of such cells were its worst kind
    (283 meV/atom, force cosine 0.18), and no property is measured there."""
    k = supercell_factor(len(crystal), VACANCY_MIN_ATOMS)
    return crystal.repeat((k, k, k)) if k > 1 else crystal.copy()


def defect_seeds(structures: Sequence[Atoms], min_atoms: int = DEFECT_MIN_ATOMS) -> list[int]:
    """Indices of the seeds that get defects: bulk crystals (periodic in three directions, no
    vacuum layer: :func:`~torchsim_distill.distill.properties.is_bulk`; a slab's vacancy is
    a surface's) with at least ``min_atoms`` atoms."""
    return [i for i, atoms in enumerate(structures) if len(atoms) >= min_atoms and is_bulk(atoms)]


def defect_paths(
    structures: Sequence[Atoms],
    n: int,
    rng: np.random.Generator,
    driver: ModelInterface,
    *,
    types: Sequence[str] = DEFECT_TYPES,
    min_atoms: int = DEFECT_MIN_ATOMS,
    frames_per_path: int = 6,
    rattle: float = 0.1,
    fmax: float = 0.05,
    max_steps: int = 200,
    max_memory_scaler: float | None = None,
) -> list[Atoms]:
    """``n`` frames along relaxations of point defects at fixed cell, ``frames_per_path`` per
    path (fewer when a relaxation converges sooner), the relaxed defect last.

    Each path: a defect of ``types`` (in turn) in each of :func:`defect_seeds` (in turn),
    every atom rattled by a Gaussian of ``rattle`` Å (it breaks the symmetry a relaxation
    could keep, and spreads the paths), relaxed by ``driver`` (FIRE, to ``fmax`` eV/Å or
    ``max_steps``), all paths in one batch. The defects sit in the seeds as the driver
    relaxes them first (cell included, to :data:`CRYSTAL_FMAX`), repeated to the suite's
    vacancy cell (:func:`defect_cell`), as the acceptance suite's do: a seed at another lattice constant moves the relaxed vacancy's energy (Si at
    a = 5.43 Å instead of SevenNet-0's 5.46: 2.02 eV instead of 2.16).

    Frames carry ``info`` ``seed_id``, ``defect`` (``"vacancy"`` or ``"interstitial"``),
    ``relax_run`` (the path: one split holds it whole, see
    :func:`~torchsim_distill.distill.splitting.frame_group`) and ``relax_step``.

    The keyword parameters are :class:`~torchsim_distill.distill.sampling.SamplingOptions`
    fields (``defect_*``, ``relax_fmax``, ``relax_max_steps``), given one by one because the
    sampler imports this module, not the reverse.
    """
    eligible = defect_seeds(structures, min_atoms)
    n_runs = math.ceil(n / frames_per_path)
    used = sorted({eligible[r % len(eligible)] for r in range(n_runs)})
    relaxed = relaxation_paths([structures[i] for i in used], driver, fmax=CRYSTAL_FMAX, max_steps=max_steps,
                               cell=True, max_memory_scaler=max_memory_scaler)
    crystal = {i: defect_cell(path[-1][1] if path else structures[i]) for i, path in zip(used, relaxed, strict=True)}
    starts = []
    for r in range(n_runs):
        seed_id = eligible[r % len(eligible)]
        defect = types[(r // len(eligible)) % len(types)]
        atoms, _ = with_vacancy(crystal[seed_id], rng) if defect == "vacancy" else with_interstitial(crystal[seed_id], rng)
        atoms.positions += rng.normal(0.0, rattle, size=atoms.positions.shape)
        atoms.info = {"seed_id": seed_id, "defect": defect}
        starts.append(atoms)
    paths = relaxation_paths(starts, driver, fmax=fmax, max_steps=max_steps, cell=False,
                             max_memory_scaler=max_memory_scaler)
    out = []
    for r, step, atoms in along_paths(paths, n, end_first=True):  # one frame of a path: the relaxed defect
        atoms.info = {**starts[r].info, "relax_run": r, "relax_step": step}
        out.append(atoms)
    return out
