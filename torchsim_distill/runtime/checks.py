"""Inputs a student would answer wrongly without a word, caught with a clear error.

Each found by trying it on the default student: a NaN position drops its atom out of
the neighbor list (a finite energy comes back), two atoms at one position give
non-finite forces, and a periodic system with a zero cell is evaluated as if it were
a molecule. The checks cost one reduction over atoms each (positions before the call,
forces after it); naming the atoms at fault is done only once one has failed.
"""

from __future__ import annotations

import torch

#: Systems whose cell volume (Å³) is below this have no cell for periodicity to act on.
MIN_PERIODIC_VOLUME = 1e-6
#: Atoms closer than this (Å) are reported as sitting at the same position.
SAME_POSITION = 1e-4


class InvalidStructureError(ValueError):
    """A structure the student cannot evaluate; the message names the system and atoms."""


def check_positions(positions: torch.Tensor, system_idx: torch.Tensor) -> None:
    """Every position finite, else an error naming the systems and atoms that are not."""
    if bool(torch.isfinite(positions).all()):
        return
    bad = (~torch.isfinite(positions).all(dim=1)).nonzero().squeeze(1)
    raise InvalidStructureError(
        f"non-finite positions (NaN or inf): {_atoms_by_system(bad, system_idx)}; "
        "every atom needs a finite position in Å"
    )


def check_cells(cell: torch.Tensor, pbc: torch.Tensor) -> None:
    """A system periodic in any direction needs a cell with volume (rows: lattice vectors)."""
    periodic = pbc.any(dim=1)
    if not bool(periodic.any()):
        return
    flat = periodic & (cell.det().abs() < MIN_PERIODIC_VOLUME)
    if bool(flat.any()):
        k = int(flat.nonzero()[0])
        raise InvalidStructureError(
            f"system {k} is periodic (pbc={pbc[k].tolist()}) but its cell has no volume "
            f"(|det| = {float(cell[k].det().abs()):.3g} Å³; cell rows {cell[k].tolist()}); "
            "give its three lattice vectors, or pbc=False for a molecule or cluster"
        )


def check_forces(
    forces: torch.Tensor,
    positions: torch.Tensor,
    system_idx: torch.Tensor,
    edge_index: torch.Tensor,
    edge_shift: torch.Tensor,
    cell: torch.Tensor,
) -> None:
    """Every force finite, else an error naming the pair of atoms at one position (what
    makes a student's radial basis divide by zero) or, failing that, the atoms."""
    if bool(torch.isfinite(forces).all()):
        return
    i, j = edge_index
    vec = positions[j] - positions[i] + torch.einsum("ek,ekl->el", edge_shift, cell[system_idx[i]])
    dist = vec.norm(dim=1)
    close = (dist < SAME_POSITION).nonzero().squeeze(1)
    if close.numel():
        e = int(close[0])
        a, b, k = int(i[e]), int(j[e]), int(system_idx[i[e]])
        image = "" if not bool(edge_shift[e].any()) else f" (shifted by cell vectors {edge_shift[e].tolist()})"
        raise InvalidStructureError(
            f"system {k}: atoms {_local(a, system_idx)} and {_local(b, system_idx)}{image} sit at the same "
            f"position ({float(dist[e]):.2g} Å apart), where the student's forces are not finite; move them apart"
        )
    bad = (~torch.isfinite(forces).all(dim=1)).nonzero().squeeze(1)
    raise InvalidStructureError(f"the student returned non-finite forces for {_atoms_by_system(bad, system_idx)}")


def _local(atom: int, system_idx: torch.Tensor) -> int:
    """The index of a (batch-wide) atom within its own system, as its user numbers it."""
    return int((system_idx[:atom] == system_idx[atom]).sum())


def _atoms_by_system(atoms: torch.Tensor, system_idx: torch.Tensor, limit: int = 5) -> str:
    """``"system 0: atoms 3, 7; system 2: atom 0"`` (indices within each system), the first few."""
    by_system: dict[int, list[int]] = {}
    for a in atoms.tolist():
        by_system.setdefault(int(system_idx[a]), []).append(_local(a, system_idx))
    parts = []
    for k, members in list(by_system.items())[:limit]:
        shown = ", ".join(map(str, members[:limit])) + (", ..." if len(members) > limit else "")
        parts.append(f"system {k}: atom{'s' if len(members) > 1 else ''} {shown}")
    more = f" (and {len(by_system) - limit} more systems)" if len(by_system) > limit else ""
    return "; ".join(parts) + more
