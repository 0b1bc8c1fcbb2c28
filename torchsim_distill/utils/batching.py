"""Structures cut into batches a torch-sim state can hold: one ``pbc`` per state.

A ``SimState`` has a single periodicity, so every batched call (labeling, evaluation,
relaxation, the committee's scores) groups or cuts its structures by ``pbc`` first::

    for chunk in pbc_batches(frames, 16):        # consecutive, order kept
        out = model(ts.io.atoms_to_state(chunk, device, dtype))
    for indices in group_by_pbc(frames):          # all of one pbc together, any order
        relax([frames[i] for i in indices])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from ase import Atoms


def pbc_batches(frames: Sequence[Atoms], batch_size: int) -> Iterator[list[Atoms]]:
    """Consecutive frames, at most ``batch_size`` per batch, cut where ``pbc`` changes
    (the order is kept, so concatenated outputs line up with ``frames``)."""
    batch: list[Atoms] = []
    for atoms in frames:
        if batch and (len(batch) == batch_size or not np.array_equal(batch[0].pbc, atoms.pbc)):
            yield batch
            batch = []
        batch.append(atoms)
    if batch:
        yield batch


def group_by_pbc(atoms_list: Sequence[Atoms]) -> list[list[int]]:
    """Indices of the structures sharing one ``pbc``, one list per ``pbc``, in order of first
    appearance (a ``SimState`` has a single pbc)."""
    groups: dict[tuple[bool, ...], list[int]] = {}
    for i, atoms in enumerate(atoms_list):
        groups.setdefault(tuple(bool(p) for p in atoms.pbc), []).append(i)
    return list(groups.values())


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 NumPy array on the CPU (detached)."""
    return t.detach().to("cpu", torch.float64).numpy()
