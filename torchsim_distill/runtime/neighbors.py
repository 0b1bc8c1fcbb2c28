"""Batched neighbor lists for students, built with nvalchemiops (Warp) on CPU or CUDA.

One builder serves every integration (torch-sim, ASE): it owns a neighbor buffer
that grows on overflow and shrinks with hysteresis, and an optional Verlet skin
that reuses candidate pairs between rebuilds::

    nl = BatchedNeighborList(r_max=4.5, skin=0.5)
    edge_index, edge_cell_shift = nl(positions, cell, pbc, system_idx, atom_types)

Edges follow nequip's convention: ``edge_index[0]`` is the centre, ``edge_index[1]``
the neighbour, and the edge vector is ``pos[j] - pos[i] + shift @ cell[system(i)]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from nvalchemiops.torch.neighbors import (
    NeighborOverflowError,
    batch_cell_list,
    batch_naive_neighbor_list,
)

#: Above this many atoms in the largest system the O(N²) kernel loses to the cell
#: list on CPU (measured by ``benchmarks/neighbor_methods.py``).
NAIVE_MAX_ATOMS_PER_SYSTEM = 64
_ALIGN = 16
_GROW = 1.5
_SHRINK_BELOW = 0.5


def _align(n: float) -> int:
    return max(_ALIGN, _ALIGN * math.ceil(n / _ALIGN))


@dataclass
class _Cache:
    """Inputs of the last rebuild and the candidate pairs it produced.

    ``offsets`` (the Cartesian image shift of each pair) and ``cutoff2`` (its squared
    cutoff) are fixed while the cache is valid (same cell, same types), so reuse only
    recomputes ``pos[j] - pos[i] + offset``.
    """

    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    system_idx: torch.Tensor
    atom_types: torch.Tensor
    edge_index: torch.Tensor
    edge_cell_shift: torch.Tensor
    offsets: torch.Tensor
    cutoff2: torch.Tensor | float


class BatchedNeighborList:
    """Neighbor list over a batch of systems, with buffer management and a skin.

    Args:
        r_max: model cutoff in Å.
        skin: Verlet skin in Å (0 disables reuse). Candidate pairs are found within
            ``r_max + skin`` and reused until an atom moves more than ``skin / 2`` or
            the cell, the pbc or the set of atoms changes.
        per_edge_type_cutoff: optional ``[n_types, n_types]`` cutoffs in Å (each
            ``<= r_max``); edges longer than their type pair's cutoff are dropped.
        method: ``"auto"`` (cell list, or the N² kernel for small sorted batches),
            ``"cell_list"`` or ``"naive"``.
        max_neighbors: initial neighbor capacity per atom (grown as needed).
    """

    def __init__(
        self,
        r_max: float,
        *,
        skin: float = 0.0,
        per_edge_type_cutoff: torch.Tensor | None = None,
        method: str = "auto",
        max_neighbors: int = 64,
    ) -> None:
        if r_max <= 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        if method not in ("auto", "cell_list", "naive"):
            raise ValueError(f"method must be 'auto', 'cell_list' or 'naive', got {method!r}")
        self.r_max = float(r_max)
        self.skin = float(skin)
        self.per_edge_type_cutoff = per_edge_type_cutoff
        self.method = method
        self.max_neighbors = _align(max_neighbors)
        self._cache: _Cache | None = None
        #: number of full rebuilds so far (for tests and benchmarks)
        self.n_builds = 0

    def reset(self) -> None:
        """Forget cached pairs; the next call rebuilds."""
        self._cache = None

    def __call__(
        self,
        positions: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        system_idx: torch.Tensor,
        atom_types: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``edge_index [2, n_edges]`` (long) and ``edge_cell_shift [n_edges, 3]``.

        Args:
            positions: ``[n_atoms, 3]`` Å.
            cell: ``[n_systems, 3, 3]`` row-vector cells, Å (zero for molecules).
            pbc: ``[n_systems, 3]`` bool.
            system_idx: ``[n_atoms]`` long, system of each atom (need not be sorted).
            atom_types: ``[n_atoms]`` long (used for per-edge-type cutoffs).
        """
        if not (self.skin > 0 and self._cache_valid(positions, cell, pbc, system_idx, atom_types)):
            edge_index, shift = self._build(positions, cell, pbc, system_idx, self.r_max + self.skin)
            if self.skin == 0 and self.per_edge_type_cutoff is None:
                return edge_index, shift  # exact already: nothing to prune
            i, j = edge_index
            offsets = torch.bmm(shift.unsqueeze(1), cell.index_select(0, system_idx.index_select(0, i))).squeeze(1)
            if self.per_edge_type_cutoff is not None:
                rc = self.per_edge_type_cutoff.to(positions)
                cutoff2: torch.Tensor | float = rc[atom_types.index_select(0, i), atom_types.index_select(0, j)].square()
            else:
                cutoff2 = self.r_max**2
            # copies only when they will be compared against on the next call
            keep = (lambda t: t.detach().clone()) if self.skin > 0 else (lambda t: t)
            self._cache = _Cache(
                keep(positions), keep(cell), keep(pbc), keep(system_idx), keep(atom_types),
                edge_index, shift, offsets, cutoff2,
            )
        return self._prune(positions)

    # -- reuse -----------------------------------------------------------------

    def _cache_valid(self, positions, cell, pbc, system_idx, atom_types) -> bool:
        c = self._cache
        if c is None or c.positions.shape != positions.shape or c.cell.shape != cell.shape:
            return False
        if not (
            torch.equal(c.cell, cell)
            and torch.equal(c.pbc, pbc)
            and torch.equal(c.system_idx, system_idx)
            and torch.equal(c.atom_types, atom_types)
        ):
            return False
        if positions.shape[0] == 0:
            return True
        max_disp2 = (positions - c.positions).square().sum(dim=1).max()
        return bool(max_disp2 <= (0.5 * self.skin) ** 2)

    def _prune(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the cached candidate edges that lie within their cutoff now."""
        c = self._cache
        assert c is not None
        i, j = c.edge_index
        # in place on the one gathered buffer (at 32 atoms the allocations cost as much as the
        # arithmetic); only a selection comes out, so nothing here needs autograd
        with torch.no_grad():
            vec = positions.index_select(0, j).sub_(positions.index_select(0, i)).add_(c.offsets)
            keep = (vec.square_().sum(dim=1) < c.cutoff2).nonzero().squeeze(1)
        return c.edge_index.index_select(1, keep), c.edge_cell_shift.index_select(0, keep)

    # -- full build --------------------------------------------------------------

    def _choose_method(self, system_idx: torch.Tensor, counts: torch.Tensor) -> str:
        if self.method != "auto":
            if self.method == "naive" and not _is_sorted(system_idx):
                # nvalchemiops' N² kernel pairs atoms by contiguous ranges: wrong if unsorted
                return "cell_list"
            return self.method
        if counts.numel() and int(counts.max()) <= NAIVE_MAX_ATOMS_PER_SYSTEM and _is_sorted(system_idx):
            return "naive"
        return "cell_list"

    def _build(self, positions, cell, pbc, system_idx, cutoff: float):
        n_systems = cell.shape[0]
        device = positions.device
        self.n_builds += 1
        if positions.shape[0] == 0:
            return (
                torch.zeros(2, 0, dtype=torch.long, device=device),
                torch.zeros(0, 3, dtype=positions.dtype, device=device),
            )
        counts = torch.bincount(system_idx, minlength=n_systems)
        method = self._choose_method(system_idx, counts)
        # Warp's kernels divide by the cell: give molecules (zero cell, no pbc) a
        # nominal one; their shifts are all zero so it never enters an edge vector.
        zero_cell = (cell.abs().sum(dim=(1, 2)) == 0) & ~pbc.any(dim=1)
        if bool(zero_cell.any()):
            cell = torch.where(zero_cell[:, None, None], torch.eye(3, dtype=cell.dtype, device=device), cell)
        batch_idx = system_idx.to(torch.int32)
        while True:
            try:
                if method == "naive":
                    ptr = torch.zeros(n_systems + 1, dtype=torch.int32, device=device)
                    ptr[1:] = torch.cumsum(counts, 0)
                    nl, nptr, shifts = batch_naive_neighbor_list(
                        positions, cutoff, batch_idx=batch_idx, batch_ptr=ptr,
                        pbc=pbc, cell=cell.contiguous(), max_neighbors=self.max_neighbors,
                        return_neighbor_list=True,
                    )
                else:
                    nl, nptr, shifts = batch_cell_list(
                        positions, cutoff, cell.contiguous(), pbc, batch_idx,
                        max_neighbors=self.max_neighbors, return_neighbor_list=True,
                    )
                break
            except NeighborOverflowError as err:
                self.max_neighbors = _align(max(self.max_neighbors * _GROW, err.num_neighbors))
        self._maybe_shrink(nptr)
        return nl.long(), shifts.to(positions.dtype)

    def _maybe_shrink(self, neighbor_ptr: torch.Tensor) -> None:
        if neighbor_ptr.numel() < 2:
            return
        used = int((neighbor_ptr[1:] - neighbor_ptr[:-1]).max())
        if used < _SHRINK_BELOW * self.max_neighbors:
            self.max_neighbors = min(self.max_neighbors, _align(used * _GROW))


def _is_sorted(system_idx: torch.Tensor) -> bool:
    return system_idx.numel() < 2 or bool((system_idx[1:] >= system_idx[:-1]).all())
