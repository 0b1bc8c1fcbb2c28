"""Structures read one at a time and checked one by one, for runs over more than fit in memory.

A screening run points at 10⁴–10⁶ structures. Reading them all first costs memory in
proportion to the input, and one bad frame would sink the run before any work. Here
files are read lazily (``ase.io.iread``) and every structure comes out as an
:class:`Item`, either ready (``atoms``) or with the one-line reason it cannot be relaxed
(``error``), so the caller decides whether a bad structure stops the run or is reported::

    for item in iter_structures(["candidates.extxyz"], known_elements={"Cu", "Au"}, need_cell=True):
        if item.error: print(item.id, item.error)   # candidates.extxyz@17 contains element(s) Fe ...

Checks, in order: readable, non-empty, no ASE constraints (torch-sim does not honour
them), a 3D cell when the cell is relaxed, finite positions, elements the model knows,
and no two atoms closer than :data:`MIN_DISTANCE` (overlapping atoms: a student's
radial basis is singular there).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import iread
from ase.neighborlist import neighbor_list

#: Å. No structure a user relaxes has two atoms closer than this (H₂'s bond is 0.74 Å);
#: closer pairs are overlapping atoms, a generator's bug, where forces are meaningless.
MIN_DISTANCE = 0.5


class RelaxInputError(ValueError):
    """Input that cannot be relaxed (the message names the file, structure or element)."""


@dataclass
class Item:
    """One input structure.

    Attributes:
        index: position in the whole input (0-based, across files).
        id: ``path@frame`` for structures read from files (ASE's index syntax), else
            ``atoms.info["id"]`` or the input position.
        source: the file it came from (``""`` for ``Atoms`` given directly).
        frame: its frame in that file (the input position for ``Atoms``).
        atoms: the structure (``None`` only when it could not be read).
        error: why it cannot be relaxed (one line), or ``None``: relax it.
    """

    index: int
    id: str
    source: str
    frame: int
    atoms: Atoms | None
    error: str | None = None


def check_paths(structures: str | Path | Atoms | Sequence[str | Path | Atoms]) -> list[str | Path | Atoms]:
    """The inputs as a list, every path an existing file: a typo in a path stops the run at
    once, whatever the error policy (it is the command that is wrong, not a structure).

    Raises:
        FileNotFoundError: a path that does not exist.
        RelaxInputError: a folder given as a structure file; no input at all.
    """
    if isinstance(structures, (str, Path, Atoms)):
        structures = [structures]
    items = list(structures)
    if not items:
        raise RelaxInputError("no structures to relax: the input is empty")
    for item in items:
        if isinstance(item, Atoms):
            continue
        path = Path(item)
        if path.is_dir():
            raise RelaxInputError(f"{str(item)!r} is a folder, not a structure file; give the files in it")
        if not path.is_file():
            raise FileNotFoundError(f"structure file {str(item)!r} does not exist")
    return items


def iter_structures(
    structures: str | Path | Atoms | Sequence[str | Path | Atoms],
    *,
    known_elements: Iterable[str] | None = None,
    need_cell: bool = False,
) -> Iterator[Item]:
    """Every structure of the input, in order, read lazily and checked (see the module).

    A file that cannot be read from some frame on yields one failed item for that frame
    and none after it (a parser cannot find the next frame of a broken file); a file with
    no frames yields one failed item (frame 0).

    Args:
        structures: files ASE reads (every frame) and/or ``Atoms``.
        known_elements: the model's elements (``None``: not checked).
        need_cell: a cell filter relaxes the cell, so each structure needs a 3D cell.
    """
    known = None if known_elements is None else set(known_elements)
    index = 0
    for k, entry in enumerate(check_paths(structures)):
        if isinstance(entry, Atoms):
            yield _checked(Item(index, str(entry.info.get("id", k)), "", k, entry), known, need_cell)
            index += 1
            continue
        name = str(entry)
        frames = iread(name, index=":")
        frame = 0
        while True:
            try:
                atoms = next(frames)
            except StopIteration:
                if frame == 0:
                    yield Item(index, f"{name}@0", name, 0, None, f"{name!r} holds no structures")
                    index += 1
                break
            except Exception as err:  # ASE raises many kinds for unreadable files
                reason = f"cannot read structure {frame} of {name!r}: {' '.join(str(err).split())}"
                if frame:
                    reason += " (the rest of this file is skipped)"
                yield Item(index, f"{name}@{frame}", name, frame, None, reason)
                index += 1
                break
            yield _checked(Item(index, f"{name}@{frame}", name, frame, atoms), known, need_cell)
            index += 1
            frame += 1


def count_structures(structures: Sequence[str | Path | Atoms]) -> int | None:
    """How many structures the input holds, counted without parsing them where that is
    cheap (extended XYZ and XYZ: the atom-count lines), else ``None`` (unknown)."""
    total = 0
    for entry in structures:
        if isinstance(entry, Atoms):
            total += 1
            continue
        path = Path(entry)
        if path.suffix.lower() not in (".xyz", ".extxyz"):
            return None
        total += _count_xyz_frames(path)
    return total


def _count_xyz_frames(path: Path) -> int:
    """Frames of an (extended) XYZ file: skip from each atom-count line over its frame."""
    n = 0
    with open(path, "rb") as f:
        while True:
            header = f.readline()
            if not header.strip():
                if not header:
                    return n
                continue
            try:
                n_atoms = int(header)
            except ValueError:
                return n + 1  # a broken frame: iter_structures reports it (and stops there)
            for _ in range(n_atoms + 1):
                if not f.readline():
                    return n + 1
            n += 1


def _checked(item: Item, known: set[str] | None, need_cell: bool) -> Item:
    """``item`` with ``error`` set by the first check it fails."""
    item.error = structure_error(item.id, item.atoms, known, need_cell)
    return item


def structure_error(id_: str, atoms: Atoms, known: set[str] | None, need_cell: bool) -> str | None:
    """Why ``atoms`` cannot be relaxed, as one line naming ``id_``, or ``None``."""
    if len(atoms) == 0:
        return f"structure {id_} has no atoms"
    if atoms.constraints:
        # torch-sim does not read ASE constraints: fixed atoms would move
        return (
            f"structure {id_} has constraints ({', '.join(type(c).__name__ for c in atoms.constraints)}), "
            "which this batched relaxation cannot honour; remove them or relax it with ASE and DistilledCalculator"
        )
    if need_cell and atoms.cell.rank < 3:
        return (
            f"structure {id_} has no 3D cell, so its cell cannot be relaxed; "
            "give it a cell or use cell_filter=None (--cell-filter none)"
        )
    if not np.isfinite(atoms.positions).all():
        bad = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))
        return f"structure {id_} has non-finite positions (NaN or inf) at atom(s) {', '.join(map(str, bad[:5]))}"
    if known is not None:
        unknown = sorted(set(atoms.get_chemical_symbols()) - known)
        if unknown:
            return (
                f"structure {id_} contains element(s) {', '.join(unknown)} that the model "
                f"does not know; it knows {', '.join(sorted(known))}"
            )
    if atoms.pbc.any() and atoms.cell.rank < 3:
        return None  # a periodic flat cell: the calculator names it (no overlap check without a cell)
    pair = closest_pair(atoms, MIN_DISTANCE)
    if pair is not None:
        i, j, d = pair
        return (
            f"structure {id_} has overlapping atoms: {i} and {j} are {d:.3g} Å apart "
            f"(nothing real is closer than {MIN_DISTANCE} Å)"
        )
    return None


#: Up to this many atoms, :func:`closest_pair` compares every pair over the 27 nearest cell
#: images in one vectorised step (microseconds for screening-sized cells, where ASE's neighbor
#: list costs ~20 ms per call); larger structures use ASE's neighbor list.
_ALL_PAIRS_MAX_ATOMS = 256


def closest_pair(atoms: Atoms, cutoff: float) -> tuple[int, int, float] | None:
    """The closest pair of atoms (periodic images included) if it is closer than ``cutoff`` Å,
    as ``(i, j, distance)``, else ``None``."""
    n = len(atoms)
    cell = atoms.cell.array
    periodic = atoms.pbc
    heights = atoms.cell.volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1) \
        if atoms.cell.rank == 3 else np.zeros(3)
    if n > _ALL_PAIRS_MAX_ATOMS or (periodic & (heights <= cutoff)).any():
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        if not len(d):
            return None
        k = int(np.argmin(d))
        return int(i[k]), int(j[k]), float(d[k])
    # positions wrapped into the cell, then each periodic direction's -1, 0, +1 image: a pair
    # closer than the cell's smallest height differs by less than one cell in fractional terms
    positions = atoms.get_positions(wrap=True) if periodic.any() else atoms.positions
    ranges = [(-1, 0, 1) if p else (0,) for p in periodic]
    shifts = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T @ cell  # [n_images, 3]
    delta = positions[None, :, :] - positions[:, None, :]  # [n, n, 3], j - i
    distances = np.linalg.norm(delta[None] + shifts[:, None, None, :], axis=-1)  # [n_images, n, n]
    origin = int(np.flatnonzero((shifts == 0).all(axis=1))[0])
    distances[origin][np.diag_indices(n)] = np.inf  # an atom and itself
    flat = int(np.argmin(distances))
    d = float(distances.flat[flat])
    if d >= cutoff:
        return None
    _, i, j = np.unravel_index(flat, distances.shape)
    return int(min(i, j)), int(max(i, j)), d
