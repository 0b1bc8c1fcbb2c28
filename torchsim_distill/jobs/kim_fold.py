"""Fold a KIM cluster back onto the periodic cell it was cut from.

KIM hands a model a periodic cell as a cluster: the cell's atoms (contributing) and their
periodic images out to the influence distance (padding) — about 7× the cell's atoms for a
1000-atom Cu–Au cell and the shipped student. No cell is sent. When every padding atom is an
image of a contributing atom under one lattice, the cluster *is* that periodic cell, and the
server can evaluate the cell itself with the compiled student (see :mod:`.serve`)::

    folder = Folder(influence_distance=10.0)
    fold = folder(species, positions, contributing)   # None: not one periodic cell
    fold.cell, fold.owner, fold.shift                 # padding = owner + shift @ cell

**How the lattice is found.** A padding atom near the cluster's middle is an image of some
contributing atom of its species; the true translation is the shortest one that carries a
sample of contributing atoms onto padding atoms of their species (or out of the padded
region). Probes beyond each face (then edge, corner) of the contributing atoms' box give lattice vectors; a basis is reduced from
them, and the fold holds only if *every* padding atom is an image (to 1e-6 Å) and no two
contributing atoms are. The next request is checked against the last fold first: between
neighbor-list builds a client sends its atoms and images in the same order, so the owners and
shifts still hold and only the lattice is refitted (NPT changes it); after a build the atoms
are paired again under the last lattice. The search runs once per run.

**When it refuses.** A cluster that is not one cell (LAMMPS on several MPI ranks, whose ghosts
come from other ranks; a slab; a cluster with non-image padding) gives None. So does a perfect
crystal on a first look: a crystal translation then also maps the cell onto itself, several
lattices fit the cluster equally well, and which atom owns a padding atom (which matters for
the virial, see :mod:`.serve`) cannot be told. The server then takes the exact route.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

#: Å: how far an image may sit from owner + lattice vector (positions arrive as float64;
#: KIM codes build images as position + shift, exact to ~1e-13 Å).
TOLERANCE = 1e-6
#: Å: how far an image may sit from where the *previous* request's lattice puts it; only to
#: pair images with owners before the lattice is refitted exactly (NPT changes the cell a
#: little every step), so well below half an interatomic distance.
FOLLOW = 0.3
#: contributing atoms each candidate translation is tried on during the search.
SAMPLE = 48
#: lattices the search tries before it concludes the cluster is not one cell.
MAX_ATTEMPTS = 4
#: after a failed search, the next requests of the same shape (contributing and padding atom
#: counts) skip the search: 2, then 4, ... up to 2**MAX_BACKOFF of them. A client whose clusters
#: never fold (LAMMPS on several MPI ranks) should not pay a search per call, and another
#: client's requests (another shape) are still searched at once.
MAX_BACKOFF = 6


@dataclass(frozen=True)
class Fold:
    """A KIM cluster as one periodic cell.

    Attributes:
        cell: ``[3, 3]`` Å, rows are lattice vectors (right-handed, reduced).
        owner: ``[n_padding]`` index, among the contributing atoms, of each padding atom's owner.
        shift: ``[n_padding, 3]`` integers: ``padding = contributing[owner] + shift @ cell``.
        carriers: ``[3]`` padding atoms (indices into ``owner``) with independent shifts, to carry
            the virial's lattice term (see :mod:`.serve`); unit shifts first, so that the
            forces they carry stay small.
    """

    cell: np.ndarray
    owner: np.ndarray
    shift: np.ndarray
    carriers: np.ndarray


def _wrap(frac: np.ndarray) -> np.ndarray:
    """Fractional coordinates in [0, 1) (``x - floor(x)`` can round to 1.0)."""
    w = frac - np.floor(frac)
    w[w >= 1.0] = 0.0
    return w


def fold_on(cell: np.ndarray, pos_c: np.ndarray, spec_c: np.ndarray, pos_p: np.ndarray, spec_p: np.ndarray,
            *, radius: float = TOLERANCE) -> Fold | None:
    """The fold under ``cell``'s lattice, refitted exactly, or None when the cluster is not one
    cell of it.

    Each padding atom is paired with the contributing atom within ``radius`` Å of its wrapped
    position; the lattice is then fitted to all pairs (least squares on the integer shifts)
    and every pair must hold to :data:`TOLERANCE` under it.
    """
    inv = np.linalg.inv(cell)
    frac_c, frac_p = pos_c @ inv, pos_p @ inv
    wrapped_c = _wrap(frac_c)
    tree = cKDTree(wrapped_c, boxsize=1.0)
    scale = np.linalg.norm(inv, 2)  # fractional distance per Å, at most
    dist, owner = tree.query(_wrap(frac_p), distance_upper_bound=radius * scale)
    if not np.isfinite(dist).all() or (spec_p != spec_c[owner]).any():
        return None
    shift = np.rint(frac_p - frac_c[owner]).astype(np.int64)
    if np.linalg.matrix_rank(shift) < 3:
        return None  # images along fewer than three directions: not a 3D-periodic cell
    delta = pos_p - pos_c[owner]
    fitted = cell  # kept bit for bit when it still fits (a cell that changes by round-off
    if np.abs(shift @ cell - delta).max() > TOLERANCE:  # would void the neighbor list's cache)
        fitted = np.linalg.lstsq(shift.astype(float), delta, rcond=None)[0]
        if np.abs(shift @ fitted - delta).max() > TOLERANCE:
            return None
    # the contributing atoms must be one cell: no two of them images of each other
    if tree.query_pairs(TOLERANCE * scale):
        return None
    return Fold(cell=fitted, owner=owner, shift=shift, carriers=carriers_of(shift))


def carriers_of(shift: np.ndarray) -> np.ndarray:
    """Three padding atoms (indices into ``shift``) whose shifts are independent, unit shifts first."""
    picked: list[int] = []
    for k in range(3):
        unit = np.flatnonzero((shift == np.eye(3, dtype=shift.dtype)[k]).all(axis=1))
        if unit.size:
            picked.append(int(unit[0]))
    if len(picked) < 3:
        picked = []
        for i in np.argsort(np.abs(shift).sum(axis=1), kind="stable"):
            if np.linalg.matrix_rank(shift[[*picked, i]]) == len(picked) + 1:
                picked.append(int(i))
            if len(picked) == 3:
                break
    return np.array(picked)


def reduce_basis(basis: np.ndarray) -> np.ndarray:
    """A shorter basis of the same lattice (pairwise Gauss reduction), right-handed."""
    b = basis.copy()
    changed = True
    while changed:
        changed = False
        for i in range(3):
            for j in range(3):
                if i != j:
                    k = np.rint(b[i] @ b[j] / (b[j] @ b[j]))
                    if k:
                        b[i] -= k * b[j]
                        changed = True
    if np.linalg.det(b) < 0:
        b[2] = -b[2]
    return b


def lattice_basis(vectors: np.ndarray) -> np.ndarray | None:
    """A basis of the lattice that ``vectors`` (all lattice vectors) generate, or None when
    they span fewer than three dimensions."""
    pool = sorted((v for v in vectors if np.linalg.norm(v) > TOLERANCE), key=np.linalg.norm)
    for _ in range(10):
        basis: list[np.ndarray] = []
        for v in pool:  # the shortest three independent ones
            trial = np.array([*basis, v])
            if np.linalg.matrix_rank(trial, tol=1e-6 * np.linalg.norm(v)) == len(trial):
                basis.append(v)
            if len(basis) == 3:
                break
        if len(basis) < 3:
            return None
        b = np.array(basis)
        coords = np.array(pool) @ np.linalg.inv(b)
        rest = coords - np.rint(coords)
        off = np.abs(rest).max(axis=1) > 1e-6
        if not off.any():
            return reduce_basis(b)
        pool = sorted([*pool, *(rest[off] @ b)], key=np.linalg.norm)  # a finer lattice: its shorter vectors
    return None


class Folder:
    """Finds the fold of each request, remembering the last lattice (see the module docstring).

    Args:
        influence_distance: Å, how far the client pads (the server declares it): a translated
            contributing atom this close to the cell must land on a padding atom.
    """

    def __init__(self, influence_distance: float) -> None:
        self.influence_distance = influence_distance
        self.last: Fold | None = None  # the last request's fold
        self._backoff: dict[tuple[int, int], list[int]] = {}  # shape -> [failed searches, requests to skip]

    def __call__(self, species: np.ndarray, positions: np.ndarray, contributing: np.ndarray) -> Fold | None:
        """The fold of one request (see :class:`Fold`), or None."""
        pos_c, spec_c = positions[contributing], species[contributing]
        pos_p, spec_p = positions[~contributing], species[~contributing]
        if not len(pos_p) or not len(pos_c):
            return None
        fold = None
        if self.last is not None:
            # between two neighbor-list builds a client keeps its atoms and images in order
            fold = self._same_layout(self.last, pos_c, spec_c, pos_p, spec_p)
            if fold is None:
                fold = fold_on(self.last.cell, pos_c, spec_c, pos_p, spec_p, radius=FOLLOW)
        shape = (len(pos_c), len(pos_p))
        backoff = self._backoff.get(shape)
        if fold is None and backoff and backoff[1]:
            backoff[1] -= 1
        elif fold is None:
            fold = self._search(pos_c, spec_c, pos_p, spec_p)
            if fold is not None and self._symmetric(fold.cell, pos_c, spec_c, positions, species):
                fold = None
            if fold is not None:
                self._backoff.pop(shape, None)
            else:
                if len(self._backoff) > 1024:  # shapes change as clients come and go
                    self._backoff.clear()
                failures = self._backoff.get(shape, [0, 0])[0] + 1
                self._backoff[shape] = [failures, 2 ** min(failures, MAX_BACKOFF)]
        self.last = fold
        return fold

    @staticmethod
    def _same_layout(last: Fold, pos_c, spec_c, pos_p, spec_p) -> Fold | None:
        """``last``'s owners and shifts, with the lattice refitted (NPT), if they still hold."""
        if len(pos_p) != len(last.owner) or last.owner.max() >= len(pos_c) or (spec_p != spec_c[last.owner]).any():
            return None
        delta = pos_p - pos_c[last.owner]
        shift = last.shift.astype(float)
        if np.abs(shift @ last.cell - delta).max() <= TOLERANCE:
            return last  # the same cell, bit for bit: the student's neighbor list stays valid
        cell = np.linalg.solve(shift.T @ shift, shift.T @ delta)  # least squares, 3 × 3
        if np.abs(shift @ cell - delta).max() > TOLERANCE:
            return None
        return Fold(cell=cell, owner=last.owner, shift=last.shift, carriers=last.carriers)

    def _search(self, pos_c, spec_c, pos_p, spec_p) -> Fold | None:
        """The fold from the shortest valid translations of probe padding atoms: one beyond each
        face, edge and corner of the contributing atoms' box (faces first), until their
        translations give a lattice that folds every padding atom."""
        tree = cKDTree(np.concatenate([pos_c, pos_p]))
        spec_all = np.concatenate([spec_c, spec_p])
        is_c = np.arange(len(spec_all)) < len(spec_c)
        tree_c = cKDTree(pos_c)
        sample = np.unique(np.linspace(0, len(pos_c) - 1, min(SAMPLE, len(pos_c))).astype(int))
        # directions in units of the box's half-extent, so an elongated or skewed cell still
        # has probes beyond each face
        low, high = pos_c.min(axis=0), pos_c.max(axis=0)
        rel = (pos_p - (low + high) / 2) / np.maximum((high - low) / 2, 1.0)
        dist = np.linalg.norm(rel, axis=1)
        unit = rel / dist[:, None]
        directions = sorted((d for d in itertools.product((-1, 0, 1), repeat=3) if any(d)), key=lambda d: sum(map(abs, d)))
        found: list[np.ndarray] = []
        attempts = 0
        for direction in directions:
            u = np.array(direction) / np.linalg.norm(direction)
            members = np.flatnonzero(unit @ u > 0.9)
            if not members.size:
                continue
            probe = members[dist[members].argmin()]
            cands = pos_p[probe] - pos_c[spec_c == spec_p[probe]]  # candidate translations
            for atoms in (sample[:: max(1, len(sample) // 8)], sample):  # a quick cut, then the full sample
                cands = cands[self._carries(cands, atoms, pos_c, spec_c, tree, tree_c, spec_all, is_c)]
            if not len(cands):
                continue
            t = cands[np.linalg.norm(cands, axis=1).argmin()]
            if any(np.allclose(t, f, atol=TOLERANCE) or np.allclose(t, -f, atol=TOLERANCE) for f in found):
                continue
            found.append(t)
            basis = lattice_basis(np.array(found))
            if basis is None:
                continue
            if (fold := fold_on(basis, pos_c, spec_c, pos_p, spec_p)) is not None:
                return fold
            attempts += 1
            if attempts == MAX_ATTEMPTS:  # a lattice that folds nothing after this many tries: none does
                break
        return None

    def _carries(self, shifts, atoms, pos_c, spec_c, tree, tree_c, spec_all, is_c) -> np.ndarray:
        """``[k]`` bool: whether each translation carries every one of the contributing ``atoms``
        onto a padding atom of its species, or beyond the padded region (never onto a
        contributing atom: the cell holds each atom once)."""
        points = pos_c[atoms][None] + shifts[:, None]  # [k, atoms, 3]
        d, j = tree.query(points, distance_upper_bound=TOLERANCE)
        hit = np.isfinite(d)
        j = np.where(hit, j, 0)
        on_image = hit & ~is_c[j] & (spec_all[j] == spec_c[atoms][None])
        near, _ = tree_c.query(points, distance_upper_bound=self.influence_distance - TOLERANCE)
        return (on_image | (~hit & ~np.isfinite(near))).all(axis=1)

    def _symmetric(self, cell, pos_c, spec_c, positions, species) -> bool:
        """Whether a translation outside the lattice (a perfect crystal's) also maps every
        contributing atom onto an atom of its species: then the owners are ambiguous."""
        tree = cKDTree(positions)
        inv = np.linalg.inv(cell)
        same = np.flatnonzero(spec_c == spec_c[0])[1:]
        taus = pos_c[same] - pos_c[0]
        norms = np.linalg.norm(taus, axis=1)
        frac = taus @ inv
        keep = (norms <= self.influence_distance) & (np.abs(frac - np.rint(frac)).max(axis=1) > 1e-6)
        sample = np.unique(np.linspace(0, len(pos_c) - 1, min(SAMPLE, len(pos_c))).astype(int))
        for tau in taus[keep][np.argsort(norms[keep])][:24]:
            if all(self._maps_onto_itself(tree, species, pos_c[atoms], spec_c[atoms], tau) for atoms in (sample, slice(None))):
                return True
        return False

    @staticmethod
    def _maps_onto_itself(tree, species, pos, spec, tau) -> bool:
        d, j = tree.query(pos + tau, distance_upper_bound=TOLERANCE)
        hit = np.isfinite(d)
        return bool(hit.all() and (species[j] == spec).all())
