"""Cell deformations with one convention, for every module that strains a structure.

A symmetric strain tensor ε maps every position (and every cell vector) ``r`` to
``r' = (I + ε) r``; ASE stores cell vectors as rows, so the cell becomes
``cell · (I + ε)ᵀ``::

    apply_strain(atoms, 0.01 * np.eye(3))         # in place: 1 % isotropic stretch
    sheared = strained(atoms, shear_tensor)       # a copy, without the calculator
"""

from __future__ import annotations

import numpy as np
from ase import Atoms


def apply_strain(atoms: Atoms, strain: np.ndarray) -> Atoms:
    """Deform ``atoms`` in place (cell and positions) by the strain tensor ``strain``
    (``[3, 3]``, dimensionless): ``r' = (I + ε) r``. Returns ``atoms``."""
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + np.asarray(strain)).T, scale_atoms=True)
    return atoms


def strained(atoms: Atoms, strain: np.ndarray) -> Atoms:
    """A copy of ``atoms`` (without its calculator) under :func:`apply_strain`."""
    out = atoms.copy()
    out.calc = None
    return apply_strain(out, strain)
